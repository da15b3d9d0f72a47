"""YOLOv5 loss: a hand-computed case, empty targets, and the sums/counts contract."""

import math

import pytest
import torch

from yolodist.config.schema import Hyp
from yolodist.engine.loss import YoloLoss, reduce_loss, scaled_gains

LN2 = math.log(2)


def one_level_loss(nc=2, **hyp) -> YoloLoss:
    return YoloLoss(torch.ones(1, 1, 2), nc=nc, hyp=Hyp(**hyp), img_size=640)


def test_one_target_by_hand():
    """4x4 grid, one anchor of 1x1 cells, one target at (1.2, 1.2) cells, size 1x1; all logits zero.

    The target is assigned to its own cell (1, 1) and to the left and upper neighbours, since its
    centre lies in the first half of its cell on both axes. With zero logits every predicted box is
    centred at (0.5, 0.5) of its cell with size 1x1, and every BCE term is ln 2.
    """
    loss = one_level_loss()
    pred = torch.zeros(1, 1, 4, 4, 7)
    targets = torch.tensor([[0, 1, 0.3, 0.3, 0.25, 0.25]])
    _, _, gj, gi, _, _ = loss.build_targets([pred], targets)[0]
    assert sorted(zip(gj.tolist(), gi.tolist(), strict=True)) == [(0, 1), (1, 0), (1, 1)]
    # CIoU of (0.5, 0.5, 1, 1) with the target seen from each cell, computed by hand:
    own = 0.49 / 1.51 - 0.18 / 3.38  # IoU minus centre distance over enclosing diagonal
    neighbour = 0.21 / 1.79 - 0.58 / 4.58
    terms = loss([pred], targets)
    expected_sums = torch.tensor([[(1 - own) + 2 * (1 - neighbour)], [16 * LN2], [6 * LN2]])
    torch.testing.assert_close(terms.sums, expected_sums, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.counts, torch.tensor([[3.0], [16.0], [6.0]]))


def test_objectness_target_is_clamped_iou():
    loss = one_level_loss(nc=1)
    pred = torch.zeros(1, 1, 4, 4, 6, requires_grad=True)
    targets = torch.tensor([[0, 0, 0.3, 0.3, 0.25, 0.25]])
    terms = loss([pred], targets)
    terms.sums[1].sum().backward()
    # d BCE / d logit = sigmoid(0) - target: 0.5 - IoU at the own cell, 0.5 - 0 at the clamped neighbours.
    own = 0.49 / 1.51 - 0.18 / 3.38
    assert pred.grad[0, 0, 1, 1, 4].item() == pytest.approx(0.5 - own, abs=1e-5)
    assert pred.grad[0, 0, 1, 0, 4].item() == pytest.approx(0.5, abs=1e-6)
    assert terms.sums[2].item() == 0  # no class loss for a single class (as upstream)


def test_anchor_ratio_filter():
    loss = one_level_loss(anchor_t=4.0)
    pred = torch.zeros(1, 1, 4, 4, 7)
    big = torch.tensor([[0, 0, 0.5, 0.5, 0.9, 0.9]])  # 3.6 cells vs a 1-cell anchor: kept (< 4)
    huge = torch.tensor([[0, 0, 0.5, 0.5, 0.9, 0.2]])  # ratio 3.6 and 0.8: kept
    tiny = torch.tensor([[0, 0, 0.5, 0.5, 0.05, 0.05]])  # 0.2 cells: ratio 5 > 4, dropped
    assert loss([pred], big).counts[0, 0] > 0
    assert loss([pred], huge).counts[0, 0] > 0
    assert loss([pred], tiny).counts[0, 0] == 0


def test_no_targets_only_objectness_and_gradients_everywhere():
    loss = YoloLoss(torch.rand(3, 3, 2) + 0.5, nc=3, hyp=Hyp())
    preds = [torch.randn(2, 3, s, s, 8, requires_grad=True) for s in (8, 4, 2)]
    terms = loss(preds, torch.zeros(0, 6))
    assert torch.all(terms.sums[[0, 2]] == 0) and torch.all(terms.sums[1] > 0)
    value, _ = reduce_loss(terms, terms.counts, loss.weights, batch_size=2)
    value.backward()
    assert torch.isfinite(value)
    for p in preds:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_label_smoothing_targets():
    loss = one_level_loss(label_smoothing=0.2)
    assert (loss.cls_pos, loss.cls_neg) == pytest.approx((0.9, 0.1))


def test_gains_scale_as_upstream():
    box, obj, cls = scaled_gains(Hyp(), nl=3, nc=80, img_size=640)
    assert (box, obj, cls) == pytest.approx((0.05, 1.0, 0.5))
    box, obj, cls = scaled_gains(Hyp(), nl=3, nc=6, img_size=320)
    assert (box, obj, cls) == pytest.approx((0.05, 0.25, 0.5 * 6 / 80))


def test_split_batch_with_global_counts_equals_full_batch():
    """The world-size-invariance property in one process: two halves, counts summed, equal the whole."""
    torch.manual_seed(0)
    loss = YoloLoss(torch.tensor([[[1.0, 1.5], [2.0, 2.0], [3.0, 2.5]]] * 3), nc=4, hyp=Hyp())
    preds = [torch.randn(4, 3, s, s, 9) for s in (16, 8, 4)]
    targets = torch.tensor(
        [
            [0, 1, 0.3, 0.4, 0.2, 0.3],
            [0, 2, 0.6, 0.5, 0.1, 0.1],
            [1, 0, 0.5, 0.5, 0.5, 0.6],
            [3, 3, 0.2, 0.8, 0.05, 0.1],
        ]
    )
    full, _ = reduce_loss(loss(preds, targets), loss(preds, targets).counts, loss.weights, batch_size=4)
    halves = []
    for lo in (0, 2):
        part = targets[(targets[:, 0] >= lo) & (targets[:, 0] < lo + 2)].clone()
        part[:, 0] -= lo
        halves.append(loss([p[lo : lo + 2] for p in preds], part))
    counts = halves[0].counts + halves[1].counts
    split = sum(reduce_loss(h, counts, loss.weights, batch_size=4)[0] for h in halves)
    torch.testing.assert_close(split, full)
    # Per-rank normalisation (upstream's) is a different number.
    local = sum(reduce_loss(h, h.counts, loss.weights, batch_size=4)[0] for h in halves) / 2
    assert not torch.isclose(local, full, rtol=1e-4)
