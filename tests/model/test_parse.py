"""The YAML model parser and config resolution: overrides, user files, errors, anchors, multiples."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

from yolodist.errors import BadConfig
from yolodist.models import SHIPPED_CFGS, Model, load_cfg, resolve_cfg
from yolodist.models.blocks import C3, Conv
from yolodist.models.parse import make_divisible

# A two-level model small enough to build in milliseconds; anchors in pixels, small level first.
TINY = {
    "nc": 2,
    "depth_multiple": 0.33,
    "width_multiple": 0.25,
    "anchors": [[10, 13, 16, 30], [116, 90, 156, 198]],
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]],  # 0 /2
        [-1, 1, "Conv", [128, 3, 2]],  # 1 /4
        [-1, 3, "C3", [128]],  # 2
        [-1, 1, "Conv", [256, 3, 2]],  # 3 /8
        [-1, 1, "SPPF", [256, 5]],  # 4
    ],
    "head": [
        [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],  # 5 /4
        [[-1, 2], 1, "Concat", [1]],  # 6
        [-1, 1, "C3", [128, False]],  # 7
        [[7, 4], 1, "Detect", ["nc", "anchors"]],
    ],
}


@pytest.fixture
def yolodist_log(caplog):
    """Capture the package's log even when setup_logging has turned off propagation to the root."""
    logger = logging.getLogger("yolodist")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="yolodist"):
        yield caplog
    logger.removeHandler(caplog.handler)


def tiny(**changes) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg.update(changes)
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("spec", ["yolov5n", "yolov5n.yaml", "models/yolov5n.yaml", "yolov5n.yml"])
def test_resolve_shipped_names(spec: str) -> None:
    path = resolve_cfg(spec)
    assert path.is_file() and path.name == "yolov5n.yaml"


def test_all_shipped_files_exist() -> None:
    for name in SHIPPED_CFGS:
        assert yaml.safe_load(resolve_cfg(name).read_text())["nc"] == 80


@pytest.mark.parametrize("spec", ["yolov5q.yaml", "no/such/file.yaml", "resnet50"])
def test_missing_cfg_lists_shipped_names(spec: str) -> None:
    with pytest.raises(BadConfig, match=re.escape(spec)) as info:
        Model(spec)
    assert all(f"{name}.yaml" in str(info.value) for name in SHIPPED_CFGS)


def test_user_yaml_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "mini.yaml", tiny())
    model = Model(str(path))
    assert model.yaml_file == "mini.yaml"
    assert model.stride.tolist() == [4.0, 8.0]
    assert model.detect.no == 7 and model.detect.na == 2
    model.train()
    raw = model(torch.zeros(2, 3, 64, 64))
    assert [tuple(r.shape) for r in raw] == [(2, 2, 16, 16, 7), (2, 2, 8, 8, 7)]


def test_dict_cfg_is_not_mutated() -> None:
    cfg = tiny()
    before = copy.deepcopy(cfg)
    model = Model(cfg, nc=5)
    assert cfg == before
    assert model.yaml["nc"] == 5 and model.yaml["ch"] == 3


def test_nc_override() -> None:
    model = Model("yolov5n", nc=3)
    assert model.yaml["nc"] == 3 and model.detect.nc == 3 and model.detect.no == 8
    assert model.names == ["0", "1", "2"]
    assert model.state_dict()["model.24.m.0.weight"].shape == (24, 64, 1, 1)
    assert Model("yolov5n").yaml["nc"] == 80  # the shipped file is untouched


def test_input_channels() -> None:
    model = Model(tiny(), ch=1)
    assert model.state_dict()["model.0.conv.weight"].shape == (16, 1, 3, 3)
    assert model(torch.zeros(1, 1, 32, 32))[0].shape == (1, 2, 8, 8, 7)


def test_width_and_depth_multiples() -> None:
    assert [make_divisible(x, 8) for x in (16.0, 16.5, 24.1, 1.0)] == [16, 24, 32, 8]
    model = Model(tiny(depth_multiple=0.67, width_multiple=0.3))
    conv0, c3 = model.model[0], model.model[2]
    assert conv0.conv.out_channels == 24  # ceil(64 * 0.3 / 8) * 8
    assert isinstance(c3, C3) and len(c3.m) == 2  # round(3 * 0.67)
    assert model.layer_records[2].number == 2 and model.layer_records[2].args[:3] == [40, 40, 2]
    one = Model(tiny(backbone=[*TINY["backbone"][:2], [-1, 1, "C3", [128]], *TINY["backbone"][3:]]))
    assert len(one.model[2].m) == 1  # n == 1 is never scaled


def test_anchors_largest_first_are_flipped(yolodist_log) -> None:
    model = Model(tiny(anchors=list(reversed(TINY["anchors"]))))
    assert "Reversing anchor order" in yolodist_log.text
    pixels = model.detect.anchors * model.stride.view(-1, 1, 1)
    expected = torch.tensor(TINY["anchors"], dtype=torch.float32).view(2, 2, 2)
    torch.testing.assert_close(pixels, expected)


def test_integer_anchors_give_placeholders() -> None:
    model = Model(tiny(anchors=3))
    assert model.detect.anchors.shape == (2, 3, 2) and model.detect.na == 3
    overridden = Model(tiny(), anchors=4)
    assert overridden.detect.anchors.shape == (2, 4, 2)
    assert overridden.state_dict()["model.8.m.0.weight"].shape == (4 * 7, 32, 1, 1)


def test_unknown_module_names_module_and_file(tmp_path: Path) -> None:
    cfg = tiny()
    cfg["head"][2] = [-1, 1, "C2f", [128]]
    path = write_yaml(tmp_path / "custom.yaml", cfg)
    with pytest.raises(BadConfig, match=r"'C2f'.*custom\.yaml"):
        Model(path)


@pytest.mark.parametrize(
    "arg", ["__import__('os').system('true')", "Conv.default_act", "nc * 2", "int"], ids=lambda a: a[:12]
)
def test_args_are_never_evaluated(arg: str) -> None:
    cfg = tiny()
    cfg["backbone"][0] = [-1, 1, "Conv", [64, 3, arg]]
    with pytest.raises(BadConfig, match="unknown symbol"):
        Model(cfg)
    assert not hasattr(Conv, "default_act")


@pytest.mark.parametrize(
    ("row_index", "row", "pattern"),
    [
        (3, [5, 1, "Conv", [256, 3, 2]], "reads from layer 5"),
        (0, [0, 1, "Conv", [64, 3, 2]], "reads from layer 0"),
        (6, [[-1, "a"], 1, "Concat", [1]], "'from'"),
        (3, [-1, 0, "Conv", [256, 3, 2]], "repeats 0"),
        (3, [-1, 1, "Conv", [256, 3, 2, 1, 1, 1, 1, 1, 1]], "cannot be built"),
    ],
)
def test_bad_rows_raise_bad_config(row_index: int, row: list, pattern: str) -> None:
    cfg = tiny()
    rows = cfg["backbone"] + cfg["head"]
    rows[row_index] = row
    cfg["backbone"], cfg["head"] = rows[:5], rows[5:]
    with pytest.raises(BadConfig, match=pattern):
        Model(cfg)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"nc": 0}, "nc"),
        ({"anchors": [[10, 13, 16]] * 2}, "anchors"),
        ({"anchors": [[10, 13, 16, 30]]}, "anchors"),
        ({"head": "oops"}, "'head'"),
        ({"activation": "nn.ReLU()"}, "activation"),
    ],
)
def test_bad_top_level_keys(changes: dict, pattern: str) -> None:
    with pytest.raises(BadConfig, match=pattern):
        Model(tiny(**changes))


def test_missing_keys_and_bad_yaml(tmp_path: Path) -> None:
    cfg = tiny()
    del cfg["backbone"]
    with pytest.raises(BadConfig, match="backbone"):
        Model(cfg)
    broken = tmp_path / "broken.yaml"
    broken.write_text("nc: [1, 2\n")
    with pytest.raises(BadConfig, match=r"broken\.yaml"):
        load_cfg(broken)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(BadConfig, match="mapping"):
        load_cfg(tmp_path / "list.yaml")


def test_verbose_logs_layer_table_and_summary(yolodist_log) -> None:
    caplog = yolodist_log
    Model("yolov5n", verbose=True)
    assert re.search(r"\s+from\s+n\s+params\s+module\s+arguments", caplog.text)
    assert re.search(r"\n\s+2\s+-1\s+1\s+4800\s+yolodist\.models\.blocks\.C3\s+\[32, 32, 1\]", caplog.text)
    assert re.search(r"\[17, 20, 23\]\s+1\s+\d+\s+yolodist\.models\.head\.Detect", caplog.text)
    line = r"YOLOv5n summary: 214 layers, 1872157 parameters, 1872157 gradients, 4\.\d GFLOPs"
    assert re.search(line, caplog.text)
    caplog.clear()
    Model(tiny()).info(verbose=True)
    assert "Model summary:" in caplog.text and "Concat" in caplog.text
