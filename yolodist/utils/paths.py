"""Run directories: runs/train/exp, exp2, exp3, ... as upstream."""

from __future__ import annotations

import os
from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """``path`` if free (or ``exist_ok``), else the first free ``path{sep}N`` with N >= 2.

    With ``mkdir`` the directory is created with ``os.mkdir``, which fails if another process took the
    same name first; then the next number is tried, so two runs never share a directory.
    """
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    candidate, n = path, 2
    while True:
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(candidate)
                return candidate
            except FileExistsError:
                pass
        elif not candidate.exists():
            return candidate
        candidate = path.with_name(f"{path.stem}{sep}{n}{path.suffix}")
        n += 1
