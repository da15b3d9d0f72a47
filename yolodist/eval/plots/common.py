"""How a plot reaches the disk (a Figure on its own Agg canvas, an atomic write) and ``safe_plot``.

The reasons for both are in the package docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


def safe_plot(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``, or None with a one-line warning if it raises: a plot must never stop a run."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        name = getattr(fn, "__name__", repr(fn))
        message = " ".join(str(e).split())  # one line even when the error text has several
        LOGGER.warning(f"Plotting skipped: {name} failed ({type(e).__name__}: {message})")
        return None


def write_image(path: Path, image_rgb: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Encode an RGB ``[H, W, 3]`` uint8 image by ``path``'s suffix and write it atomically."""
    import cv2

    from yolodist.utils.io import atomic_write_bytes

    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(image_rgb[..., ::-1]), params)
    if not ok:
        raise ValueError(f"could not encode {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encoded.tobytes())
    return path


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    """A Figure with its own Agg canvas (no pyplot) and its axes (an array when there are several)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=True)


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Render ``fig`` at ``dpi`` on its Agg canvas and write it atomically, encoded by ``path``'s suffix.

    OpenCV encodes both PNG and JPEG, so figures and mosaics share one writer and JPEG needs no Pillow.
    """
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return write_image(Path(path), rgba[..., :3])


def label_of(names: Sequence[str], i: int) -> str:
    """Class ``i``'s name, or its number when ``names`` does not reach it."""
    return str(names[i]) if i < len(names) else str(i)
