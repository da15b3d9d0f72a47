"""Detection metrics: matching, AP per class (COCO 101-point), confusion matrix, fitness.

NumPy and hand-checkable; no plotting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from yolodist.ops.boxes import box_iou


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold.

    ``detections`` ``[n, 6]`` (xyxy, conf, cls); ``labels`` ``[m, 5]`` (cls, xyxy); ``iouv`` ``[t]``.
    Returns bool ``[n, t]``. Each label is matched to at most one detection per threshold, highest
    IoU first, only between detections and labels of the same class.
    """
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    if detections.shape[0] and labels.shape[0]:
        iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy()
        same_class = (labels[:, 0:1] == detections[:, 5]).cpu().numpy()
        for k, threshold in enumerate(iouv.tolist()):
            _, di = greedy_pairs(iou, (iou >= threshold) & same_class)
            correct[di, k] = True
    return torch.from_numpy(correct)


def greedy_pairs(iou: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (label, detection) pairs among ``allowed`` ``[m, n]``, highest IoU first.

    Vectorised: sort candidate pairs by IoU, keep each detection's best pair, then each label's best.
    """
    li, di = np.nonzero(allowed)
    if not li.size:
        return li, di
    for key in (1, 0):  # detections first, then labels
        order = np.argsort(-iou[li, di], kind="stable")
        li, di = li[order], di[order]
        _, first = np.unique(di if key == 1 else li, return_index=True)
        li, di = li[first], di[first]
    return li, di


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP as the area under the precision envelope, sampled at 101 recall points (COCO)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    ap = float(np.trapezoid(np.interp(x, mrec, mpre), x))
    return ap, mpre, mrec


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter smoothing (fraction ``f`` of the length) used for the F1 curve."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


@dataclass
class APResult:
    p: np.ndarray  # [k] precision per class at the max-mean-F1 confidence
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray  # [k, t] AP per class and IoU threshold
    classes: np.ndarray  # [k] class ids present in the targets
    px: np.ndarray  # [1000] confidence axis
    py: list  # PR curves at IoU 0.5, one per class


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16
) -> APResult:
    """Precision, recall, F1 and AP per target class from per-detection TP flags ``[n, t]``."""
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    k, t = classes.shape[0], tp.shape[1]
    px = np.linspace(0, 1, 1000)
    ap, p_curve, r_curve, py = np.zeros((k, t)), np.zeros((k, 1000)), np.zeros((k, 1000)), []
    for ci, c in enumerate(classes):
        mask = pred_cls == c
        n_pred = int(mask.sum())
        if n_pred == 0:
            py.append(np.zeros(1000))
            continue
        fpc = (1 - tp[mask]).cumsum(0)
        tpc = tp[mask].cumsum(0)
        recall = tpc / (n_labels[ci] + eps)
        precision = tpc / (tpc + fpc)
        # Curves against confidence (negated: np.interp needs increasing x).
        r_curve[ci] = np.interp(-px, -conf[mask], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[mask], precision[:, 0], left=1)
        for j in range(t):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                py.append(np.interp(px, mrec, mpre))
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(smooth(f1.mean(0), 0.1).argmax()) if k else 0
    return APResult(p_curve[:, best], r_curve[:, best], f1[:, best], ap, classes.astype(int), px, py)


def fitness(metrics: np.ndarray) -> np.ndarray:
    """Model fitness from ``[..., 4]`` (P, R, mAP@0.5, mAP@0.5:0.95): 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95."""
    return (np.asarray(metrics)[..., :4] * np.array([0.0, 0.0, 0.1, 0.9])).sum(-1)


class ConfusionMatrix:
    """Detections vs labels per class, with background as the last row/column."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """``detections`` ``[n, 6]`` (xyxy, conf, cls) or None; ``labels`` ``[m, 5]`` (cls, xyxy)."""
        gt = labels[:, 0].int().tolist()
        if detections is None or not detections.shape[0]:
            for g in gt:
                self.matrix[self.nc, g] += 1  # missed: predicted background
            return
        detections = detections[detections[:, 4] > self.conf]
        dc = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy() if len(gt) else np.zeros((0, len(dc)))
        pairs = np.stack(greedy_pairs(iou, iou > self.iou_thres), 1).astype(int)
        matched_gt, matched_det = set(pairs[:, 0].tolist()), set(pairs[:, 1].tolist())
        for g_i, d_i in pairs:
            self.matrix[dc[d_i], gt[g_i]] += 1
        for g_i, g in enumerate(gt):
            if g_i not in matched_gt:
                self.matrix[self.nc, g] += 1
        for d_i, d in enumerate(dc):
            if d_i not in matched_det:
                self.matrix[d, self.nc] += 1  # false positive: background predicted as d
