"""One YOLO label file -> checked ``[n, 5]`` array (cls, cx, cy, w, h normalised), with reasons.

Pure and total: ``parse_label_file`` never raises on file content (property-tested). Row-level
problems drop the row and are reported; image-level problems make the whole image unusable
(``fatal``), because a half-understood label file would train on wrong boxes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OVERSHOOT_TOL = 1e-3  # coordinates this far outside [0, 1] are rounding noise: clipped, not dropped

# Strict number syntax: Python's float() would also accept "1_0" and surrounding junk.
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE)


@dataclass
class LabelResult:
    """Parsed labels of one image.

    ``labels``: float32 ``[n, 5]`` (cls, cx, cy, w, h) normalised to 0..1. ``problems``: one short
    reason per dropped or fixed row ("non-finite", "zero-size box", "out of range", "duplicate",
    "polygon converted"). ``fatal``: short reason the image is unusable, ``detail`` says more.
    ``missing``: the label file does not exist (a background image).
    """

    labels: np.ndarray
    problems: list[str] = field(default_factory=list)
    fatal: str | None = None
    detail: str = ""
    missing: bool = False


def img2label_path(img_path: str | Path) -> str:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the LAST ``images`` component is replaced)."""
    p = str(img_path)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = p.rpartition(sa)
    p = f"{head}{sb}{tail}" if sep else p
    return str(Path(p).with_suffix(".txt"))


def _empty() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


def _fatal(reason: str, detail: str) -> LabelResult:
    return LabelResult(_empty(), [], reason, detail)


def parse_label_text(text: str, nc: int | None = None) -> LabelResult:
    """Parse label file content (see ``parse_label_file``)."""
    rows: list[np.ndarray] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        n = len(tokens)
        if n != 5 and (n < 7 or n % 2 == 0):
            detail = f"line {lineno} has {n} values; expected 5 (cls cx cy w h) or a polygon"
            return _fatal("bad column count", detail)
        if not all(_NUMBER.fullmatch(t) for t in tokens):
            bad = next(t for t in tokens if not _NUMBER.fullmatch(t))
            detail = f"line {lineno}: {bad[:20]!r} is not a number (use '.' for decimals)"
            return _fatal("non-numeric value", detail)
        values = np.array([float(t) for t in tokens], dtype=np.float64)
        if not np.isfinite(values).all():
            problems.append("non-finite")
            continue
        cls = values[0]
        if cls != int(cls):
            return _fatal("non-integer class", f"line {lineno}: class {tokens[0]} is not an integer")
        if cls < 0 or (nc is not None and cls >= nc):
            valid = f"0..{nc - 1}" if nc else "0 or more"
            detail = f"line {lineno}: class {tokens[0]} outside the valid range {valid}"
            return _fatal("class out of range", detail)
        row, note = _row_to_box(values)
        if note in ("zero-size box", "out of range"):
            problems.append(note)
            continue
        if note:
            problems.append(note)
        rows.append(row)
    if not rows:
        return LabelResult(_empty(), problems)
    labels = np.stack(rows).astype(np.float32)
    _, first = np.unique(labels, axis=0, return_index=True)
    if len(first) < len(labels):
        problems.extend(["duplicate"] * (len(labels) - len(first)))
        labels = labels[np.sort(first)]
    return LabelResult(labels, problems)


def _row_to_box(values: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A finite row (cls + 4 box values, or cls + polygon xy pairs) -> (cls, cx, cy, w, h), note."""
    note = None
    if len(values) > 5:
        xy = values[1:].reshape(-1, 2)
        lo, hi = xy.min(0), xy.max(0)
        box = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[0] - lo[0], hi[1] - lo[1]])
        note = "polygon converted"
    else:
        box = values[1:5].copy()
    if box[2] <= 0 or box[3] <= 0:
        return box, "zero-size box"
    if (box < -OVERSHOOT_TOL).any() or (box > 1 + OVERSHOOT_TOL).any():
        return box, "out of range"
    box = box.clip(0.0, 1.0)
    # Corners past the image edge (cx + w/2 > 1) are allowed as upstream allows them; clip them to the
    # image so every later transform (mosaic tiles especially) sees only the visible part.
    x1, y1 = max(box[0] - box[2] / 2, 0.0), max(box[1] - box[3] / 2, 0.0)
    x2, y2 = min(box[0] + box[2] / 2, 1.0), min(box[1] + box[3] / 2, 1.0)
    box = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    if box[2] <= 0 or box[3] <= 0:
        return box, "zero-size box"
    return np.concatenate(([values[0]], box)), note


def parse_label_file(path: str | Path, nc: int | None = None) -> LabelResult:
    """Read one label file (UTF-8, a BOM and CRLF accepted). A missing or empty file is a background.

    ``nc`` bounds the class ids (``None``: only negative ids are refused). Never raises on content.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return LabelResult(_empty(), missing=True)
    except OSError as e:
        return _fatal("unreadable label file", str(e))
    return parse_label_bytes(raw, nc)


def parse_label_bytes(raw: bytes, nc: int | None = None) -> LabelResult:
    """Parse label file bytes: UTF-8 with an optional BOM (Windows editors add one)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return _fatal("not UTF-8", f"byte {e.start} is not UTF-8; save the file as UTF-8")
    return parse_label_text(text, nc)
