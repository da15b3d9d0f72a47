"""Class colours and labelled boxes, shared by the training plots and detect.py's annotated images.

One palette and one box style, so that a class has the same colour in val_batch*_pred.jpg as in the
images detect.py saves. cv2 is imported inside ``draw_box``: the plots import this module, and
importing them must stay free on ranks and runs that never plot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Upstream's 20-colour class palette (RGB), so class colours match its plots and detections.
_PALETTE_HEX = (
    "FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
    "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7",
)  # fmt: skip
_PALETTE_RGB = tuple((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in _PALETTE_HEX)


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Colour of class ``i`` from a fixed 20-colour palette (cycled); RGB, or BGR for OpenCV images."""
    r, g, b = _PALETTE_RGB[int(i) % len(_PALETTE_RGB)]
    return (b, g, r) if bgr else (r, g, b)


def text_color(background: tuple[int, int, int], bgr: bool = False) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (RGB, or BGR with ``bgr``)."""
    r, g, b = background[::-1] if bgr else background
    # Perceived luminance (Rec. 601 weights): several palette colours (yellows, greens) are too light
    # for white text.
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 160 else (255, 255, 255)


def draw_box(
    image: np.ndarray,
    xyxy: Sequence[float],
    label: str | None = "",
    color: tuple[int, int, int] = (128, 128, 128),
    line_width: int = 2,
    font_scale: float | None = None,
    bgr: bool = False,
) -> None:
    """Draw a box with its label on a filled tag above it (inside when there is no room), in place.

    ``image`` is ``[H, W, 3]`` uint8, RGB (or BGR with ``bgr``) like ``color``; the text is black or
    white, whichever reads better on ``color``. ``font_scale`` defaults to ``line_width / 3``.
    """
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(image, p1, p2, color, thickness=max(line_width, 1), lineType=cv2.LINE_AA)
    if not label:
        return
    font_scale = font_scale if font_scale is not None else line_width / 3
    thickness = max(line_width - 1, 1)
    (text_w, text_h), _ = cv2.getTextSize(label, font, font_scale, thickness)
    pad = max(line_width, 2)
    above = p1[1] - text_h - 2 * pad >= 0
    tag_y = p1[1] - text_h - 2 * pad if above else p1[1]
    cv2.rectangle(image, (p1[0], tag_y), (p1[0] + text_w + pad, tag_y + text_h + 2 * pad), color, -1, cv2.LINE_AA)
    origin = (p1[0] + pad // 2, tag_y + text_h + pad)
    cv2.putText(image, label, origin, font, font_scale, text_color(color, bgr), thickness, cv2.LINE_AA)
