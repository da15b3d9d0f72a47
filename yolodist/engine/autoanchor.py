"""AutoAnchor: check how well the anchors fit the dataset's boxes; evolve better ones when they do not."""

from __future__ import annotations

import logging

import numpy as np
import torch

from yolodist.utils.log import colorstr

LOGGER = logging.getLogger(__name__)
PREFIX = colorstr("AutoAnchor: ")
GOOD_BPR = 0.98


def _ratio_metric(anchors: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """``[n, k]``: for each box and anchor, the worse of the width and height ratios (<= 1)."""
    r = wh[:, None] / anchors[None]
    return np.minimum(r, 1 / r).min(2)


def best_possible_recall(anchors_px: np.ndarray | torch.Tensor, wh: np.ndarray, thr: float) -> tuple[float, float]:
    """(fraction of boxes some anchor can match, mean number of anchors matching a box) at ratio ``thr``."""
    anchors_px = np.asarray(anchors_px, dtype=np.float64).reshape(-1, 2)
    x = _ratio_metric(anchors_px, wh)
    best = x.max(1)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def _fitness(anchors: np.ndarray, wh: np.ndarray, thr: float) -> float:
    best = _ratio_metric(anchors, wh).max(1)
    return float((best * (best > 1 / thr)).mean())


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, restarts: int = 30) -> np.ndarray:
    """``k`` centres ``[k, 2]`` of ``points`` ``[n, 2]``: Lloyd's algorithm from ``restarts`` random starts,
    the lowest-distortion result kept (as scipy's ``kmeans(points, k, iter=30)`` that upstream uses)."""
    best, best_distortion = points[:k], np.inf
    for _ in range(restarts):
        centres = points[rng.choice(len(points), k, replace=False)]
        previous = np.inf
        for _ in range(100):
            d2 = ((points[:, None] - centres[None]) ** 2).sum(2)
            assign = d2.argmin(1)
            distortion = float(np.sqrt(d2[np.arange(len(points)), assign]).mean())
            sums = np.stack([np.bincount(assign, weights=points[:, d], minlength=k) for d in range(2)], 1)
            sizes = np.bincount(assign, minlength=k)[:, None]
            # A centre that lost all its points stays where it is (scipy drops it; we keep k).
            centres = np.where(sizes > 0, sums / np.maximum(sizes, 1), centres)
            if previous - distortion <= 1e-5:
                break
            previous = distortion
        if distortion < best_distortion:
            best, best_distortion = centres, distortion
    return best


def kmean_anchors(
    wh: np.ndarray,
    n: int = 9,
    img_size: int = 640,
    thr: float = 4.0,
    gen: int = 1000,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``n`` anchors ``[n, 2]`` (pixels, sorted by area): k-means on whitened sizes, then evolution."""
    rng = rng or np.random.default_rng(0)
    wh = wh[(wh >= 2.0).any(1)].astype(np.float64)  # upstream ignores boxes under 2 px
    if len(wh) < n:
        return np.sort(rng.uniform(2, img_size, size=(n, 2)), axis=0)
    sigma = wh.std(0)
    sigma[sigma == 0] = 1.0  # all boxes one width (or height): nothing to whiten
    anchors = _kmeans(wh / sigma, n, rng) * sigma
    best = _fitness(anchors, wh, thr)
    for _ in range(gen):
        mutation = np.ones_like(anchors)
        while (mutation == 1).all():  # mutate until something changed
            mask = rng.random(anchors.shape) < 0.9
            mutation = ((mask * rng.random() * rng.standard_normal(anchors.shape) * 0.1) + 1).clip(0.3, 3.0)
        candidate = (anchors * mutation).clip(min=2.0)
        fit = _fitness(candidate, wh, thr)
        if fit > best:
            best, anchors = fit, candidate
    anchors = anchors[np.argsort(anchors.prod(1))]
    bpr, aat = best_possible_recall(anchors, wh, thr)
    LOGGER.info(
        f"{PREFIX}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr; "
        f"n={n}, img_size={img_size}, anchors: " + ", ".join(f"{w:.0f},{h:.0f}" for w, h in anchors)
    )
    return anchors


def label_sizes(
    labels: list[np.ndarray] | np.ndarray, shapes: np.ndarray, img_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Box sizes ``[n, 2]`` in pixels at ``img_size`` (long side), with the 0.9-1.1 scale jitter as upstream.

    ``labels``: per image an array whose last two columns are the normalised w, h (``[k, 5]`` YOLO
    rows or ``[k, 2]``), with ``shapes`` ``[N, 2]`` the image (w, h); or one ``[n, 2]`` array with one
    shape row per box.
    """
    if isinstance(labels, np.ndarray):
        labels = list(labels[:, None])  # one "image" per box
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    scale = rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1))
    parts = [lb[:, -2:] * s for s, lb in zip(shapes * scale, labels, strict=True) if len(lb)]
    return np.concatenate(parts, 0) if parts else np.zeros((0, 2))


def check_anchors(
    labels: list[np.ndarray] | np.ndarray,
    shapes: np.ndarray,
    anchors_grid: torch.Tensor,
    stride: torch.Tensor,
    thr: float,
    img_size: int,
    rng: np.random.Generator,
) -> torch.Tensor | None:
    """New anchors ``[nl, na, 2]`` in grid units when the current ones fit badly and better ones exist."""
    wh = label_sizes(labels, np.asarray(shapes, dtype=np.float64), img_size, rng)
    if not len(wh):
        return None
    stride_np = stride.detach().cpu().numpy().reshape(-1, 1, 1)
    current = anchors_grid.detach().cpu().numpy() * stride_np
    bpr, aat = best_possible_recall(current, wh, thr)
    message = f"{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > GOOD_BPR:
        LOGGER.info(message + "Current anchors are a good fit to dataset")
        return None
    LOGGER.info(message + "Anchors are a poor fit to dataset, attempting to improve...")
    nl, na = anchors_grid.shape[:2]
    new = kmean_anchors(wh, n=nl * na, img_size=img_size, thr=thr, rng=rng)
    new_bpr, _ = best_possible_recall(new, wh, thr)
    if new_bpr <= bpr:
        LOGGER.info(f"{PREFIX}Existing anchors are better than new anchors, keeping the originals")
        return None
    new = new.reshape(nl, na, 2)
    if (stride_np[-1] - stride_np[0]).item() < 0:  # keep anchors ordered like the strides
        new = new[::-1].copy()
    LOGGER.info(f"{PREFIX}Done ({new_bpr:.3f} BPR); new anchors saved to the model")
    return torch.from_numpy(new / stride_np).float()
