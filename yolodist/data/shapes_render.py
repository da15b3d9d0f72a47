"""Drawing the built-in 'shapes' images and their ground truth, deterministically.

Each image is a muted textured background (gradient, low-frequency noise, thin lines, small blobs)
with 1 to 8 filled shapes in saturated colours; colour never tells the class, so a model must learn
the outline. Shapes are rotated, sized log-uniformly from 16 px (or ``img_size / 20``) to 45 % of the
short side, and may cover each other, but none loses over a quarter of its pixels and touching shapes
never share a colour: each label box is the tight box of the shape's visible pixels. Images are
``img_size`` wide; about one in four is landscape (0.8 x as high) to exercise letterboxing. Indices
7 modulo 32 (~3 %) are background images with no labels, as in upstream YOLOv5. Image ``i`` of a
split comes from ``np.random.default_rng([seed, split_id, i])`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from yolodist.errors import BadData

SHAPES_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
SPLITS: dict[str, int] = {"train": 0, "val": 1}

# An index-based rule rather than a coin flip: exactly ~3 % backgrounds, and even a tiny 8-image
# split (as the CLI tests use) contains one, so the empty-label code path is always exercised.
_BACKGROUND_PERIOD, _BACKGROUND_PHASE = 32, 7
_LANDSCAPE_P, _LANDSCAPE_RATIO = 0.25, 0.8
_MAX_OBJECTS = 8
_MIN_VISIBLE = 0.75  # fraction of a shape's pixels that must stay visible when others cover it
_PLACE_TRIES = 20
_SUBPIXEL_BITS = 4  # cv2 fixed-point drawing: sub-pixel vertices keep 16 px shapes recognisable
_NOISE_SIGMA = 4.0

# Saturated BGR red, green, blue, yellow, magenta, cyan, orange: channel spread >= 170, far above the
# background's (<= ~50); any two differ by >= 80 in some channel, so touching shapes stay separable.
_PALETTE = np.array(
    [40, 40, 220, 40, 200, 40, 220, 60, 30, 30, 210, 230, 200, 40, 200, 210, 200, 30, 20, 130, 240],
    np.float32,
).reshape(-1, 3)


def _regular_polygon(n: int, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(2 * points, -np.pi / 2)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radii[:, None]


def _cross(half_width: float = 0.32) -> np.ndarray:
    a = half_width
    arm = np.array([(a, -1.0), (a, -a), (1.0, -a)])  # one quarter of the outline; the rest are rotations
    quarter_turn = np.array([[0.0, -1.0], [1.0, 0.0]])
    pts = np.concatenate([arm @ np.linalg.matrix_power(quarter_turn, k).T for k in range(4)])
    return pts / np.linalg.norm(pts, axis=1).max()  # every vertex within the unit circle


# Unit polygons (vertices within radius 1) by class id; circle (0) and ring (5) are drawn as circles.
_POLYGONS = {1: _regular_polygon(4, np.pi / 4), 2: _regular_polygon(3, -np.pi / 2), 3: _star(), 4: _cross()}


@dataclass(frozen=True)
class Sample:
    """One rendered image with its ground truth (the test hook; generation writes the same data)."""

    image: np.ndarray  # (H, W, 3) uint8 BGR, before JPEG encoding
    labels: np.ndarray  # (n, 5) float64 rows (class, cx, cy, w, h), normalised to the image size
    masks: np.ndarray  # (n, H, W) bool, the visible pixels of each object
    colors: np.ndarray  # (n, 3) float32 BGR fill colour of each object


def render_sample(index: int, *, split: str = "train", img_size: int = 320, seed: int = 0) -> Sample:
    """Render image ``index`` of ``split`` exactly as ``ensure_shapes`` writes it (before JPEG)."""
    if split not in SPLITS:
        raise BadData(f"unknown split {split!r} for the 'shapes' dataset; use one of {sorted(SPLITS)}")
    image, owner, objects = render(index, SPLITS[split], img_size, seed)
    masks = owner[None] == np.arange(len(objects), dtype=owner.dtype)[:, None, None]
    labels = np.array([(obj.cls, *tight_box(mask)) for obj, mask in zip(objects, masks, strict=True)])
    colors = np.array([obj.color for obj in objects], dtype=np.float32).reshape(-1, 3)
    return Sample(image=image, labels=labels.reshape(-1, 5), masks=masks, colors=colors)


def render(index: int, split_id: int, img_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Returns image (H, W, 3) uint8, owner (H, W) int16 (object id or -1) and the objects drawn."""
    rng = np.random.default_rng([seed, split_id, index])
    width = height = img_size
    if rng.random() < _LANDSCAPE_P:
        height = 2 * round(img_size * _LANDSCAPE_RATIO / 2)
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int16)
    is_background = index % _BACKGROUND_PERIOD == _BACKGROUND_PHASE
    objects = [] if is_background else _place_objects(rng, image, owner)
    # Luminance noise over everything, objects included, so flat colour alone is not a giveaway.
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * _NOISE_SIGMA
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), owner, objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted gradient with low-frequency texture and clutter: (H, W, 3) float32 BGR."""
    grey = rng.uniform(60, 190, size=(2, 1))
    ends = (grey + rng.uniform(-12, 12, size=(2, 3))).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.ogrid[:height, :width]
    along = (xs * math.cos(angle) + ys * math.sin(angle)).astype(np.float32)
    along = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    image = ends[0] + along[..., None] * (ends[1] - ends[0])
    coarse = rng.normal(0, 10, size=(6, 6)).astype(np.float32)
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    mean = ends.mean(axis=0)
    scale = min(height, width) / 320
    for _ in range(int(rng.integers(2, 7))):
        p1, p2 = (tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2))
        cv2.line(image, p1, p2, _muted(rng, mean), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 8))):
        centre = tuple(int(v) for v in rng.integers(0, (width, height)))
        axes = tuple(max(1, int(v * scale)) for v in rng.uniform(2, 6, size=2))
        cv2.ellipse(image, centre, axes, rng.uniform(0, 180), 0, 360, _muted(rng, mean), -1, cv2.LINE_AA)
    return image


def _muted(rng: np.random.Generator, mean: np.ndarray) -> tuple[float, ...]:
    """A clutter colour: the background's mean shifted by 15-40 grey levels, barely tinted."""
    shift = rng.choice((-1.0, 1.0)) * rng.uniform(15, 40) + rng.uniform(-8, 8, size=3)
    return tuple(float(v) for v in np.clip(mean + shift, 0, 255))


@dataclass
class _Placed:
    """A shape already drawn: its class, colour, crop window (x0, y0, x1, y1) and pixel counts."""

    cls: int
    color: tuple[float, ...]
    palette_id: int
    window: tuple[int, int, int, int]
    area: int
    visible: int


def _place_objects(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray) -> list[_Placed]:
    """Draw 1..8 shapes into ``image`` (H, W, 3) and their ids into ``owner`` (H, W), in place."""
    height, width = owner.shape
    low, high = max(16.0, min(height, width) / 20), 0.45 * min(height, width)
    placed: list[_Placed] = []
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(SHAPES_NAMES)))
        radius = math.exp(rng.uniform(math.log(low), math.log(high))) / 2
        theta = rng.uniform(0, 2 * np.pi)
        for _ in range(_PLACE_TRIES):  # only the position is retried, so big shapes stay as common
            cx, cy = rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1)
            (y0, x0), mask = _shape_mask(cls, cx, cy, radius, theta, (height, width))
            region = owner[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
            covered = region[mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(placed))
            if any(p.visible - lost[k] < _MIN_VISIBLE * p.area for k, p in enumerate(placed)):
                continue
            window = (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0])
            palette_id = _free_color(rng, window, placed)
            if palette_id is None:
                continue
            color = np.clip(_PALETTE[palette_id] + rng.integers(-15, 16, size=3), 0, 255)
            image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = color
            region[mask] = len(placed)
            for k, p in enumerate(placed):
                p.visible -= int(lost[k])
            area = int(mask.sum())
            placed.append(_Placed(cls, tuple(float(c) for c in color), palette_id, window, area, area))
            break
    return placed


def _shape_mask(
    cls: int, cx: float, cy: float, radius: float, theta: float, image_hw: tuple[int, int]
) -> tuple[tuple[int, int], np.ndarray]:
    """The filled shape as a bool crop (h, w) and its top-left corner (y0, x0) in the image."""
    height, width = image_hw
    x0, y0 = max(int(cx - radius) - 1, 0), max(int(cy - radius) - 1, 0)
    x1, y1 = min(int(cx + radius) + 2, width), min(int(cy + radius) + 2, height)
    crop = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    one = 1 << _SUBPIXEL_BITS
    centre = (round((cx - x0) * one), round((cy - y0) * one))
    if cls in (0, 5):
        cv2.circle(crop, centre, round(radius * one), 1, -1, cv2.LINE_8, _SUBPIXEL_BITS)
        if cls == 5:
            cv2.circle(crop, centre, round(0.5 * radius * one), 0, -1, cv2.LINE_8, _SUBPIXEL_BITS)
    else:
        cos, sin = math.cos(theta), math.sin(theta)
        rotation = np.array([[cos, -sin], [sin, cos]])
        points = _POLYGONS[cls] @ rotation.T * radius + (cx - x0, cy - y0)
        cv2.fillPoly(crop, [np.round(points * one).astype(np.int32)], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return (y0, x0), crop.astype(bool)


def _free_color(rng: np.random.Generator, window: tuple, placed: list[_Placed]) -> int | None:
    """A palette index unused by every shape whose window touches ``window`` (None if all are taken)."""
    x0, y0, x1, y1 = window
    taken = {
        p.palette_id
        for p in placed
        if p.window[0] <= x1 and x0 <= p.window[2] and p.window[1] <= y1 and y0 <= p.window[3]
    }
    free = [k for k in range(len(_PALETTE)) if k not in taken]
    return free[int(rng.integers(len(free)))] if free else None


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised (cx, cy, w, h) of the pixel-edge box around the True pixels of (H, W) ``mask``."""
    height, width = mask.shape
    cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
