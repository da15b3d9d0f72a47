"""Detection metrics: matching, AP per class (COCO 101-point), confusion matrix, fitness.

NumPy and hand-checkable; no plotting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from yolodist.ops.boxes import box_iou


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold, matched as the COCO evaluator does.

    ``detections`` ``[n, 6]`` (xyxy, conf, cls); ``labels`` ``[m, 5]`` (cls, xyxy); ``iouv`` ``[t]``.
    Returns bool ``[n, t]``. In order of decreasing confidence, each detection takes the unmatched
    label of its class with the highest IoU at or above the threshold. (Upstream YOLOv5 pairs by
    highest IoU instead, which can hand a label to a low-confidence duplicate and score below COCO.)
    """
    n, t = detections.shape[0], iouv.shape[0]
    correct = np.zeros((n, t), dtype=bool)
    if not n or not labels.shape[0]:
        return torch.from_numpy(correct)
    iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy()  # [m, n]
    iou[(labels[:, 0:1] != detections[:, 5]).cpu().numpy()] = 0.0
    order = np.argsort(-detections[:, 4].cpu().numpy(), kind="stable")
    thresholds = iouv.cpu().numpy()
    allowed = iou[None] >= thresholds[:, None, None]  # [t, m, n]
    # Uncontested pairs (the label has one candidate detection and the detection one candidate
    # label) are matched at once; only detections in contested groups are resolved in score order.
    per_label, per_det = allowed.sum(2), allowed.sum(1)  # [t, m], [t, n]
    contested_det = (per_det > 1) | (allowed & (per_label > 1)[:, :, None]).any(1)  # [t, n]
    single = allowed & ~contested_det[:, None, :]
    ti, _, di = np.nonzero(single)
    correct[di, ti] = True
    for k in range(t):
        taken = np.zeros(iou.shape[0], dtype=bool)
        for d in order[contested_det[k, order]]:
            candidates = np.where(allowed[k, :, d] & ~taken, iou[:, d], -1.0)
            best = int(candidates.argmax())
            if candidates[best] >= 0:
                taken[best] = True
                correct[d, k] = True
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
    """AP as COCO defines it: the precision envelope sampled at 101 recall points, then averaged.

    At each recall threshold the precision is the best precision at that recall or beyond, and 0
    past the highest recall reached. (Upstream YOLOv5 integrates a linear interpolation to recall 1
    instead, which credits recall never reached and reads up to a few points above COCO's scorer.)
    Returns (ap, envelope, recall), the last two padded with the (0, 1) and (1, 0) end points.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    thresholds = np.linspace(0, 1, 101)
    envelope = np.flip(np.maximum.accumulate(np.flip(np.asarray(precision, dtype=np.float64))))
    index = np.searchsorted(np.asarray(recall), thresholds, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
    return float(sampled.mean()) if len(envelope) else 0.0, mpre, mrec


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter smoothing ``[n] -> [n]`` (window about ``f`` of the length, edges padded) for the F1 curve."""
    nf = round(len(y) * f * 2) // 2 + 1
    nf += 1 - nf % 2  # an odd window keeps the length (upstream's even windows return one extra point)
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
    p_curve: np.ndarray | None = None  # [k, 1000] precision, recall and F1 against confidence (px)
    r_curve: np.ndarray | None = None
    f1_curve: np.ndarray | None = None


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
    return APResult(
        p_curve[:, best], r_curve[:, best], f1[:, best], ap, classes.astype(int), px, py, p_curve, r_curve, f1
    )


def fitness(metrics: np.ndarray) -> np.ndarray:
    """Model fitness from ``[..., 4]`` (P, R, mAP@0.5, mAP@0.5:0.95): 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95."""
    return (np.asarray(metrics)[..., :4] * np.array([0.0, 0.0, 0.1, 0.9])).sum(-1)


@dataclass
class Metrics:
    """Summary of an ``APResult``: means over the classes present in the targets."""

    ap: APResult

    @property
    def mp(self) -> float:
        return float(self.ap.p.mean()) if self.ap.p.size else 0.0

    @property
    def mr(self) -> float:
        return float(self.ap.r.mean()) if self.ap.r.size else 0.0

    @property
    def map50(self) -> float:
        return float(self.ap.ap[:, 0].mean()) if self.ap.ap.size else 0.0

    @property
    def map(self) -> float:
        # The mean of the per-class means, not ap.mean(): equal in exact arithmetic, and in this order
        # the overall mAP is exactly the mean of the per-class mAP@0.5:0.95 that validation prints.
        return float(self.ap.ap.mean(1).mean()) if self.ap.ap.size else 0.0

    def mean_results(self) -> tuple[float, float, float, float]:
        """(P, R, mAP@0.5, mAP@0.5:0.95), the order ``fitness`` expects."""
        return self.mp, self.mr, self.map50, self.map

    def maps(self, nc: int) -> np.ndarray:
        """mAP@0.5:0.95 per class id ``[nc]``; classes absent from the targets get the overall mAP."""
        out = np.full(nc, self.map)
        out[self.ap.classes] = self.ap.ap.mean(1)
        return out

    def fitness(self) -> float:
        return float(fitness(np.array(self.mean_results())))


class ConfusionMatrix:
    """Detections vs labels per class; ``matrix[predicted, true]``, background as the last row/column."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """``detections`` ``[n, 6]`` (xyxy, conf, cls) or None; ``labels`` ``[m, 5]`` (cls, xyxy).

        Pairs are class-agnostic (IoU > ``iou_thres``, one-to-one, highest IoU first): a pair of
        different classes is a confusion; an unpaired label is a miss (background row); an unpaired
        detection is a false positive (background column).
        """
        gt = labels[:, 0].long().cpu().numpy()
        if detections is None:
            detections = torch.zeros((0, 6))
        detections = detections[detections[:, 4] > self.conf]
        dc = detections[:, 5].long().cpu().numpy()
        iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy()
        li, di = greedy_pairs(iou, iou > self.iou_thres)
        np.add.at(self.matrix, (dc[di], gt[li]), 1)
        missed = np.ones(len(gt), bool)
        missed[li] = False
        np.add.at(self.matrix, (self.nc, gt[missed]), 1)
        unmatched = np.ones(len(dc), bool)
        unmatched[di] = False
        np.add.at(self.matrix, (dc[unmatched], self.nc), 1)

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives per class ``[nc]`` (detections of the class that were right / wrong)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]
