"""The shipped model zoo against upstream's published numbers, parametrised over every shipped config."""

from __future__ import annotations

import pytest
import torch
import yaml

from yolodist.models import SHIPPED_CFGS, Detect, Model, count_gflops, resolve_cfg

# Upstream's published figures at nc=80 (README / model summaries): parameters, GFLOPs at 640.
UPSTREAM = {
    "yolov5n": (1_872_157, 4.5),
    "yolov5s": (7_235_389, 16.5),
    "yolov5m": (21_190_557, 49.0),
    "yolov5l": (46_563_709, 109.1),
    "yolov5x": (86_749_405, 205.7),
}


@pytest.fixture(scope="module", params=SHIPPED_CFGS)
def built(request) -> tuple[str, Model]:
    torch.manual_seed(0)
    return request.param, Model(request.param)


def test_registry_covers_upstream_table() -> None:
    assert set(SHIPPED_CFGS) == set(UPSTREAM)


def test_parameter_count_equals_upstream(built) -> None:
    name, model = built
    assert sum(p.numel() for p in model.parameters()) == UPSTREAM[name][0]


def test_gflops_within_one_percent(built) -> None:
    name, model = built
    gflops = count_gflops(model, 640)
    assert abs(gflops - UPSTREAM[name][1]) / UPSTREAM[name][1] < 0.01, gflops


def test_gflops_equal_torchs_flop_counter(built) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    _, model = built
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 64, 64))
    model.train()
    assert count_gflops(model, 64) * 1e9 == pytest.approx(counter.get_total_flops(), rel=1e-12)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 10))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        linear(torch.zeros(1, 3, 64, 64))
    assert count_gflops(linear, 64) * 1e9 == pytest.approx(counter.get_total_flops(), rel=1e-12)


def test_gflops_scale_with_area(built) -> None:
    _, model = built
    assert count_gflops(model, 320) * 4 == pytest.approx(count_gflops(model, 640), rel=1e-9)
    assert count_gflops(model, (320, 640)) * 2 == pytest.approx(count_gflops(model, 640), rel=1e-9)


def test_strides_and_anchors_in_grid_units(built) -> None:
    name, model = built
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    pixels = yaml.safe_load(resolve_cfg(name).read_text())["anchors"]
    expected = torch.tensor(pixels, dtype=torch.float32).view(3, 3, 2)
    anchors = model.detect.anchors
    assert anchors.shape == (3, 3, 2)
    torch.testing.assert_close(anchors * model.stride.view(-1, 1, 1), expected)
    area = anchors.mul(model.stride.view(-1, 1, 1)).prod(-1).mean(-1)
    assert area[0] < area[1] < area[2]  # small anchors on the fine level


def test_train_and_eval_shapes_at_320(built) -> None:
    _, model = built
    x = torch.zeros(1, 3, 320, 320)
    model.train()
    with torch.no_grad():
        raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(1, 3, 40, 40, 85), (1, 3, 20, 20, 85), (1, 3, 10, 10, 85)]
    model.eval()
    with torch.no_grad():
        decoded, raw_eval = model(x)
    assert decoded.shape == (1, 3 * (40 * 40 + 20 * 20 + 10 * 10), 85)
    assert len(raw_eval) == 3 and raw_eval[2].shape == (1, 3, 10, 10, 85)


@pytest.mark.parametrize("name", ["yolov5n", "yolov5s"])
def test_eval_shapes_at_640(name: str) -> None:
    model = Model(name).eval()
    with torch.no_grad():
        decoded, raw = model(torch.zeros(1, 3, 640, 640))
    assert decoded.shape == (1, 3 * (80 * 80 + 40 * 40 + 20 * 20), 85)
    assert [tuple(r.shape[2:4]) for r in raw] == [(80, 80), (40, 40), (20, 20)]


def test_upstream_state_dict_keys(built) -> None:
    _, model = built
    state = model.state_dict()
    for key in ("model.0.conv.weight", "model.0.bn.running_mean", "model.2.cv1.conv.weight", "model.2.m.0.cv2.bn.bias"):
        assert key in state
    for key in ("model.9.cv1.conv.weight", "model.23.cv3.bn.weight", "model.24.m.0.weight", "model.24.anchors"):
        assert key in state
    assert "model.24.stride" not in state  # upstream checkpoints carry no stride tensor
    assert not any(key.startswith(("model.10.act", "model.11")) for key in state)


def test_yolov5s_known_shapes_and_layer_attributes() -> None:
    model = Model("yolov5s")
    state = model.state_dict()
    assert state["model.0.conv.weight"].shape == (32, 3, 6, 6)
    assert state["model.0.bn.num_batches_tracked"].dtype == torch.long
    assert state["model.24.m.0.weight"].shape == (255, 128, 1, 1)
    assert state["model.24.m.2.weight"].shape == (255, 512, 1, 1)
    assert state["model.24.anchors"].shape == (3, 3, 2)
    assert state["model.8.m.0.cv1.conv.weight"].shape == (256, 256, 1, 1)
    assert model.save == [4, 6, 10, 14, 17, 20, 23]
    c3 = model.model[2]
    assert (c3.i, c3.f, c3.np) == (2, -1, 18816)  # upstream's parse log row for layer 2
    assert c3.type.endswith(".C3")
    assert model.model[12].f == [-1, 6] and isinstance(model.model[24], Detect)
    assert model.model[24].f == [17, 20, 23]
    assert model.names == [str(i) for i in range(80)]


def test_summary_counts_layers_like_upstream() -> None:
    model = Model("yolov5s")
    summary = model.info()
    assert (summary.layers, summary.parameters, summary.gradients) == (214, 7_235_389, 7_235_389)
    fused = model.fuse().info()
    assert (fused.layers, fused.parameters) == (157, 7_225_885)  # upstream's fused yolov5s summary
