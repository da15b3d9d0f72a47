"""EMA, optimiser groups and schedules, run directories, AutoAnchor."""

import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

from yolodist.engine import autoanchor
from yolodist.engine.ema import ModelEMA
from yolodist.engine.optim import accumulate_steps, build_optimizer, lr_lambda, scaled_weight_decay, warmup
from yolodist.utils.paths import increment_path


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_ema_ramp_and_tracking():
    model = tiny()
    ema = ModelEMA(model, decay=0.9999, tau=2000)
    assert ema.decay_at(1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert ema.decay_at(100_000) == pytest.approx(0.9999, rel=1e-6)
    start = ema.ema[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    d = ema.decay_at(1)
    torch.testing.assert_close(ema.ema[0].weight, d * start + (1 - d) * model[0].weight)
    assert ema.ema[1].num_batches_tracked.item() == 7  # integer buffers copied
    assert not any(p.requires_grad for p in ema.ema.parameters())


def test_optimizer_groups_in_upstream_order():
    model = tiny()
    opt = build_optimizer(model, "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    biases, weights, norms = (g["params"] for g in opt.param_groups)
    assert [p.shape for p in biases] == [torch.Size([4]), torch.Size([2])]  # BN bias and conv bias
    assert {id(p) for p in weights} == {id(model[0].weight), id(model[2].weight)}
    assert [id(p) for p in norms] == [id(model[1].weight)]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert opt.param_groups[0]["nesterov"]
    adam = build_optimizer(model, "AdamW", lr=0.001, momentum=0.9, decay=5e-4)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)


def test_accumulation_and_decay_scaling():
    assert accumulate_steps(16) == 4 and accumulate_steps(64) == 1 and accumulate_steps(128) == 1
    assert scaled_weight_decay(5e-4, 16, 4) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 128, 1) == pytest.approx(1e-3)


def test_schedules_end_points():
    for cos in (False, True):
        lf = lr_lambda(10, 0.01, cos)
        assert lf(0) == pytest.approx(1.0) and lf(10) == pytest.approx(0.01)
    assert lr_lambda(10, 0.01, False)(5) == pytest.approx(0.505)


def test_warmup_interpolates_lr_and_momentum():
    opt = build_optimizer(tiny(), "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    for g in opt.param_groups:
        g["initial_lr"] = 0.01
    lf = lr_lambda(10, 0.01, False)
    warmup(opt, 0, 100, 0, lf, warmup_bias_lr=0.1, momentum=0.937, warmup_momentum=0.8)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0, 0.0])
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.8)
    warmup(opt, 100, 100, 0, lf, warmup_bias_lr=0.1, momentum=0.937, warmup_momentum=0.8)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01] * 3)
    assert opt.param_groups[2]["momentum"] == pytest.approx(0.937)


def test_increment_path(tmp_path):
    base = tmp_path / "runs" / "exp"
    assert increment_path(base) == base
    assert increment_path(base, mkdir=True) == base
    assert increment_path(base, mkdir=True).name == "exp2"
    assert increment_path(base, mkdir=True).name == "exp3"
    assert increment_path(base, exist_ok=True) == base


def test_increment_path_is_race_safe(tmp_path):
    got = []
    threads = [
        threading.Thread(target=lambda: got.append(increment_path(tmp_path / "exp", mkdir=True))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8


def test_bpr_and_kmeans():
    wh = np.array([[10, 10], [20, 20], [40, 40], [80, 80]], dtype=float)
    assert autoanchor.best_possible_recall(wh, wh, thr=4.0)[0] == 1.0
    assert autoanchor.best_possible_recall(np.array([[1000.0, 1000.0]]), wh, thr=4.0)[0] == 0.0
    rng = np.random.default_rng(0)
    clusters = np.concatenate([rng.normal(c, 1.0, size=(50, 2)) for c in (10, 50, 200)])
    anchors = autoanchor.kmean_anchors(clusters, n=3, img_size=256, thr=4.0, gen=50, rng=np.random.default_rng(1))
    np.testing.assert_allclose(anchors.mean(1), [10, 50, 200], rtol=0.25)


def test_check_anchors_keeps_good_and_replaces_bad():
    stride = torch.tensor([8.0, 16.0, 32.0])
    labels = [np.array([[0, 0.5, 0.5, w, w]]) for w in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)] * 5
    shapes = np.full((len(labels), 2), 640.0)
    good = torch.tensor(
        [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]],
        dtype=torch.float32,
    ) / stride.view(-1, 1, 1)
    rng = np.random.default_rng(0)
    assert autoanchor.check_anchors(labels, shapes, good, stride, 4.0, 640, rng) is None
    bad = torch.full((3, 3, 2), 100.0)  # 800-3200 px anchors for 13-510 px boxes
    new = autoanchor.check_anchors(labels, shapes, bad, stride, 4.0, 640, np.random.default_rng(0))
    assert new is not None and new.shape == (3, 3, 2)
    again = autoanchor.check_anchors(labels, shapes, bad, stride, 4.0, 640, np.random.default_rng(0))
    torch.testing.assert_close(new, again)  # deterministic for a seed
    px = (new * stride.view(-1, 1, 1)).reshape(-1, 2)
    assert torch.all(px.prod(1)[1:] >= px.prod(1)[:-1])  # small anchors on the fine level
