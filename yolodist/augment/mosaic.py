"""Multi-image augmentations on already-loaded samples: 4-image mosaic and mixup."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from yolodist.augment.canvas import TiledImage
from yolodist.ops.boxes import xywhn2xyxy

# load_fn(i) -> (image HxWx3 uint8 BGR resized so the long side is img_size, labels [n, 5] cls+xywhn, ...)
LoadFn = Callable[[int], Sequence]


def mosaic4(
    load_fn: LoadFn, indices: Sequence[int], img_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tile four samples around a random centre on a ``2*img_size`` square canvas.

    ``indices`` are placed top-left, top-right, bottom-left, bottom-right (shuffle them beforehand).
    Returns (canvas ``[2s, 2s, 3]`` uint8, labels ``[n, 5]`` (cls, x1, y1, x2, y2) in canvas pixels,
    clipped to the canvas). The caller crops it back to ``img_size`` with ``random_perspective`` and
    ``border=(-s // 2, -s // 2)``.
    """
    canvas, labels = mosaic4_tiled(load_fn, indices, img_size, rng)
    return canvas.full(), labels


def mosaic4_tiled(
    load_fn: LoadFn, indices: Sequence[int], img_size: int, rng: np.random.Generator
) -> tuple[TiledImage, np.ndarray]:
    """``mosaic4`` with the canvas left unpainted: a ``TiledImage`` that paints the part a warp reads."""
    s = img_size
    yc, xc = (int(rng.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))  # centre in the middle half
    canvas = TiledImage((2 * s, 2 * s, 3))
    all_labels, frames = [], []  # frames: (w, h, padw, padh) of each tile, one row per label
    for pos, index in enumerate(indices[:4]):
        loaded = load_fn(index)
        img, labels = loaded[0], loaded[1]
        h, w = img.shape[:2]
        # (x1a, y1a, x2a, y2a): region on the canvas; the tile is anchored at the centre point.
        if pos == 0:
            xa1, ya1, xa2, ya2 = max(xc - w, 0), max(yc - h, 0), xc, yc
        elif pos == 1:
            xa1, ya1, xa2, ya2 = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
        elif pos == 2:
            xa1, ya1, xa2, ya2 = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
        else:
            xa1, ya1, xa2, ya2 = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
        # (x1b, y1b): the matching corner inside the tile; left/top tiles show their right/bottom part.
        xb1 = w - (xa2 - xa1) if pos in (0, 2) else 0
        yb1 = h - (ya2 - ya1) if pos in (0, 1) else 0
        canvas.paste(ya1, xa1, img[yb1 : yb1 + (ya2 - ya1), xb1 : xb1 + (xa2 - xa1)])
        lb = np.asarray(labels, dtype=np.float32).reshape(-1, 5)
        all_labels.append(lb)
        frames.append(np.broadcast_to(np.array([w, h, xa1 - xb1, ya1 - yb1], np.float32), (len(lb), 4)))
    if not all_labels:
        return canvas, np.zeros((0, 5), np.float32)
    out = np.concatenate(all_labels, 0)  # a new array: the loaded labels are never written
    if len(out):
        # All tiles' boxes at once, each in its own tile's frame (float32 throughout, as one by one).
        w, h, padw, padh = np.concatenate(frames, 0).T
        out[:, 1:] = xywhn2xyxy(out[:, 1:], w, h, padw, padh)
    out[:, 1:] = out[:, 1:].clip(0, 2 * s)
    return canvas, out


def mixup(
    img1: np.ndarray, labels1: np.ndarray, img2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio (about 0.5) and keep both label sets."""
    r = rng.beta(32.0, 32.0)
    img = (img1.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return img, np.concatenate((labels1, labels2), 0)
