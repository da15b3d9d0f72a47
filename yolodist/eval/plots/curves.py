"""PR_curve.png and the P/R/F1-against-confidence curves, one line per class and their mean."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolodist.eval.plots.common import label_of, new_figure, save_figure

_LEGEND_MAX_CLASSES = 21  # above this many classes, per-class curves are grey and unlabelled


def plot_pr_curve(
    px: np.ndarray, py: Sequence[np.ndarray], ap50: np.ndarray, names: Sequence[str], path: str | Path
) -> Path:
    """PR_curve.png: precision ``py[k]`` (each ``[1000]``) against recall ``px`` ``[1000]``, one per class.

    ``ap50`` ``[k]`` (or ``[k, t]``, column 0 used) labels each curve; ``names`` ``[k]`` name them.
    """
    px = np.asarray(px, dtype=float)
    curves = np.stack([np.asarray(y, dtype=float) for y in py], 1) if len(py) else np.zeros((len(px), 0))
    ap50 = np.asarray(ap50, dtype=float)
    ap50 = ap50[:, 0] if ap50.ndim == 2 else ap50.reshape(-1)
    k = curves.shape[1]
    fig, ax = new_figure((9, 6))
    if 0 < k < _LEGEND_MAX_CLASSES:
        for i in range(k):
            ax.plot(px, curves[:, i], linewidth=1, label=f"{label_of(names, i)} {ap50[i]:.3f}")
    elif k:
        ax.plot(px, curves, linewidth=1, color="grey")
    mean = curves.mean(1) if k else np.zeros_like(px)
    map50 = float(ap50.mean()) if ap50.size else 0.0
    ax.plot(px, mean, linewidth=3, color="blue", label=f"all classes {map50:.3f} mAP@0.5")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title("Precision-Recall Curve")
    return save_figure(fig, path, dpi=250)


def plot_metric_curve(
    px: np.ndarray, curves: np.ndarray, names: Sequence[str], path: str | Path, ylabel: str = "Metric"
) -> Path:
    """P_curve.png / R_curve.png / F1_curve.png: ``curves`` ``[k, 1000]`` against confidence ``px`` ``[1000]``.

    The thick mean curve is smoothed like the one validation picks its confidence from, and its
    label gives that curve's maximum and where it is.
    """
    from yolodist.eval.metrics import smooth

    px = np.asarray(px, dtype=float)
    curves = np.asarray(curves, dtype=float).reshape(-1, len(px))
    k = curves.shape[0]
    fig, ax = new_figure((9, 6))
    if 0 < k < _LEGEND_MAX_CLASSES:
        for i in range(k):
            ax.plot(px, curves[i], linewidth=1, label=label_of(names, i))
    elif k:
        ax.plot(px, curves.T, linewidth=1, color="grey")
    mean = smooth(curves.mean(0), 0.05) if k else np.zeros_like(px)
    best = int(mean.argmax())
    ax.plot(px, mean, linewidth=3, color="blue", label=f"all classes {mean[best]:.2f} at {px[best]:.3f}")
    ax.set_xlabel("Confidence")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title(f"{ylabel}-Confidence Curve")
    return save_figure(fig, path, dpi=250)
