"""labels.jpg: a dataset's labels at a glance (instances per class, box shapes, positions, sizes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolodist.eval.plots.common import new_figure, save_figure
from yolodist.utils.draw import colors


def _saturation_level(counts: np.ndarray, pmax: float) -> float:
    """The count at which the colour scale saturates: the bins above it hold ``1 - pmax`` of all counts.

    Without this a single crowded bin (e.g. many boxes centred in the image) makes every other bin white.
    """
    values = np.sort(counts.ravel())[::-1]
    total = values.sum()
    if total <= 0:
        return 1.0
    index = int(np.searchsorted(np.cumsum(values) / total, 1 - pmax))
    return float(max(values[min(index, len(values) - 1)], 1))


def _hist2d(ax: Any, x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, bins: int = 50) -> None:
    counts, x_edges, y_edges = np.histogram2d(x, y, bins=bins)
    masked = np.ma.masked_equal(counts.T, 0)  # empty bins stay white
    ax.pcolormesh(x_edges, y_edges, masked, cmap="Blues", vmin=0, vmax=_saturation_level(counts, 0.9))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _boxes_canvas(labels: np.ndarray, size: int = 1000, max_boxes: int = 500) -> np.ndarray:
    """Up to ``max_boxes`` label boxes drawn centred on a white square: the spread of box shapes."""
    import cv2

    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    subset = labels[:max_boxes]
    wh = subset[:, 3:5]
    corners = np.concatenate((0.5 - wh / 2, 0.5 + wh / 2), 1) * size
    for cls, (x1, y1, x2, y2) in zip(subset[:, 0].astype(int), corners.round().astype(int), strict=True):
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colors(cls), 1)
    return canvas


def plot_labels(labels: np.ndarray, names: Sequence[str], path: str | Path) -> Path:
    """labels.jpg from dataset labels ``[n, 5]`` (class, cx, cy, w, h normalised).

    Four panels: instances per class, box shapes drawn centred, centre positions, widths vs heights.
    """
    labels = np.asarray(labels, dtype=float).reshape(-1, 5)
    cls = labels[:, 0].astype(int)
    nc = max(int(cls.max()) + 1 if len(cls) else 0, len(names), 1)
    fig, axes = new_figure((8, 8), 2, 2)
    ax_hist, ax_boxes, ax_xy, ax_wh = axes.ravel()

    counts = np.bincount(cls, minlength=nc)
    ax_hist.bar(range(nc), counts, width=0.8, color=[tuple(v / 255 for v in colors(i)) for i in range(nc)])
    ax_hist.set_ylabel("instances")
    if 0 < len(names) < 30:
        ax_hist.set_xticks(range(len(names)), [str(n) for n in names], rotation=90, fontsize=10)
    else:
        ax_hist.set_xlabel("classes")

    ax_boxes.imshow(_boxes_canvas(labels))
    ax_boxes.axis("off")
    _hist2d(ax_xy, labels[:, 1], labels[:, 2], "x", "y")
    _hist2d(ax_wh, labels[:, 3], labels[:, 4], "width", "height")
    for ax in axes.ravel():
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
    return save_figure(fig, path, dpi=200)
