"""Run directories: runs/train/exp, exp2, exp3, ... with upstream YOLOv5's numbering."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path


def _candidates(path: Path, sep: str) -> Iterator[Path]:
    """``path``, then ``path{sep}2``, ``path{sep}3``, ...; a file keeps its suffix (best.pt -> best2.pt)."""
    yield path
    # Upstream splits the suffix only for an existing file, so a directory named "exp.v1" numbers as
    # "exp.v12", not "exp2.v1".
    stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
    for n in itertools.count(2):
        yield Path(f"{stem}{sep}{n}{suffix}")


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """``path`` if it is free (or ``exist_ok``), else the first free ``path{sep}N`` with N >= 2.

    Examples: runs/train/exp -> runs/train/exp2 when exp exists; with ``exist_ok`` -> runs/train/exp.
    A gap is reused as upstream does: with exp and exp3 present the answer is exp2.

    With ``mkdir`` the directory is created here, with ``os.mkdir``, which fails when another process
    or thread created the same name first; the next number is then tried. So two runs started at the
    same moment never share a directory (upstream checks, then creates, and can race).
    """
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in _candidates(path, sep):
        if not mkdir:
            if not candidate.exists():
                return candidate
            continue
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable: the candidate sequence is infinite")
