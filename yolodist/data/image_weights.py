"""``--image-weights``: how often each training image is drawn, from class frequencies and per-class mAP.

Upstream's recipe: a class weighs the inverse of its share of the dataset's boxes (normalised to sum
1), times ``(1 - mAP@0.5:0.95 of that class)**2`` from the last validation; an image weighs the sum
of its boxes' class weights. Rare and badly detected classes are drawn more often; an image without
boxes weighs 0 and is not drawn while any image has boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_counts(labels: Sequence[np.ndarray], nc: int) -> np.ndarray:
    """Boxes per class over the dataset (``[nc]``); classes at or above ``nc`` are ignored."""
    classes = [lb[:, 0].astype(np.int64) for lb in labels if len(lb)]
    if not classes:
        return np.zeros(nc, dtype=np.int64)
    every = np.concatenate(classes)
    return np.bincount(every[(every >= 0) & (every < nc)], minlength=nc)


def class_weights(labels: Sequence[np.ndarray], nc: int) -> np.ndarray:
    """Inverse class frequency, normalised to sum 1; a class without boxes counts as having one."""
    counts = class_counts(labels, nc).astype(np.float64)
    counts[counts == 0] = 1.0  # an absent class would otherwise weigh infinitely much
    inverse = 1.0 / counts
    return inverse / inverse.sum()


def image_weights(labels: Sequence[np.ndarray], nc: int, weights_per_class: np.ndarray) -> np.ndarray:
    """Per image, the sum of its boxes' class weights (``[len(labels)]``)."""
    out = np.zeros(len(labels), dtype=np.float64)
    for i, lb in enumerate(labels):
        if len(lb):
            cls = lb[:, 0].astype(np.int64)
            cls = cls[(cls >= 0) & (cls < nc)]
            out[i] = weights_per_class[cls].sum()
    return out


def epoch_image_weights(labels: Sequence[np.ndarray], nc: int, maps: np.ndarray) -> np.ndarray:
    """The draw weights of an epoch, given each class's mAP@0.5:0.95 at the last validation (zeros before one).

    Falls back to equal weights when no image has a positive weight (a dataset without boxes, or
    every class at mAP 1), where the recipe has nothing to prefer.
    """
    per_class = class_weights(labels, nc) * (1.0 - np.asarray(maps, dtype=np.float64)) ** 2
    weights = image_weights(labels, nc, per_class)
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        return np.ones(len(labels), dtype=np.float64)
    return weights
