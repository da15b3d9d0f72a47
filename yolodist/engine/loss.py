"""YOLOv5's loss, returned as per-level sums and counts so the engine can normalise globally.

Upstream divides the box and class terms by the number of targets matched *on this rank*; under DDP
the average of those per-rank means is not the one-process mean (RELIABILITY.md, finding 5). Here
the loss returns raw sums and the element counts behind each mean; the engine all-reduces the counts
and ``reduce_loss`` divides. With local counts the result equals upstream's ``ComputeLoss`` exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from yolodist.config.schema import Hyp
from yolodist.ops.boxes import bbox_iou

# Five candidate cells per target: its own, and the neighbours left/up/right/down (scaled by 0.5).
NEIGHBOUR_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
GRID_OFFSET = 0.5


class LossTerms(NamedTuple):
    """``sums`` and ``counts`` are float ``[3, nl]``: rows box, obj, cls; one column per level."""

    sums: torch.Tensor
    counts: torch.Tensor


def level_balance(nl: int) -> list[float]:
    return [4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:nl]


def scaled_gains(hyp: Hyp, nl: int, nc: int, img_size: int) -> tuple[float, float, float]:
    """Box, obj and cls gains scaled to the number of levels, classes and the image size, as upstream."""
    box = hyp.box * 3 / nl
    cls = hyp.cls * nc / 80 * 3 / nl
    obj = hyp.obj * (img_size / 640) ** 2 * 3 / nl
    return box, obj, cls


class FocalLoss(nn.Module):
    """Focal loss (arXiv:1708.02002) around a BCE-with-logits criterion; returns the sum."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.bce.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.bce(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha = true * self.alpha + (1 - true) * (1 - self.alpha)
        return (loss * alpha * (1.0 - p_t) ** self.gamma).sum()


def _criterion(pos_weight: float, gamma: float) -> nn.Module:
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]), reduction="sum")
    return FocalLoss(bce, gamma) if gamma > 0 else bce


class YoloLoss:
    """YOLOv5 loss for a head with ``anchors`` ``[nl, na, 2]`` in grid units (pixels / stride)."""

    def __init__(self, anchors: torch.Tensor, nc: int, hyp: Hyp, img_size: int = 640) -> None:
        self.anchors = anchors  # the head's buffer itself, so AutoAnchor updates are seen
        self.nl, self.na = anchors.shape[:2]
        self.nc = nc
        self.anchor_t = hyp.anchor_t
        eps = hyp.label_smoothing
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps
        self.bce_cls = _criterion(hyp.cls_pw, hyp.fl_gamma)
        self.bce_obj = _criterion(hyp.obj_pw, hyp.fl_gamma)
        box, obj, cls = scaled_gains(hyp, self.nl, nc, img_size)
        balance = torch.tensor(level_balance(self.nl))
        # Upstream has no class loss for a single class.
        self.weights = torch.stack(
            [torch.full((self.nl,), box), obj * balance, torch.full((self.nl,), cls if nc > 1 else 0.0)]
        ).to(anchors.device)

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> LossTerms:
        """``preds``: nl maps ``[bs, na, ny, nx, 5 + nc]`` of logits; ``targets``: ``[nt, 6]`` (image, cls, xywhn)."""
        device = preds[0].device
        if self.weights.device != device:
            self.weights = self.weights.to(device)
            self.bce_cls.to(device)
            self.bce_obj.to(device)
        sums = []
        counts = []
        for level, (pred, match) in enumerate(zip(preds, self.build_targets(preds, targets), strict=True)):
            b, a, gj, gi, tbox, tcls = match
            n = b.shape[0]
            tobj = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)
            zero = pred.sum() * 0  # keeps every term in the graph when nothing matched
            box_sum, cls_sum = zero, zero
            if n:
                pxy, pwh, _, pcls = pred[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * self.anchors[level][a]), 1)
                iou = bbox_iou(pbox, tbox, kind="ciou")
                box_sum = (1.0 - iou).sum()
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)  # objectness target = IoU
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cls_neg)
                    t[torch.arange(n, device=device), tcls] = self.cls_pos
                    cls_sum = self.bce_cls(pcls, t)
            obj_sum = self.bce_obj(pred[..., 4], tobj)
            sums.append(torch.stack([box_sum, obj_sum, cls_sum]))
            counts.append(torch.tensor([n, tobj.numel(), n * self.nc], dtype=torch.float32))
        return LossTerms(torch.stack(sums, 1).float(), torch.stack(counts, 1).to(device))

    @torch.no_grad()
    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor) -> list[tuple]:
        """Match targets to (image, anchor, cell) per level, vectorised over targets.

        A target goes to every anchor whose width/height ratio to it is within ``anchor_t``, in its own
        cell and the two neighbouring cells nearest its centre. Returns per level
        (b, a, gj, gi, tbox ``[n, 4]`` (xy offset in the cell, wh in grid units), tcls).
        """
        device = targets.device
        nt = targets.shape[0]
        anchor_idx = torch.arange(self.na, device=device, dtype=targets.dtype).view(self.na, 1).repeat(1, nt)
        # [na, nt, 7]: image, cls, x, y, w, h, anchor
        all_targets = torch.cat((targets.repeat(self.na, 1, 1), anchor_idx[..., None]), 2)
        offsets_table = NEIGHBOUR_OFFSETS.to(device) * GRID_OFFSET
        out = []
        for level, pred in enumerate(preds):
            anchors = self.anchors[level].to(device)
            ny, nx = pred.shape[2:4]
            gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=targets.dtype)
            t = all_targets * gain
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(ratio, 1 / ratio).max(2)[0] < self.anchor_t]
                gxy = t[:, 2:4]
                gxy_inv = gain[[2, 3]] - gxy
                left, up = ((gxy % 1 < GRID_OFFSET) & (gxy > 1)).T
                right, down = ((gxy_inv % 1 < GRID_OFFSET) & (gxy_inv > 1)).T
                chosen = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[chosen]
                offsets = (torch.zeros_like(gxy)[None] + offsets_table[:, None])[chosen]
            else:
                t = all_targets[0]
                offsets = torch.zeros_like(t[:, 2:4])
            image_cls, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a = a.long().view(-1)
            b, c = image_cls.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            gi, gj = gi.clamp(0, nx - 1), gj.clamp(0, ny - 1)
            out.append((b, a, gj, gi, torch.cat((gxy - gij, gwh), 1), c))
        return out


def reduce_loss(
    terms: LossTerms, counts: torch.Tensor, weights: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, items): ``batch_size * sum(weights * sums / counts)`` and the per-component means (detached).

    ``counts`` may be this rank's own (upstream's normalisation) or all-reduced over ranks (global).
    """
    means = weights * terms.sums / counts.clamp(min=1)
    items = means.sum(1)
    return items.sum() * batch_size, items.detach()
