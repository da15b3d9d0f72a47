"""Drawing detections on images and cutting them out, for ``detect.py``'s saved results.

Images are HxWx3 uint8 BGR; boxes are corner boxes (x1, y1, x2, y2) in the image's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from yolodist.utils.draw import colors, draw_box
from yolodist.utils.io import atomic_write_bytes
from yolodist.utils.paths import increment_path

CROP_GAIN = 1.02  # crops are a little larger than the box, as upstream's save_one_box
CROP_PAD = 10  # pixels added to the crop's width and height


def default_line_width(shape: Sequence[int]) -> int:
    """Box line width for an image of ``shape`` (h, w, ...): 0.3% of the mean side, at least 2 px."""
    return max(round((shape[0] + shape[1]) / 2 * 0.003), 2)


def box_label(name: str, conf: float, hide_labels: bool = False, hide_conf: bool = False) -> str | None:
    """Upstream's label text: ``"name 0.87"``, ``"name"`` with ``hide_conf``, nothing with ``hide_labels``."""
    if hide_labels:
        return None
    return name if hide_conf else f"{name} {conf:.2f}"


def annotate(
    image: np.ndarray,
    detections: torch.Tensor | np.ndarray,
    names: Sequence[str],
    line_width: int | None = None,
    hide_labels: bool = False,
    hide_conf: bool = False,
) -> np.ndarray:
    """A copy of ``image`` with ``detections`` ``[n, 6]`` (xyxy, conf, cls) drawn, the most confident on top."""
    out = image.copy()
    width = line_width or default_line_width(image.shape)
    rows = detections.tolist()
    # Detections arrive most confident first; drawing in reverse leaves those on top where boxes overlap.
    for x1, y1, x2, y2, conf, cls in reversed(rows):
        c = int(cls)
        name = names[c] if 0 <= c < len(names) else str(c)
        label = box_label(name, conf, hide_labels, hide_conf)
        draw_box(out, (x1, y1, x2, y2), label, colors(c, bgr=True), width, bgr=True)
    return out


def crop_box(
    image: np.ndarray, xyxy: Sequence[float], gain: float = CROP_GAIN, pad: int = CROP_PAD, square: bool = False
) -> np.ndarray:
    """The region of ``image`` under box ``xyxy``, grown by ``gain`` and ``pad`` pixels, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if square:
        w = h = max(w, h)
    w, h = w * gain + pad, h * gain + pad
    height, width = image.shape[:2]
    left = min(max(int(cx - w / 2), 0), width)
    top = min(max(int(cy - h / 2), 0), height)
    right = min(max(int(cx + w / 2), 0), width)
    bottom = min(max(int(cy + h / 2), 0), height)
    return image[top:bottom, left:right]


def save_crop(crop: np.ndarray, file: str | Path) -> Path | None:
    """Write ``crop`` as a JPEG at ``file`` (``stem2.jpg``, ``stem3.jpg`` ... when taken); None if it is empty."""
    if crop.size == 0:
        return None
    file = Path(file).with_suffix(".jpg")
    file.parent.mkdir(parents=True, exist_ok=True)
    path = increment_path(file)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(crop), params)
    if not ok:
        return None
    atomic_write_bytes(path, encoded.tobytes())
    return path
