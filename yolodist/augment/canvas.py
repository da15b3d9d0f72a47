"""An image made of pieces pasted on a padding colour, painted only where a transform reads it.

A mosaic is four images on a canvas twice the output's size, and the perspective warp after it reads
about a third of that canvas (at upstream's default scale range). Filling the whole canvas and
copying every tile into it is then mostly wasted memory traffic; ``TiledImage`` keeps the pieces and
paints a window on request, with the same pixels the full canvas has there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

PAD_COLOR = (114, 114, 114)


@dataclass
class TiledImage:
    """``shape`` (h, w, channels) of PAD_COLOR with ``pieces`` (top, left, HxWxC array) pasted in order."""

    shape: tuple[int, int, int]
    pieces: list[tuple[int, int, np.ndarray]] = field(default_factory=list)

    def paste(self, top: int, left: int, pixels: np.ndarray) -> None:
        """Put ``pixels`` at (top, left); later pieces cover earlier ones where they overlap."""
        self.pieces.append((top, left, pixels))

    def window(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """The ``height`` x ``width`` region at (x0, y0), which may reach outside the image (padding there)."""
        out = np.full((height, width, self.shape[2]), PAD_COLOR[0], np.uint8)
        for top, left, pixels in self.pieces:
            h, w = pixels.shape[:2]
            ya, yb = max(top, y0), min(top + h, y0 + height)
            xa, xb = max(left, x0), min(left + w, x0 + width)
            if ya < yb and xa < xb:
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = pixels[ya - top : yb - top, xa - left : xb - left]
        return out

    def full(self) -> np.ndarray:
        """The whole image as one array."""
        return self.window(0, 0, self.shape[1], self.shape[0])


def window(img: np.ndarray | TiledImage, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """``TiledImage.window`` for a plain array too: the region at (x0, y0), padded outside the image."""
    if isinstance(img, TiledImage):
        return img.window(x0, y0, width, height)
    h, w = img.shape[:2]
    xa, xb = min(max(x0, 0), w), min(max(x0 + width, 0), w)
    ya, yb = min(max(y0, 0), h), min(max(y0 + height, 0), h)
    if xa == xb or ya == yb:  # none of the image is in it
        return np.full((height, width, img.shape[2]), PAD_COLOR[0], img.dtype)
    return cv2.copyMakeBorder(
        img[ya:yb, xa:xb], ya - y0, y0 + height - yb, xa - x0, x0 + width - xb, cv2.BORDER_CONSTANT, value=PAD_COLOR
    )


def as_array(img: np.ndarray | TiledImage) -> np.ndarray:
    """The whole image as an array (a ``TiledImage`` is painted in full)."""
    return img.full() if isinstance(img, TiledImage) else img
