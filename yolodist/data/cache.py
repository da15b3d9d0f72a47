"""Scan an image set once (image + label per file), cache the result, report what was skipped and why.

The cache lives beside the labels as upstream (``labels/train.cache``; ``train.cache`` beside a
``train.txt`` list). It is an ``.npz`` of plain arrays (loads with ``allow_pickle=False``), keyed by
a hash of every image and label path with its size and mtime plus ``CACHE_VERSION``, and written
atomically (``utils.io.atomic_open``: temp file in the same folder + ``os.replace``). ``load_or_scan``
is a plain function: the caller makes sure only one process per node runs it at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolodist.data.images import IMG_FORMATS, verify_image
from yolodist.data.labels import img2label_path, parse_label_file
from yolodist.errors import BadData
from yolodist.utils.io import atomic_open, free_space_note

LOGGER = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump whenever the parser or the stored fields change
MISSING_WARN_FRACTION = 0.5


@dataclass
class ScanResult:
    """Per-image verification results, index-aligned with ``im_files``.

    ``shapes``: int ``[N, 2]`` original (w, h) after EXIF orientation; ``labels[i]``: float32 ``[n, 5]``
    (cls, cx, cy, w, h normalised); ``problems[i]``: short reason the image is unusable or "";
    ``details[i]``: more words on it; ``missing[i]``: no label file; ``row_notes``: counts of dropped
    or fixed label rows by reason, over all images.
    """

    im_files: list[str]
    shapes: np.ndarray
    labels: list[np.ndarray]
    problems: list[str]
    details: list[str]
    missing: np.ndarray
    row_notes: Counter = field(default_factory=Counter)

    def usable(self) -> np.ndarray:
        """Bool ``[N]``: images without a problem."""
        return np.array([not p for p in self.problems], dtype=bool)


def list_image_files(sources: list[Path]) -> list[str]:
    """Image paths named by ``sources``: folders (searched recursively), ``.txt`` lists, single images.

    Relative entries of a ``.txt`` list are relative to the list's folder. Sorted, without duplicates.
    """
    files: list[str] = []
    for src in map(Path, sources):
        if src.is_dir():
            files += [str(p) for p in src.rglob("*.*") if p.is_file()]
        elif src.suffix.lower() == ".txt" and src.is_file():
            for line in src.read_text(encoding="utf-8-sig").splitlines():
                entry = line.strip()
                if entry:
                    p = Path(entry).expanduser()
                    files.append(str(p if p.is_absolute() else (src.parent / p).resolve()))
        elif src.is_file():
            files.append(str(src))
        else:
            raise BadData(f"image source {src} does not exist; check the dataset YAML's train/val entries.")
    return sorted({f for f in files if f.rsplit(".", 1)[-1].lower() in IMG_FORMATS})


def cache_path_for(sources: list[Path]) -> Path:
    """``images/train`` -> ``labels/train.cache``; ``train.txt`` -> ``train.cache`` (from the last source)."""
    src = Path(sources[-1])
    if src.is_dir():
        return Path(img2label_path(src / "x.jpg")).parent.with_suffix(".cache")
    if src.suffix.lower() == ".txt":
        return src.with_suffix(".cache")
    return Path(img2label_path(src)).parent.with_suffix(".cache")


def files_key(im_files: list[str]) -> str:
    """Hash of every image and label path with its size and mtime, plus the cache version."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    for f in im_files:
        for p in (f, img2label_path(f)):
            try:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0-\n".encode())
    return h.hexdigest()


def _scan_one(im_file: str) -> tuple[tuple[int, int], np.ndarray, str, str, bool, list[str]]:
    info = verify_image(im_file)
    if info.problem:
        return (0, 0), np.zeros((0, 5), np.float32), info.problem, "", False, []
    res = parse_label_file(img2label_path(im_file), nc=None)  # class range is checked later against nc
    h, w = info.shape
    return (w, h), res.labels, res.fatal or "", res.detail, res.missing, res.problems


def scan_images(im_files: list[str], workers: int = 8) -> ScanResult:
    """Verify every image (full decode) and parse its label file, ``workers`` threads at a time."""
    # Threads suffice: PIL releases the GIL while decoding, and threads need no pickling or start-up.
    with ThreadPoolExecutor(max_workers=max(1, min(workers, 32))) as pool:
        out = list(pool.map(_scan_one, im_files))
    notes: Counter = Counter()
    for r in out:
        notes.update(r[5])
    return ScanResult(
        im_files=list(im_files),
        shapes=np.array([r[0] for r in out], dtype=np.int64).reshape(-1, 2),
        labels=[r[1] for r in out],
        problems=[r[2] for r in out],
        details=[r[3] for r in out],
        missing=np.array([r[4] for r in out], dtype=bool),
        row_notes=notes,
    )


def save_cache(path: Path, scan: ScanResult, key: str) -> None:
    """Write ``scan`` atomically (``atomic_open``): the previous cache stays until the new one is complete."""
    counts = np.array([len(lb) for lb in scan.labels], dtype=np.int64)
    labels = np.concatenate(scan.labels) if scan.labels else np.zeros((0, 5), np.float32)
    arrays = {
        "version": np.array(CACHE_VERSION),
        "key": np.array(key),
        "files": np.array(scan.im_files, dtype=str),
        "shapes": scan.shapes,
        "counts": counts,
        "labels": labels.astype(np.float32),
        "problems": np.array(scan.problems, dtype=str),
        "details": np.array(scan.details, dtype=str),
        "missing": scan.missing,
        "row_notes": np.array(json.dumps(dict(scan.row_notes))),
    }
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def load_cache(path: Path, key: str) -> ScanResult | None:
    """The cached scan if ``path`` holds one for ``key``; ``None`` if absent; ``ValueError`` if stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION:
                raise ValueError("wrong version")
            if str(z["key"]) != key:
                raise ValueError("stale")
            counts = z["counts"]
            splits = np.cumsum(counts)[:-1] if len(counts) else []
            labels = np.split(z["labels"].astype(np.float32), splits) if len(counts) else []
            return ScanResult(
                im_files=[str(f) for f in z["files"]],
                shapes=z["shapes"].astype(np.int64).reshape(-1, 2),
                labels=[lb.reshape(-1, 5) for lb in labels],
                problems=[str(p) for p in z["problems"]],
                details=[str(d) for d in z["details"]],
                missing=z["missing"].astype(bool),
                row_notes=Counter(json.loads(str(z["row_notes"]))),
            )
    except ValueError:
        raise
    except Exception as e:  # truncated zip, bad arrays, anything: treat as corrupt
        raise ValueError(f"corrupt ({type(e).__name__})") from e


def load_or_scan(im_files: list[str], cache_path: Path, *, prefix: str = "", workers: int = 8) -> ScanResult:
    """Reuse the cache at ``cache_path`` when it matches ``im_files`` exactly; else scan and rewrite it."""
    key = files_key(im_files)
    try:
        cached = load_cache(cache_path, key)
        if cached is not None:
            LOGGER.info(f"{prefix}using label cache {cache_path}")
            return cached
    except ValueError as e:
        LOGGER.warning(f"{prefix}label cache {cache_path} is stale/corrupt ({e}), rebuilding")
    scan = scan_images(im_files, workers)
    try:
        save_cache(cache_path, scan, key)
        LOGGER.info(f"{prefix}new label cache saved to {cache_path}")
    except OSError as e:
        reason = f"{e.strerror or e}{free_space_note(e, cache_path)}"
        LOGGER.warning(f"{prefix}cannot write label cache {cache_path} ({reason}); continuing without it")
    return scan


def apply_class_limit(scan: ScanResult, nc: int | None) -> None:
    """Mark images whose labels use a class id >= ``nc`` unusable, naming the valid range."""
    if nc is None:
        return
    for i, lb in enumerate(scan.labels):
        if not scan.problems[i] and len(lb) and lb[:, 0].max() >= nc:
            scan.problems[i] = "class out of range"
            scan.details[i] = f"class {int(lb[:, 0].max())} outside the valid range 0..{nc - 1} (nc={nc})"


def report(scan: ScanResult, prefix: str = "") -> dict[str, int]:
    """Log the one-line summary (and the first few problems); raise ``BadData`` if nothing can train.

    Returns counts: found, usable, missing_labels, empty, corrupt, ``corrupt:<reason>``, ``rows:<reason>``.
    """
    usable = scan.usable()
    n, n_ok = len(scan.im_files), int(usable.sum())
    missing = int((scan.missing & usable).sum())
    empty = sum(1 for i in np.flatnonzero(usable) if not scan.missing[i] and len(scan.labels[i]) == 0)
    bad = Counter(p for p in scan.problems if p)
    stats = {"found": n, "usable": n_ok, "missing_labels": missing, "empty": empty, "corrupt": n - n_ok}
    stats |= {f"corrupt:{k}": v for k, v in bad.items()} | {f"rows:{k}": v for k, v in scan.row_notes.items()}
    reasons = ", ".join(f"{v} {k}" for k, v in bad.most_common())
    line = f"{prefix}found {n} images: {missing} missing labels, {empty} empty, {n - n_ok} corrupt"
    line += f" ({reasons})" if reasons else ""
    if scan.row_notes:
        line += "; label rows: " + ", ".join(f"{v} {k}" for k, v in scan.row_notes.most_common())
    LOGGER.info(line)
    _log_examples(scan, prefix)
    if n == 0:
        raise BadData(f"{prefix}no images found; supported formats are {', '.join(IMG_FORMATS)}.")
    if n_ok == 0:
        raise BadData(f"{prefix}none of the {n} images is usable ({reasons}); see the warnings above.")
    example = img2label_path(scan.im_files[int(np.flatnonzero(usable)[0])])
    if missing == n_ok:
        raise BadData(
            f"{prefix}no labels found in {Path(example).parent}: labels must be in a 'labels' folder beside "
            f"'images' with the same names and a .txt suffix (expected e.g. {example})."
        )
    if missing / n_ok > MISSING_WARN_FRACTION:
        first_missing = img2label_path(scan.im_files[int(np.flatnonzero(scan.missing & usable)[0])])
        LOGGER.warning(
            f"{prefix}{missing / n_ok:.0%} of images have no label file and train as background; "
            f"is the labels folder right? (expected e.g. {first_missing})"
        )
    return stats


def _log_examples(scan: ScanResult, prefix: str, limit: int = 10) -> None:
    bad = [i for i, p in enumerate(scan.problems) if p]
    for i in bad[:limit]:
        detail = f": {scan.details[i]}" if scan.details[i] else ""
        LOGGER.warning(f"{prefix}skipping {scan.im_files[i]} ({scan.problems[i]}{detail})")
    if len(bad) > limit:
        LOGGER.warning(f"{prefix}... and {len(bad) - limit} more skipped images")
