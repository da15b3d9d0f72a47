"""YOLOv5 loss: a hand-computed case, empty targets, and the sums/counts contract."""

import math

import pytest
import torch

from yolodist.config.schema import Hyp
from yolodist.engine.loss import YoloLoss, reduce_loss, scaled_gains
from yolodist.ops.boxes import bbox_iou

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
    m = loss.build_targets([pred], targets)[0]
    cells = sorted(zip(m.gj[m.valid].tolist(), m.gi[m.valid].tolist(), strict=True))
    assert cells == [(0, 1), (1, 0), (1, 1)]
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


def reference_loss(preds, targets, anchors, nc, hyp, img_size):
    """Upstream-style ComputeLoss semantics, written the direct way: Python loops, per-rank means.

    Independent of YoloLoss's fixed-size candidate layout; used to check that reduce_loss with local
    counts reproduces upstream's (loss * bs, (lbox, lobj, lcls)).
    """
    nl, na = anchors.shape[:2]
    box_gain, obj_gain, cls_gain = scaled_gains(hyp, nl, nc, img_size)
    balance = [4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:nl]
    cp, cn = 1 - 0.5 * hyp.label_smoothing, 0.5 * hyp.label_smoothing

    def bce(logits, target, pos_weight):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=torch.tensor(pos_weight), reduction="none"
        )
        if hyp.fl_gamma > 0:
            p = logits.sigmoid()
            p_t = target * p + (1 - target) * (1 - p)
            loss = loss * (target * 0.25 + (1 - target) * 0.75) * (1 - p_t) ** hyp.fl_gamma
        return loss.mean()

    def neighbour_used(off, gx, gy, nx, ny):
        return {
            (0, 0): True,
            (1, 0): gx % 1 < 0.5 and gx > 1,
            (0, 1): gy % 1 < 0.5 and gy > 1,
            (-1, 0): (nx - gx) % 1 < 0.5 and (nx - gx) > 1,
            (0, -1): (ny - gy) % 1 < 0.5 and (ny - gy) > 1,
        }[off]

    lbox, lobj, lcls = torch.zeros(()), torch.zeros(()), torch.zeros(())
    for i, p in enumerate(preds):
        ny, nx = p.shape[2:4]
        tobj = torch.zeros(p.shape[:4])
        rows = []  # upstream's order is (offset, anchor, target), which these loops follow
        for off in [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1)]:
            for a in range(na):
                for t in targets.tolist():
                    gx, gy, gw, gh = t[2] * nx, t[3] * ny, t[4] * nx, t[5] * ny
                    r = torch.tensor([gw, gh]) / anchors[i, a]
                    if torch.max(r, 1 / r).max() < hyp.anchor_t and neighbour_used(off, gx, gy, nx, ny):
                        cx, cy = int(gx - 0.5 * off[0]), int(gy - 0.5 * off[1])
                        rows.append((int(t[0]), a, cy, cx, [gx - cx, gy - cy, gw, gh], int(t[1])))
        if rows:
            b, a, gj, gi, tbox, tcls = zip(*rows, strict=True)
            b, a, tcls = torch.tensor(b), torch.tensor(a), torch.tensor(tcls)
            gj, gi = torch.tensor(gj).clamp(0, ny - 1), torch.tensor(gi).clamp(0, nx - 1)
            ps = p[b, a, gj, gi]
            pbox = torch.cat((ps[:, :2].sigmoid() * 2 - 0.5, (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors[i][a]), 1)
            iou = bbox_iou(pbox, torch.tensor(tbox), kind="ciou")
            lbox = lbox + (1 - iou).mean()
            tobj[b, a, gj, gi] = iou.detach().clamp(0)
            if nc > 1:
                t = torch.full_like(ps[:, 5:], cn)
                t[torch.arange(len(rows)), tcls] = cp
                lcls = lcls + bce(ps[:, 5:], t, hyp.cls_pw)
        lobj = lobj + bce(p[..., 4], tobj, hyp.obj_pw) * balance[i]
    lbox, lobj, lcls = lbox * box_gain, lobj * obj_gain, lcls * cls_gain
    bs = preds[0].shape[0]
    return (lbox + lobj + lcls) * bs, torch.stack((lbox, lobj, lcls)).detach()


def random_case(seed, nc=3, nt=12, bs=3):
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.tensor([[[1.25, 1.6], [2.0, 3.75], [4.1, 2.9]], [[1.9, 3.8], [3.9, 2.8], [3.7, 7.4]]])
    preds = [torch.randn(bs, 3, s, s, 5 + nc, generator=gen).requires_grad_() for s in (8, 4)]
    xy = torch.rand(nt, 2, generator=gen)
    wh = torch.rand(nt, 2, generator=gen) * 0.6 + 0.02
    image = torch.randint(0, bs, (nt, 1), generator=gen).float()
    cls = torch.randint(0, nc, (nt, 1), generator=gen).float()
    targets = torch.cat([image, cls, xy, wh], 1)
    targets = torch.cat([targets, targets[:2]])  # exact duplicates share cells: one IoU wins the obj target
    return anchors, preds, targets


@pytest.mark.parametrize(
    "hyp",
    [Hyp(), Hyp(fl_gamma=1.5, label_smoothing=0.1, cls_pw=1.3, obj_pw=0.7, anchor_t=2.9)],
    ids=["default", "focal-smoothing-pw"],
)
def test_local_counts_reproduce_upstream_style_loss(hyp):
    for seed in (0, 1):
        anchors, preds, targets = random_case(seed)
        loss = YoloLoss(anchors, nc=3, hyp=hyp, img_size=320)
        terms = loss(preds, targets)
        value, items = reduce_loss(terms, terms.counts, loss.weights, batch_size=3)
        ref_value, ref_items = reference_loss(preds, targets, anchors, 3, hyp, 320)
        torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(items, ref_items, rtol=1e-5, atol=1e-6)
        # Gradients too: the loss trains the same way.
        grads = torch.autograd.grad(value, preds)
        ref_grads = torch.autograd.grad(ref_value, preds)
        for g, rg in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-7)


def test_autobalance_adapts_level_weights_after_each_call():
    anchors, preds, targets = random_case(0)
    loss = YoloLoss(anchors, nc=3, hyp=Hyp(), autobalance=True)
    fixed = YoloLoss(anchors, nc=3, hyp=Hyp())
    first = loss(preds, targets)
    torch.testing.assert_close(loss.weights, fixed.weights)  # the first call uses the initial balance
    obj_mean = first.sums[1] / first.counts[1]
    expected = torch.tensor([4.0, 1.0]) * 0.9999 + 0.0001 / obj_mean
    loss(preds, targets)
    torch.testing.assert_close(loss.weights[1], fixed.gains[1] * expected / expected[1])
    assert loss.weights[1, 1] == pytest.approx(fixed.gains[1].item())  # the stride-16 level stays at 1


def test_loss_never_syncs_with_the_host():
    """Proxy for 'no host-device sync' on CPU: no op that needs the host to read device data.

    Boolean indexing (nonzero), .item() (_local_scalar_dense) and torch.tensor(list) (lift_fresh:
    a host-to-device copy on a GPU) all stall the CUDA queue.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bad = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            bool_index = name.startswith("aten.index") and any(
                isinstance(x, torch.Tensor) and x.dtype == torch.bool
                for a in args
                if isinstance(a, list | tuple)
                for x in a
            )
            if bool_index or any(k in name for k in ("nonzero", "_local_scalar_dense", "lift_fresh", "masked_select")):
                self.bad.append(name)
            return func(*args, **(kwargs or {}))

    anchors, preds, targets = random_case(0)
    loss = YoloLoss(anchors, nc=3, hyp=Hyp(), autobalance=True)
    with Recorder() as rec:
        terms = loss(preds, targets)
        value, _ = reduce_loss(terms, terms.counts, loss.weights, batch_size=3)
        value.backward()
        loss(preds, targets[:0])
    assert rec.bad == []


def test_one_level_without_matches_keeps_graph_and_counts():
    """Huge targets match no anchor on the fine level only: its box/cls sums are 0 yet depend on preds."""
    anchors = torch.tensor([[[0.2, 0.2]], [[3.0, 3.0]]])
    loss = YoloLoss(anchors, nc=2, hyp=Hyp())
    preds = [torch.randn(1, 1, s, s, 7, requires_grad=True) for s in (8, 4)]
    terms = loss(preds, torch.tensor([[0, 1, 0.5, 0.5, 0.7, 0.7]]))
    assert terms.counts[0, 0] == 0 and terms.counts[0, 1] > 0
    assert terms.counts[1].tolist() == [64.0, 16.0]
    assert terms.sums[0, 0] == 0 and terms.sums[0, 0].grad_fn is not None and terms.sums[2, 0].grad_fn is not None
    value, _ = reduce_loss(terms, terms.counts, loss.weights, batch_size=1)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)
