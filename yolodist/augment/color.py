"""Colour jitter in HSV space, applied through lookup tables (fast, exact for uint8)."""

from __future__ import annotations

import cv2
import numpy as np


def augment_hsv(
    img: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5
) -> np.ndarray:
    """Scale hue, saturation and value of a BGR uint8 image by random factors in 1 +/- gain, in place.

    Returns ``img`` (the same array) for convenience. Gains of 0 leave the image untouched.
    """
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV's 8-bit hue wraps at 180
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    # One 3-channel table (channel c through table c): no split and merge of the planes.
    table = np.stack([lut_hue, lut_sat, lut_val], axis=-1).reshape(1, 256, 3)
    cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2BGR, dst=img)
    return img
