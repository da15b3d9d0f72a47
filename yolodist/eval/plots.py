"""The plots upstream YOLOv5 writes, as plain functions on NumPy arrays.

PR_curve.png, P/R/F1_curve.png, confusion_matrix.png, the ``*_batch*.jpg`` mosaics, results.png and
labels.jpg, with upstream's file names and look.

Why it is built this way:
- matplotlib, cv2 and the atomic writer are imported inside the functions, so importing this module
  costs nothing on ranks and runs that never plot (``--noplots``).
- Figures are ``matplotlib.figure.Figure`` objects rendered by their own Agg canvas, never pyplot:
  pyplot keeps a global figure registry and a process-wide backend, which would leak memory over a
  long run and interfere with anyone else in the process (a notebook, another thread).
- Every file goes through a temp file and ``os.replace``, so a kill mid-write leaves the previous plot.
- A plot is never worth a failed run: callers wrap calls in ``safe_plot``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from yolodist.utils.draw import colors, draw_box

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

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

_PRED_CONF_THRES = 0.25  # predictions below this are not drawn in the *_pred.jpg mosaics (as upstream)
_LEGEND_MAX_CLASSES = 21  # above this many classes, per-class curves are grey and unlabelled


def safe_plot(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``, or None with a one-line warning if it raises: a plot must never stop a run."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        name = getattr(fn, "__name__", repr(fn))
        message = " ".join(str(e).split())  # one line even when the error text has several
        LOGGER.warning(f"Plotting skipped: {name} failed ({type(e).__name__}: {message})")
        return None


# --------------------------------------------------------------------------------------------- writing


def _write_image(path: Path, image_rgb: np.ndarray, jpeg_quality: int = 95) -> Path:
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


def _new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    """A Figure with its own Agg canvas (no pyplot) and its axes (an array when there are several)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=True)


def _save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Render ``fig`` at ``dpi`` on its Agg canvas and write it atomically, encoded by ``path``'s suffix.

    OpenCV encodes both PNG and JPEG, so figures and mosaics share one writer and JPEG needs no Pillow.
    """
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return _write_image(Path(path), rgba[..., :3])


def _label(names: Sequence[str], i: int) -> str:
    return str(names[i]) if i < len(names) else str(i)


# --------------------------------------------------------------------------------------------- curves


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
    fig, ax = _new_figure((9, 6))
    if 0 < k < _LEGEND_MAX_CLASSES:
        for i in range(k):
            ax.plot(px, curves[:, i], linewidth=1, label=f"{_label(names, i)} {ap50[i]:.3f}")
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
    return _save_figure(fig, path, dpi=250)


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
    fig, ax = _new_figure((9, 6))
    if 0 < k < _LEGEND_MAX_CLASSES:
        for i in range(k):
            ax.plot(px, curves[i], linewidth=1, label=_label(names, i))
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
    return _save_figure(fig, path, dpi=250)


# --------------------------------------------------------------------------------------------- confusion matrix


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
    fig, ax = _new_figure((12, 9))
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
    return _save_figure(fig, path, dpi=250)


# --------------------------------------------------------------------------------------------- image mosaics


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a sequence or a torch tensor (any device), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()  # float16/bfloat16 have no (or no exact) NumPy counterpart
        return x.numpy()
    return np.asarray(x)


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate((boxes[:, 0:2] - half, boxes[:, 0:2] + half), 1)


def _mosaic_tiles(images: np.ndarray, max_size: int) -> tuple[np.ndarray, int, int, int, float]:
    """White mosaic with the images placed column by column; returns (mosaic, tiles per side, tile h, tile w, scale)."""
    import cv2

    bs, _, h, w = images.shape
    ns = math.ceil(bs**0.5)
    scale = max_size / ns / max(h, w)
    if scale < 1:
        tile_h, tile_w = math.ceil(scale * h), math.ceil(scale * w)
    else:
        tile_h, tile_w, scale = h, w, 1.0
    mosaic = np.full((ns * tile_h, ns * tile_w, 3), 255, dtype=np.uint8)
    for i in range(bs):
        x, y = tile_w * (i // ns), tile_h * (i % ns)  # fill the first column top to bottom, then the next
        tile = np.ascontiguousarray(images[i].transpose(1, 2, 0))
        if scale < 1:
            tile = cv2.resize(tile, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
        mosaic[y : y + tile_h, x : x + tile_w] = tile
    return mosaic, ns, tile_h, tile_w, scale


def _draw_targets(
    mosaic: np.ndarray, boxes: np.ndarray, rows: np.ndarray, names: Sequence[str], line_width: int, font_scale: float
) -> None:
    """Draw one tile's boxes ``[n, 4]`` (mosaic pixels); ``rows`` ``[n, 6 or 7]`` give class and conf."""
    has_conf = rows.shape[1] >= 7
    for box, row in zip(boxes, rows, strict=True):
        cls = int(row[1])
        if has_conf and row[6] <= _PRED_CONF_THRES:
            continue
        label = _label(names, cls) if not has_conf else f"{_label(names, cls)} {row[6]:.1f}"
        draw_box(mosaic, box, label, colors(cls), line_width, font_scale)


def plot_images(
    images: Any,
    targets: Any,
    paths: Sequence[str] | None,
    names: Sequence[str],
    path: str | Path,
    max_size: int = 1920,
    max_subplots: int = 16,
) -> Path:
    """A batch mosaic JPEG (train_batch0.jpg, val_batch0_labels.jpg, val_batch0_pred.jpg).

    ``images`` ``[B, 3, H, W]`` RGB, uint8 (or float in 0-1), NumPy or torch. ``targets`` ``[n, 6]``
    (batch index, class, cx, cy, w, h) for labels or ``[n, 7]`` (..., conf) for predictions; boxes in
    pixels of the ``H x W`` input, or normalised 0-1 when every coordinate is <= 1.01. Predictions
    with conf <= 0.25 are not drawn. At most ``max_subplots`` images, the mosaic's long side at most
    about ``max_size``.
    """
    import cv2

    images = _to_numpy(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8:
        images = images * 255 if images.size and images.max() <= 1 else images
        images = np.clip(images, 0, 255).astype(np.uint8)
    images = images[:max_subplots]
    if not len(images):
        raise ValueError("plot_images needs at least one image")
    targets = np.zeros((0, 6)) if targets is None else _to_numpy(targets).astype(float)
    if targets.size == 0:
        targets = np.zeros((0, 6))
    mosaic, ns, tile_h, tile_w, scale = _mosaic_tiles(images, max_size)

    font_px = int((tile_h + tile_w) * ns * 0.01)  # upstream's font size rule, so labels scale with the mosaic
    line_width = max(round(font_px / 10), 1)
    font_scale = max(font_px / 40, 0.3)
    text_h = cv2.getTextSize("A", cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)[0][1]
    # One decision for the whole batch: a per-image test would take tiny pixel boxes for normalised ones.
    normalised = bool(len(targets)) and targets[:, 2:6].max() <= 1.01
    for i in range(len(images)):
        x, y = tile_w * (i // ns), tile_h * (i % ns)
        cv2.rectangle(mosaic, (x, y), (x + tile_w, y + tile_h), (255, 255, 255), 2)
        if paths is not None and i < len(paths):
            name = Path(paths[i]).name[:40]
            origin = (x + 5, y + 5 + text_h)
            font = cv2.FONT_HERSHEY_SIMPLEX
            cv2.putText(mosaic, name, origin, font, font_scale, (220, 220, 220), max(line_width - 1, 1), cv2.LINE_AA)
        rows = targets[targets[:, 0] == i]
        boxes = _xywh_to_xyxy(rows[:, 2:6])
        boxes *= [tile_w, tile_h, tile_w, tile_h] if normalised else scale
        boxes += [x, y, x, y]
        _draw_targets(mosaic, boxes, rows, names, line_width, font_scale)
    return _write_image(Path(path), mosaic)


# --------------------------------------------------------------------------------------------- results.png


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
    fig, axes = _new_figure((12, 6), 2, 5)
    for ax, name in zip(axes.ravel(), RESULTS_PANELS, strict=True):
        ax.set_title(name, fontsize=12)
        y = columns.get(name)
        if y is None:
            continue  # a missing column leaves its panel empty rather than failing the figure
        ax.plot(x, y, marker=".", label=csv_path.stem, linewidth=2, markersize=8)
        finite = np.isfinite(x) & np.isfinite(y)
        ax.plot(x[finite], gaussian_smooth(y[finite]), ":", label="smooth", linewidth=2)
    axes[0, 1].legend()
    return _save_figure(fig, path if path is not None else csv_path.with_name("results.png"), dpi=200)


# --------------------------------------------------------------------------------------------- labels.jpg


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
    fig, axes = _new_figure((8, 8), 2, 2)
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
    return _save_figure(fig, path, dpi=200)
