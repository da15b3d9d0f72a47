"""evolve.png: for every evolved hyperparameter, its value against fitness, one dot per generation.

Built like yolodist.eval.plots: a Figure on its own Agg canvas (no pyplot state), imported lazily,
written atomically; callers wrap it in ``safe_plot`` because a plot never stops an evolution.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from yolodist.eval.metrics import fitness
from yolodist.evolve.space import NAMES, RESULTS
from yolodist.utils.io import atomic_write_bytes

COLS = 5


def plot_evolve(history: np.ndarray, path: Path) -> Path:
    """One small scatter per gene (value on x, fitness on y, colour = how recent); the best is a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = fitness(history[:, :4])
    best = int(np.argmax(scores))
    rows = math.ceil(len(NAMES) / COLS)
    fig = Figure(figsize=(2.6 * COLS, 2.2 * rows), layout="tight")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, COLS, squeeze=False).ravel()
    order = np.arange(len(history))
    for ax, (i, name) in zip(axes, enumerate(NAMES), strict=False):
        values = history[:, RESULTS + i]
        ax.scatter(values, scores, c=order, cmap="viridis", s=12, alpha=0.8, edgecolors="none")
        ax.plot(values[best], scores[best], "k*", markersize=12)
        ax.set_title(f"{name} = {values[best]:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(NAMES) :]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path
