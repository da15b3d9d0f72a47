"""Augmentation presets: what a training or validation sample goes through, composed from ``Hyp``.

A preset is called with a sample index, a load function and the sample's rng, and returns
(image HxWx3 uint8 BGR, labels float32 ``[n, 5]`` (cls, cx, cy, w, h) normalised to that image,
shapes) where shapes is ((h0, w0), ((h / h0, w / w0), (padw, padh))) for rescaling predictions to the
original image, or ``None`` for a mosaic. ``load_fn(i)`` returns (image resized so its long side is
``img_size``, labels ``[n, 5]`` cls+xywhn, (h0, w0) original shape).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from yolodist.augment.color import apply_hsv_table, hsv_table
from yolodist.augment.geometry import fliplr, flipud, letterbox, random_perspective
from yolodist.augment.mosaic import LoadFn, mixup, mosaic4_tiled
from yolodist.ops.boxes import xywhn2xyxy

if TYPE_CHECKING:
    from yolodist.config.schema import Hyp

Shapes = tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]]
Sample = tuple[np.ndarray, np.ndarray, Shapes | None]


def _letterboxed(loaded: tuple, shape: tuple[int, int], scaleup: bool) -> tuple[np.ndarray, np.ndarray, Shapes]:
    """Letterbox one loaded sample; labels come back as pixel (cls, x1, y1, x2, y2)."""
    img, labels, (h0, w0) = loaded[0], loaded[1], loaded[2]
    h, w = img.shape[:2]
    img, (r, _), (dw, dh) = letterbox(img, shape, auto=False, scaleup=scaleup)
    px = np.asarray(labels, dtype=np.float32).reshape(-1, 5).copy()
    if len(px):
        px[:, 1:] = xywhn2xyxy(px[:, 1:], r * w, r * h, dw, dh)
    shapes = ((h0, w0), ((h * r / h0, w * r / w0), (dw, dh)))
    return img, px, shapes


def _normalised(img: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Pixel (cls, x1, y1, x2, y2) -> (cls, cx, cy, w, h) normalised to ``img``, corners clipped to it first.

    ``ops.boxes.xyxy2xywhn(clip=True)`` written out for numpy rows: a sample's hot path, same values."""
    out = np.asarray(px, dtype=np.float32).reshape(-1, 5).copy()
    if not len(out):
        return out
    h, w = img.shape[:2]
    xy = out[:, 1:].T  # rows x1, y1, x2, y2 (views into out)
    np.maximum(xy, 0, out=xy)
    np.minimum(xy[0::2], w, out=xy[0::2])
    np.minimum(xy[1::2], h, out=xy[1::2])
    x1, y1, x2, y2 = xy.copy()
    out[:, 1] = ((x1 + x2) / 2) / w
    out[:, 2] = ((y1 + y2) / 2) / h
    out[:, 3] = (x2 - x1) / w
    out[:, 4] = (y2 - y1) / h
    return out


class ValAugment:
    """Validation: letterbox to ``rect_shape`` (h, w), or to a square ``img_size``; never enlarges."""

    def __init__(self, img_size: int, rect_shape: tuple[int, int] | None = None) -> None:
        self.img_size = img_size
        self.rect_shape = rect_shape

    def __call__(
        self,
        index: int,
        load_fn: LoadFn,
        rng: np.random.Generator | None = None,
        *,
        n: int = 0,
        shape: tuple[int, int] | None = None,
        partners: np.ndarray | None = None,
    ) -> Sample:
        """``shape`` (h, w), e.g. the rect batch shape, overrides the preset's shape for this sample."""
        target = shape or self.rect_shape or (self.img_size, self.img_size)
        img, px, shapes = _letterboxed(load_fn(index), target, scaleup=False)
        return img, _normalised(img, px), shapes


class TrainAugment:
    """Training (upstream's recipe): mosaic (p=hyp.mosaic) + mixup (p=hyp.mixup), else letterbox;
    random perspective; HSV jitter; up-down and left-right flips."""

    def __init__(self, hyp: Hyp, img_size: int) -> None:
        self.hyp = hyp
        self.img_size = img_size

    def _perspective(self, img: np.ndarray, px: np.ndarray, rng: np.random.Generator, border: int = 0):
        h = self.hyp
        return random_perspective(
            img, px, rng, degrees=h.degrees, translate=h.translate, scale=h.scale, shear=h.shear,
            perspective=h.perspective, border=(border, border),
        )  # fmt: skip

    def _mosaic(
        self, index: int, load_fn: LoadFn, rng: np.random.Generator, n: int, partners: np.ndarray | None
    ) -> tuple:
        if partners is None:
            others = rng.integers(0, max(n, 1), 3)
        else:  # weighted by the epoch's image weights: partners[i] is the cumulative weight up to image i
            others = np.searchsorted(partners, rng.random(3) * partners[-1], side="right").clip(0, len(partners) - 1)
        indices = [index, *(int(i) for i in others)]
        rng.shuffle(indices)  # so the requested sample is not always top-left
        canvas, px = mosaic4_tiled(load_fn, indices, self.img_size, rng)
        return self._perspective(canvas, px, rng, border=-(self.img_size // 2))

    def __call__(self, index: int, load_fn: LoadFn, rng: np.random.Generator, **draw: Any) -> Sample:
        """The training sample: ``before_colour``'s (same keywords), with its HSV jitter applied."""
        img, labels, shapes, table = self.before_colour(index, load_fn, rng, **draw)
        if table is not None:
            apply_hsv_table(img, table)
        return img, labels, shapes

    def before_colour(
        self,
        index: int,
        load_fn: LoadFn,
        rng: np.random.Generator,
        *,
        n: int,
        shape: tuple[int, int] | None = None,
        partners: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Shapes | None, np.ndarray | None]:
        """The sample before its HSV jitter, and the jitter's ``color.hsv_table`` (None when the
        hyperparameters have none). The jitter maps each pixel on its own, so applying the table to this
        image later gives ``__call__``'s image exactly.

        ``n``: dataset size (mosaic/mixup partners are drawn from it). ``shape`` (h, w): rect training
        batch shape; when given, mosaic is off and the sample is letterboxed to it (upstream --rect).
        ``partners``: cumulative draw weights of the ``n`` images (``--image-weights``) that the three
        other images of a mosaic are drawn by; None draws them uniformly. The mixup image is uniform, as
        upstream's."""
        hyp, shapes = self.hyp, None
        if shape is None and rng.random() < hyp.mosaic:
            img, px = self._mosaic(index, load_fn, rng, n, partners)
            if hyp.mixup and rng.random() < hyp.mixup:
                other = self._mosaic(int(rng.integers(0, max(n, 1))), load_fn, rng, n, partners)
                img, px = mixup(img, px, *other, rng)
        else:
            target = shape or (self.img_size, self.img_size)
            img, px, shapes = _letterboxed(load_fn(index), target, scaleup=True)
            img, px = self._perspective(img, px, rng)
        labels = _normalised(img, px)
        table = hsv_table(rng, hyp.hsv_h, hyp.hsv_s, hyp.hsv_v)  # drawn before the flips, as upstream's jitter
        if rng.random() < hyp.flipud:
            img, labels = flipud(img, labels)
        if rng.random() < hyp.fliplr:
            img, labels = fliplr(img, labels)
        return img, labels, shapes, table
