"""Colour jitter in HSV space, applied through lookup tables (fast, exact for uint8).

The jitter is drawn as one (256, 3) table (``hsv_table``) and applied apart (``apply_hsv_table``), so
that it can run where it is cheapest: in the loader, or after batching on the training device
(``color_batch``), with the same table and the same result.
"""

from __future__ import annotations

import cv2
import numpy as np

_LEVELS = np.arange(256, dtype=np.float64)


def hsv_table(rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray | None:
    """A random jitter: hue, saturation and value scaled by factors in 1 +/- gain, as a uint8 ``[256, 3]``
    table (column c maps channel c of an 8-bit HSV image). None, with nothing drawn, when every gain is 0."""
    if not (hgain or sgain or vgain):
        return None
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    scaled = r[:, None] * _LEVELS  # [3, 256]: each factor times every level (rows: fast in-place ufuncs)
    np.remainder(scaled[0], 180, out=scaled[0])  # OpenCV's 8-bit hue wraps at 180
    np.maximum(scaled[1:], 0, out=scaled[1:])
    np.minimum(scaled[1:], 255, out=scaled[1:])
    return np.ascontiguousarray(scaled.T).astype(np.uint8)


def apply_hsv_table(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Jitter a BGR uint8 image with a ``hsv_table``, in place; returns ``img``."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    # One 3-channel table (channel c through table c): no split and merge of the planes.
    cv2.cvtColor(cv2.LUT(hsv, table.reshape(1, 256, 3)), cv2.COLOR_HSV2BGR, dst=img)
    return img


def augment_hsv(
    img: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5
) -> np.ndarray:
    """Scale hue, saturation and value of a BGR uint8 image by random factors in 1 +/- gain, in place.

    Returns ``img`` (the same array) for convenience. Gains of 0 leave the image untouched.
    """
    table = hsv_table(rng, hgain, sgain, vgain)
    return img if table is None else apply_hsv_table(img, table)
