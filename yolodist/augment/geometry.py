"""Geometric transforms of an image together with its boxes: letterbox, random perspective, flips.

Images are HxWx3 uint8 BGR (cv2's order). Pixel-box labels are ``[n, 5]`` (cls, x1, y1, x2, y2);
normalised labels are ``[n, 5]`` (cls, cx, cy, w, h) in 0..1. Randomness only from the ``rng`` passed in.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from yolodist.augment.canvas import PAD_COLOR, TiledImage, as_array, window


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = PAD_COLOR,
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``new_shape`` (h, w).

    Returns (image, (r, r), (dw, dh)) where dw/dh is the padding on EACH side (may be x.5; the left/top
    pad is ``round(dw - 0.1)``). ``auto`` pads only to the next multiple of ``stride``; ``scaleup=False``
    never enlarges (better validation mAP, as upstream).
    """
    shape = img.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = round(shape[1] * r), round(shape[0] * r)  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (shape[1], shape[0]) != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    # The -0.1/+0.1 split puts the odd pixel on the bottom/right, matching upstream exactly.
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, (r, r), (dw, dh)


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Bool ``[n]``: which transformed boxes ``box2`` (``[4, n]`` xyxy) to keep given originals ``box1``.

    A box survives if it is wider and taller than ``wh_thr`` px, keeps more than ``area_thr`` of its
    (scaled) area and its aspect ratio stays under ``ar_thr``.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _affine_matrix(
    in_shape: tuple[int, int], out_shape: tuple[int, int], rng: np.random.Generator, params: tuple
) -> tuple[np.ndarray, float]:
    """3x3 matrix: centre -> perspective -> rotate/scale -> shear -> translate; and the scale drawn."""
    degrees, translate, scale, shear, perspective = params
    height, width = out_shape
    # Drawn in this order whatever the hyperparameters (a sample's draws must not depend on them).
    px, py = rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)
    a, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    shx = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    shy = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    tx = rng.uniform(0.5 - translate, 0.5 + translate) * width
    ty = rng.uniform(0.5 - translate, 0.5 + translate) * height
    cx, cy = -in_shape[1] / 2, -in_shape[0] / 2  # move the image centre to the origin
    if a == 0 and px == 0 and py == 0 and shx == 0 and shy == 0:
        # Scale and translation only (upstream's hyperparameter files): the product below, written out
        # (the identity factors' products are exact, so this is the same matrix).
        return np.array([[s, 0.0, s * cx + tx], [0.0, s, s * cy + ty], [0.0, 0.0, 1.0]]), s
    c = np.eye(3)
    c[0, 2], c[1, 2] = cx, cy
    p = np.eye(3)
    p[2, 0], p[2, 1] = px, py
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=s)
    sh = np.eye(3)
    sh[0, 1], sh[1, 0] = shx, shy
    t = np.eye(3)
    t[0, 2], t[1, 2] = tx, ty
    return t @ sh @ rot @ p @ c, s  # order matters: the right-most is applied first


def is_scale_and_shift(m: np.ndarray) -> bool:
    """Whether the affine ``m`` only scales (by a positive factor per axis) and translates.

    Upstream's hyperparameter files (degrees 0, shear 0, perspective 0) draw only such matrices.
    """
    return m[0, 1] == 0 and m[1, 0] == 0 and m[0, 0] > 0 and m[1, 1] > 0 and m[2, 0] == 0 and m[2, 1] == 0


def _resize_window(start_of_output: float, k: float, length: int) -> tuple[int, int, int, float]:
    """One axis of ``scale_and_shift``: (window start, window length, first output kept, source start used).

    ``cv2.resize`` by ``k`` samples output pixel ``j`` of a window starting at the integer ``x0`` at
    ``x0 + (j + 0.5) / k - 0.5``; keeping its outputs from ``j0`` on, output ``x`` samples
    ``x0 + off + x / k`` with ``off = (j0 + 0.5) / k - 0.5``. ``j0`` is the first that needs no pixel
    left of the window (``off >= 0``), and ``x0`` the integer that brings ``x0 + off`` nearest
    ``start_of_output``, the source coordinate the drawn matrix maps output 0 from.
    """
    j0 = max(0, math.ceil((k - 1) / 2))
    off = (j0 + 0.5) / k - 0.5
    x0 = round(start_of_output - off)
    # Enough source for j0 + length outputs, plus the right-hand neighbour of the last one sampled.
    n = math.ceil((j0 + length + 1) / k) + 1
    return x0, n, j0, x0 + off


def scale_and_shift(
    img: np.ndarray | TiledImage, m: np.ndarray, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``warpAffine`` of a scale-and-translate ``m`` as a window of ``img`` and a ``cv2.resize``.

    A general warp computes a source position per output pixel; a resize interpolates separably,
    and only the window it reads is painted (a mosaic's canvas never whole). To sample a resize's
    grid exactly, the translation moves by at most half a source pixel (far below the +/- translate
    hyperparameter's spread). Returns the image and the matrix actually applied, which the boxes
    must follow. Outside ``img`` the padding is ``PAD_COLOR`` as in the warp, and interpolation
    across the border blends into it the same way.
    """
    height, width = out_shape
    kx, ky = float(m[0, 0]), float(m[1, 1])
    x0, nx, jx, bx = _resize_window(-m[0, 2] / kx, kx, width)
    y0, ny, jy, by = _resize_window(-m[1, 2] / ky, ky, height)
    out = cv2.resize(window(img, x0, y0, nx, ny), None, fx=kx, fy=ky, interpolation=cv2.INTER_LINEAR)
    out = out[jy : jy + height, jx : jx + width]  # a view: OpenCV reads and writes such a region in place
    applied = np.array([[kx, 0.0, -kx * bx], [0.0, ky, -ky * by], [0.0, 0.0, 1.0]])
    return out, applied


def random_perspective(  # noqa: PLR0913 (upstream's argument list, kept for familiarity)
    img: np.ndarray | TiledImage,
    labels: np.ndarray,
    rng: np.random.Generator,
    degrees: float = 10,
    translate: float = 0.1,
    scale: float = 0.1,
    shear: float = 10,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation and perspective of an image and its pixel boxes.

    ``labels``: ``[n, 5]`` (cls, x1, y1, x2, y2) in pixels of ``img``. The output is
    ``img.shape + 2 * border`` (so ``border=(-s/2, -s/2)`` turns a 2s mosaic into s). Boxes are
    transformed by their four corners, clipped, and filtered with ``box_candidates``. Scale and
    translation alone (upstream's hyperparameter files) go through ``scale_and_shift``, which reads
    only the part of a ``TiledImage`` it needs.
    """
    height, width = img.shape[0] + border[0] * 2, img.shape[1] + border[1] * 2
    params = (degrees, translate, scale, shear, perspective)
    m, s = _affine_matrix(img.shape[:2], (height, width), rng, params)
    if border[0] or border[1] or (m != np.eye(3)).any():
        if perspective:
            img = cv2.warpPerspective(as_array(img), m, dsize=(width, height), borderValue=PAD_COLOR)
        elif is_scale_and_shift(m):
            img, m = scale_and_shift(img, m, (height, width))
        else:
            img = cv2.warpAffine(as_array(img), m[:2], dsize=(width, height), borderValue=PAD_COLOR)
    img = as_array(img)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    n = len(labels)
    if not n:
        return img, labels.astype(np.float32)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # corners x1y1, x2y2, x1y2, x2y1
    xy = xy @ m.T
    corners = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 4, 2)
    new = np.concatenate([corners.min(1), corners.max(1)], axis=1)  # x1, y1, x2, y2 enclosing the corners
    np.clip(new, 0, (width, height, width, height), out=new)
    keep = box_candidates(labels[:, 1:5].T * s, new.T, area_thr=0.10)
    out = labels[keep]
    out[:, 1:5] = new[keep]
    return img, out.astype(np.float32)


def fliplr(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; ``labels`` normalised ``[n, 5]`` (cls, cx, cy, w, h). Returns new arrays."""
    labels = labels.copy()
    labels[:, 1] = 1 - labels[:, 1]
    return cv2.flip(img, 1), labels  # a contiguous copy, several times faster than numpy's strided one


def flipud(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom; ``labels`` normalised ``[n, 5]`` (cls, cx, cy, w, h). Returns new arrays."""
    labels = labels.copy()
    labels[:, 2] = 1 - labels[:, 2]
    return cv2.flip(img, 0), labels
