"""The built-in 'shapes' detection dataset, generated on first use so that training works offline.

Each image is a muted textured background (gradient, low-frequency noise, thin lines, small blobs)
with 1 to 8 filled shapes in saturated colours; colour never tells the class, so a model must learn
the outline. Shapes are rotated, sized log-uniformly from 16 px (or ``img_size / 20``) to 45 % of the
short side, and may cover each other, but none loses over a quarter of its pixels and touching shapes
never share a colour: each label box is the tight box of the shape's visible pixels. Images are
``img_size`` wide; about one in four is landscape (0.8 x as high) to exercise letterboxing. Indices
7 modulo 32 (~3 %) are background images with empty label files, as in upstream YOLOv5.

Layout: ``shapes.yaml`` (path, train, val, nc, names), ``meta.json`` (generator version and
parameters, written last), ``images/{train,val}/000000.jpg`` and ``labels/{train,val}/000000.txt``
(rows "cls cx cy w h", normalised, 6 decimals). Same seed and parameters, same bytes: image ``i``
of a split comes from ``np.random.default_rng([seed, split_id, i])`` alone, JPEGs at fixed quality.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from yolodist.errors import BadData

LOGGER = logging.getLogger(__name__)

SHAPES_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
GENERATOR = "yolodist-shapes"
GENERATOR_VERSION = 1
SPLITS: dict[str, int] = {"train": 0, "val": 1}
YAML_NAME = "shapes.yaml"
META_NAME = "meta.json"
# Fixed quality for byte-identical output; 4:4:4 keeps chroma at full resolution, since a saturated
# shape can have the background's luminance and would otherwise show only through blurred chroma.
_JPEG = (cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
ENV_VAR = "YOLODIST_DATASETS_DIR"

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


def default_datasets_dir() -> Path:
    """``$YOLODIST_DATASETS_DIR`` if set, else ``./datasets`` under the current working directory."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser().absolute() if value else Path.cwd() / "datasets"


def ensure_shapes(
    root: Path | None = None, *, n_train: int = 1024, n_val: int = 256, img_size: int = 192, seed: int = 0
) -> Path:
    """Generate the 'shapes' dataset into ``root`` unless a complete one with these parameters is there.

    ``root`` defaults to ``default_datasets_dir() / "shapes"``. Returns the dataset YAML path. A set
    made with other parameters or another generator version, or missing files, is regenerated.
    Generation happens in a temporary sibling directory that is renamed into place, so an interrupted
    run never looks complete and concurrent callers end up sharing one finished copy.
    """
    _check_params(n_train, n_val, img_size, seed)
    root = Path(root if root is not None else default_datasets_dir() / "shapes").expanduser().absolute()
    params = {"n_train": n_train, "n_val": n_val, "img_size": img_size, "seed": seed}
    meta = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "params": params,
        "names": list(SHAPES_NAMES),
    }
    if not _is_complete(root, meta):
        _check_replaceable(root)
        _generate_atomically(root, meta)
    elif _yaml_root(root) != str(root):  # the directory was moved: only the YAML's path is stale
        _write_yaml(root, root)
    return root / YAML_NAME


def render_sample(index: int, *, split: str = "train", img_size: int = 320, seed: int = 0) -> Sample:
    """Render image ``index`` of ``split`` exactly as ``ensure_shapes`` writes it (before JPEG)."""
    if split not in SPLITS:
        raise BadData(f"unknown split {split!r} for the 'shapes' dataset; use one of {sorted(SPLITS)}")
    image, owner, objects = _render(index, SPLITS[split], img_size, seed)
    masks = owner[None] == np.arange(len(objects), dtype=owner.dtype)[:, None, None]
    labels = np.array([(obj.cls, *_tight_box(mask)) for obj, mask in zip(objects, masks, strict=True)])
    colors = np.array([obj.color for obj in objects], dtype=np.float32).reshape(-1, 3)
    return Sample(image=image, labels=labels.reshape(-1, 5), masks=masks, colors=colors)


def _check_params(n_train: int, n_val: int, img_size: int, seed: int) -> None:
    limits = {"n_train": (n_train, 1, 10**7), "n_val": (n_val, 1, 10**7), "img_size": (img_size, 64, 4096)}
    for name, (value, low, high) in {**limits, "seed": (seed, 0, 2**63 - 1)}.items():
        if not isinstance(value, int) or not low <= value <= high:
            raise BadData(f"the 'shapes' dataset needs an integer {name} in {low}..{high}, got {value!r}")


def _render(index: int, split_id: int, img_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
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


def _tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised (cx, cy, w, h) of the pixel-edge box around the True pixels of (H, W) ``mask``."""
    height, width = mask.shape
    cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height


def _is_complete(root: Path, meta: dict) -> bool:
    """Whether ``root`` holds a finished dataset made with exactly ``meta`` (files listed, not read)."""
    if _read_meta(root) != meta or not (root / YAML_NAME).is_file():
        return False
    try:
        for split in SPLITS:
            for folder, suffix in (("images", ".jpg"), ("labels", ".txt")):
                expected = {f"{i:06d}{suffix}" for i in range(meta["params"][f"n_{split}"])}
                if set(os.listdir(root / folder / split)) != expected:
                    return False
    except OSError:
        return False
    return True


def _read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a directory that this generator did not write (it may be the user's data)."""
    empty = root.is_dir() and not any(root.iterdir())
    if root.exists() and not empty and (_read_meta(root) or {}).get("generator") != GENERATOR:
        raise BadData(
            f"{root} exists but is not a complete yolodist 'shapes' dataset; delete it or set "
            f"{ENV_VAR} to another directory"
        )


def _generate_atomically(root: Path, meta: dict) -> None:
    params = meta["params"]
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(root)
    tmp = root.with_name(f".{root.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    LOGGER.info(
        "generating the built-in 'shapes' dataset (%d train + %d val images, %d px, seed %d) into %s",
        params["n_train"], params["n_val"], params["img_size"], params["seed"], root,
    )  # fmt: skip
    try:
        _write_dataset(tmp, root, meta)
        _swap_in(tmp, root, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_dataset(out: Path, root: Path, meta: dict) -> None:
    """Write every image and label into ``out``; the YAML names ``root``; meta.json goes last."""
    params = meta["params"]
    for split, split_id in SPLITS.items():
        images, labels = out / "images" / split, out / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for index in range(params[f"n_{split}"]):
            image, owner, objects = _render(index, split_id, params["img_size"], params["seed"])
            path = images / f"{index:06d}.jpg"
            if not cv2.imwrite(str(path), image, _JPEG):
                raise BadData(f"could not write {path}; check free disk space and permissions")
            boxes = [(obj.cls, _tight_box(owner == k)) for k, obj in enumerate(objects)]
            rows = "".join(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for cls, (cx, cy, w, h) in boxes)
            (labels / f"{index:06d}.txt").write_text(rows, encoding="utf-8")
    _write_yaml(out, root)
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _write_yaml(directory: Path, root: Path) -> None:
    """Write ``directory/shapes.yaml`` pointing at ``root``, atomically (temp file + rename)."""
    names = dict(enumerate(SHAPES_NAMES))
    spec = {"path": str(root), "train": "images/train", "val": "images/val", "nc": len(names), "names": names}
    header = "# yolodist built-in 'shapes' dataset: generated, and regenerated on demand if deleted.\n"
    tmp = directory / f".{YAML_NAME}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(header + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    os.replace(tmp, directory / YAML_NAME)


def _yaml_root(root: Path) -> str | None:
    try:
        return (yaml.safe_load((root / YAML_NAME).read_text(encoding="utf-8")) or {}).get("path")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _swap_in(tmp: Path, root: Path, meta: dict) -> None:
    """Rename ``tmp`` to ``root``; if another process finished an identical set first, keep that one."""
    for _ in range(3):
        if _is_complete(root, meta):
            return
        if root.exists():
            # A stale or damaged set: move it aside first, since a rename onto a non-empty dir fails.
            trash = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(FileNotFoundError):  # another process may have moved it already
                os.replace(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, root)
            return
        except OSError:
            continue  # the final directory appeared meanwhile; check it again
    raise BadData(f"could not move the generated 'shapes' dataset into {root}; is another job writing there?")


def _remove_dead_temporaries(root: Path) -> None:
    """Delete temp dirs left by killed generations on this host (their process no longer exists)."""
    prefix = f".{root.name}.tmp-{socket.gethostname()}-"
    for path in root.parent.iterdir() if os.name == "posix" else []:  # os.kill(pid, 0) probes on POSIX only
        pid = path.name[len(prefix) :].split("-")[0]
        if path.name.startswith(prefix) and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except PermissionError:
                pass  # alive, owned by another user
