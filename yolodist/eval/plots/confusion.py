"""confusion_matrix.png: predicted against true class, background last."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolodist.eval.plots.common import new_figure, save_figure


def normalize_confusion(matrix: np.ndarray, normalize: bool = True, hide_below: float = 0.005) -> np.ndarray:
    """The values confusion_matrix.png shows: ``[n, n]`` float, NaN where a cell is left blank.

    With ``normalize`` each column (one true class, background last) is divided by its sum, so it
    reads "of the labels of this class, which fraction was predicted as each row". Cells below
    ``hide_below`` become NaN so that near-empty cells stay blank instead of printing 0.00.
    """
    array = np.asarray(matrix, dtype=float)
    if normalize:
        array = array / (array.sum(0, keepdims=True) + 1e-9)  # eps: a class with no labels gives 0, not NaN
    else:
        array = array.copy()
    array[array < hide_below] = np.nan
    return array


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: str | Path, normalize: bool = True) -> Path:
    """confusion_matrix.png from ``matrix[predicted, true]`` ``[nc + 1, nc + 1]``, background last."""
    from matplotlib import colormaps

    array = normalize_confusion(matrix, normalize)
    n = array.shape[0]
    nc = n - 1
    fig, ax = new_figure((12, 9))
    cmap = colormaps["Blues"].with_extremes(bad="white")
    finite = np.isfinite(array)
    vmax = float(array[finite].max()) if finite.any() else 1.0
    image = ax.imshow(array, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax)
    fontsize = 10 if nc < 50 else 8
    if 0 < nc < 99 and len(names) == nc:
        ticklabels = [*map(str, names), "background"]
        ax.set_xticks(range(n), ticklabels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), ticklabels, fontsize=fontsize)
    if nc < 30:
        for row, col in zip(*np.nonzero(finite), strict=True):
            value = array[row, col]
            # Dark cells get white text, as a heat-map annotator would pick for contrast.
            colour = "white" if value > 0.6 * vmax else "black"
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    return save_figure(fig, path, dpi=250)
