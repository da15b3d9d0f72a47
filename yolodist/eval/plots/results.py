"""results.png: the loss and metric columns of results.csv against epoch, with a smoothed trend."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from yolodist.eval.plots.common import new_figure, save_figure

RESULTS_PANELS = (
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
)


def read_results_csv(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a results.csv by stripped header name; cells that are not numbers become NaN."""
    with open(csv_path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        return {}
    header = [name.strip() for name in rows[0]]
    columns: dict[str, list[float]] = {name: [] for name in header}
    for row in rows[1:]:
        row = (row + [""] * len(header))[: len(header)]  # a short (truncated) last row still plots
        for name, cell in zip(header, row, strict=True):
            try:
                columns[name].append(float(cell))
            except ValueError:
                columns[name].append(math.nan)
    return {name: np.array(values, dtype=float) for name, values in columns.items()}


def gaussian_smooth(y: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Gaussian smoothing ``[n] -> [n]`` with mirrored edges, for the dotted trend line of results.png."""
    y = np.asarray(y, dtype=float)
    if y.size < 2 or sigma <= 0:
        return y.copy()
    radius = int(4 * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(y, radius, mode="symmetric")  # mirror: the ends are not dragged towards zero
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def plot_results(csv_path: str | Path, path: str | Path | None = None) -> Path:
    """results.png (beside ``csv_path`` unless ``path`` is given): the 10 loss/metric columns against epoch."""
    csv_path = Path(csv_path)
    columns = read_results_csv(csv_path)
    n = max((len(v) for v in columns.values()), default=0)
    x = columns.get("epoch", np.arange(n, dtype=float))
    fig, axes = new_figure((12, 6), 2, 5)
    for ax, name in zip(axes.ravel(), RESULTS_PANELS, strict=True):
        ax.set_title(name, fontsize=12)
        y = columns.get(name)
        if y is None:
            continue  # a missing column leaves its panel empty rather than failing the figure
        ax.plot(x, y, marker=".", label=csv_path.stem, linewidth=2, markersize=8)
        finite = np.isfinite(x) & np.isfinite(y)
        ax.plot(x[finite], gaussian_smooth(y[finite]), ":", label="smooth", linewidth=2)
    axes[0, 1].legend()
    return save_figure(fig, path if path is not None else csv_path.with_name("results.png"), dpi=200)
