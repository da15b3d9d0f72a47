"""YOLOv5's loss, returned as per-level sums and counts so the engine can normalise globally.

Upstream divides the box and class terms by the number of targets matched *on this rank*; under DDP
the average of those per-rank means is not the one-process mean (RELIABILITY.md, finding 5). Here
the loss returns raw sums and the element counts behind each mean; the engine all-reduces the counts
and ``reduce_loss`` divides. With local counts the result equals upstream's ``ComputeLoss`` exactly.

The matching keeps a fixed number of candidates (5 cells x na anchors x nt targets per level) with a
validity mask instead of indexing with boolean masks: a boolean index needs the host to learn the
result size, which stalls the GPU queue every step. Invalid candidates are weighted out of every sum
and write their objectness target into a spare slot that is dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from yolodist.config.schema import Hyp
from yolodist.ops.boxes import bbox_iou

# Five candidate cells per target: its own, and the neighbours left/up/right/down (scaled by 0.5).
NEIGHBOUR_OFFSETS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))
GRID_OFFSET = 0.5
BALANCE_REFERENCE_LEVEL = 1  # autobalance normalises to the stride-16 level, as upstream (P3 is level 0)


class LossTerms(NamedTuple):
    """``sums`` and ``counts`` are float32 ``[3, nl]``: rows box, obj, cls; one column per level."""

    sums: torch.Tensor
    counts: torch.Tensor


class Matches(NamedTuple):
    """Fixed-size match candidates of one level, ``k = 5 * na * nt``; only rows with ``valid`` count.

    ``b, a, gj, gi`` ``[k]`` (image, anchor, cell row, cell column; always inside the grid), ``tbox``
    ``[k, 4]`` (target xy relative to the cell corner, wh in grid units), ``tcls`` ``[k]``, ``valid`` ``[k]`` bool.
    """

    b: torch.Tensor
    a: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    tbox: torch.Tensor
    tcls: torch.Tensor
    valid: torch.Tensor


def level_balance(nl: int) -> list[float]:
    """Objectness weight per level (fine to coarse), as upstream: P3 counts 4x, P5 0.4x."""
    return [4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:nl]


def scaled_gains(hyp: Hyp, nl: int, nc: int, img_size: int) -> tuple[float, float, float]:
    """Box, obj and cls gains scaled to the number of levels, classes and the image size, as upstream."""
    box = hyp.box * 3 / nl
    cls = hyp.cls * nc / 80 * 3 / nl
    obj = hyp.obj * (img_size / 640) ** 2 * 3 / nl
    return box, obj, cls


class FocalLoss(nn.Module):
    """Focal loss (arXiv:1708.02002) around a BCE-with-logits criterion; element-wise, no reduction."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.bce.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.bce(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha = true * self.alpha + (1 - true) * (1 - self.alpha)
        return loss * alpha * (1.0 - p_t) ** self.gamma


def _criterion(pos_weight: float, gamma: float) -> nn.Module:
    """Element-wise BCE-with-logits (focal when ``gamma`` > 0); callers mask and sum."""
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]), reduction="none")
    return FocalLoss(bce, gamma) if gamma > 0 else bce


class YoloLoss:
    """YOLOv5 loss for a head with ``anchors`` ``[nl, na, 2]`` in grid units (pixels / stride).

    ``weights`` ``[3, nl]`` (component gain x level balance) are the weights that go with the terms of
    the most recent call; with ``autobalance`` the level balance then adapts as upstream's does, from
    this rank's own objectness means (so ranks may drift apart slightly under DDP; upstream never
    enables it).
    """

    def __init__(
        self, anchors: torch.Tensor, nc: int, hyp: Hyp, img_size: int = 640, autobalance: bool = False
    ) -> None:
        self.anchors = anchors  # the head's buffer itself, so AutoAnchor updates are seen
        self.nl, self.na = anchors.shape[:2]
        self.nc = nc
        self.anchor_t = hyp.anchor_t
        self.autobalance = autobalance
        eps = hyp.label_smoothing
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps
        self.bce_cls = _criterion(hyp.cls_pw, hyp.fl_gamma)
        self.bce_obj = _criterion(hyp.obj_pw, hyp.fl_gamma)
        box, obj, cls = scaled_gains(hyp, self.nl, nc, img_size)
        # Upstream has no class loss for a single class.
        self.gains = torch.tensor([[box], [obj], [cls if nc > 1 else 0.0]], device=anchors.device)
        self.balance = torch.tensor(level_balance(self.nl), device=anchors.device)
        self.weights = self._weights()
        self._offsets = torch.tensor(NEIGHBOUR_OFFSETS, dtype=torch.float32, device=anchors.device) * GRID_OFFSET

    def _weights(self) -> torch.Tensor:
        ones = torch.ones_like(self.balance)
        return self.gains * torch.stack([ones, self.balance, ones])

    def _to(self, device: torch.device) -> None:
        for name in ("gains", "balance", "weights", "_offsets"):
            setattr(self, name, getattr(self, name).to(device))
        self.bce_cls.to(device)
        self.bce_obj.to(device)

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> LossTerms:
        """``preds``: nl maps ``[bs, na, ny, nx, 5 + nc]`` of logits; ``targets``: ``[nt, 6]`` (image, cls, xywhn).

        Returns raw (unweighted) sums and their counts; no host-device synchronisation happens here.
        """
        device = preds[0].device
        if self.gains.device != device:
            self._to(device)
        targets = targets.to(device)
        sums, counts = [], []
        for pred, match in zip(preds, self.build_targets(preds, targets), strict=True):
            level_sums, n_valid = self._level(pred, match, len(sums))
            sums.append(level_sums)
            cells = pred.shape[:4].numel()
            counts.append(torch.stack([n_valid, torch.full_like(n_valid, cells), n_valid * self.nc]))
        sums_t, counts_t = torch.stack(sums, 1).float(), torch.stack(counts, 1)
        self.weights = self._weights()  # the weights these terms are reduced with
        if self.autobalance:
            obj_mean = sums_t[1].detach() / counts_t[1]
            balance = self.balance * 0.9999 + 0.0001 / obj_mean
            self.balance = balance / balance[min(BALANCE_REFERENCE_LEVEL, self.nl - 1)]
        return LossTerms(sums_t, counts_t)

    def _level(self, pred: torch.Tensor, match: Matches, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(box, obj, cls) sums ``[3]`` and the number of valid matches (0-dim float) of one level."""
        b, a, gj, gi, tbox, tcls, valid = match
        pxy, pwh, _, pcls = pred[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
        pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * self.anchors[level][a]), 1)
        iou = bbox_iou(pbox, tbox, kind="ciou")
        # where, not multiply: an invalid candidate's garbage (even inf) must not reach the sum. The
        # gather above keeps box and cls in the graph even with zero matches, which DDP's reducer needs.
        box_sum = torch.where(valid, 1.0 - iou, 0.0).sum()
        bs, na, ny, nx = pred.shape[:4]
        cells = bs * na * ny * nx
        flat = torch.where(valid, ((b * na + a) * ny + gj) * nx + gi, cells)  # invalid -> spare slot
        tobj = torch.zeros(cells + 1, dtype=pred.dtype, device=pred.device)
        tobj[flat] = iou.detach().clamp(0).to(tobj.dtype)  # objectness target = IoU (gr = 1)
        obj_sum = self.bce_obj(pred[..., 4], tobj[:cells].view(bs, na, ny, nx)).sum()
        cls_sum = pcls.sum() * 0  # no class loss for one class, but still in the graph
        if self.nc > 1:
            t = torch.full_like(pcls, self.cls_neg)
            t.scatter_(1, tcls[:, None], self.cls_pos)
            cls_sum = torch.where(valid[:, None], self.bce_cls(pcls, t), 0.0).sum()
        return torch.stack([box_sum, obj_sum, cls_sum]), valid.sum().to(torch.float32)

    @torch.no_grad()
    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor) -> list[Matches]:
        """Match targets to (image, anchor, cell) per level, vectorised over targets.

        A target goes to every anchor whose width/height ratio to it is within ``anchor_t`` (both
        ways), in its own cell and the two neighbouring cells nearest its centre (YOLOv5 v6+). The
        candidate order is (offset, anchor, target), as upstream's after its boolean indexing.
        """
        device = targets.device
        nt = targets.shape[0]
        offsets = self._offsets.to(device=device, dtype=targets.dtype)
        anchor_idx = torch.arange(self.na, device=device, dtype=targets.dtype).view(self.na, 1).expand(self.na, nt)
        # [na, nt, 7]: image, cls, x, y, w, h, anchor
        all_targets = torch.cat((targets.expand(self.na, nt, 6), anchor_idx[..., None]), 2)
        out = []
        for level, pred in enumerate(preds):
            anchors = self.anchors[level].to(device=device, dtype=targets.dtype)
            ny, nx = pred.shape[2:4]
            gain = torch.ones(7, device=device, dtype=targets.dtype)
            gain[2:6:2].fill_(nx)  # fill_, not a host tensor: no copy, no sync
            gain[3:6:2].fill_(ny)
            t = all_targets * gain
            ratio = t[..., 4:6] / anchors[:, None]
            fits = torch.max(ratio, 1 / ratio).amax(2) < self.anchor_t  # [na, nt]
            gxy = t[..., 2:4]
            gxy_inv = gain[2:4] - gxy  # a slice: a list index would be a host copy
            left, up = ((gxy % 1 < GRID_OFFSET) & (gxy > 1)).unbind(-1)
            right, down = ((gxy_inv % 1 < GRID_OFFSET) & (gxy_inv > 1)).unbind(-1)
            valid = torch.stack((torch.ones_like(left), left, up, right, down)) & fits  # [5, na, nt]
            t = t.expand(5, self.na, nt, 7).reshape(-1, 7)
            cell_offsets = offsets[:, None, None].expand(5, self.na, nt, 2).reshape(-1, 2)
            image_cls, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            b, c = image_cls.long().T
            gij = (gxy - cell_offsets).long()
            gi, gj = gij.T
            tbox = torch.cat((gxy - gij, gwh), 1)
            out.append(Matches(b, a.long().view(-1), gj.clamp(0, ny - 1), gi.clamp(0, nx - 1), tbox, c, valid.view(-1)))
        return out


def reduce_loss(
    terms: LossTerms, counts: torch.Tensor, weights: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, items): ``batch_size * sum(weights * sums / counts)`` and the per-component means ``[3]`` (detached).

    ``counts`` ``[3, nl]`` may be this rank's own (upstream's normalisation) or all-reduced over ranks
    (global); ``weights`` ``[3, nl]`` is ``YoloLoss.weights``.
    """
    means = weights * terms.sums / counts.clamp(min=1)
    items = means.sum(1)
    return items.sum() * batch_size, items.detach()
