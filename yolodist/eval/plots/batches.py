"""The ``*_batch*.jpg`` mosaics: a batch's images in a grid with their labels or predictions drawn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolodist.eval.plots.common import label_of, write_image
from yolodist.utils.draw import colors, draw_box

_PRED_CONF_THRES = 0.25  # predictions below this are not drawn in the *_pred.jpg mosaics (as upstream)


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a sequence or a torch tensor (any device), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()  # float16/bfloat16 have no (or no exact) NumPy counterpart
        return x.numpy()
    return np.asarray(x)


def _uint8_batch(images: Any) -> np.ndarray:
    """``[B, 3, H, W]`` (or one ``[3, H, W]``) uint8, from uint8 or from floats in 0-1 (or 0-255)."""
    images = _to_numpy(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8:
        images = images * 255 if images.size and images.max() <= 1 else images
        images = np.clip(images, 0, 255).astype(np.uint8)
    return images


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
        label = label_of(names, cls) if not has_conf else f"{label_of(names, cls)} {row[6]:.1f}"
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

    images = _uint8_batch(images)[:max_subplots]
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
    return write_image(Path(path), mosaic)
