"""The lifetime of image cache files: leftovers of killed jobs are swept, a cache in memory goes at exit.

A file nobody holds a lock on was left by a killed job: a live reader holds a shared ``flock`` and a
live writer an exclusive one, so a file this process can lock exclusively is free to remove.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from pathlib import Path


def _try_exclusive(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path``, or None if a live process holds a lock on it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep(directory: Path, pattern: str, keep: Path | None = None) -> list[Path]:
    """Remove files matching ``pattern`` in ``directory`` that no live process holds (killed jobs' leftovers).

    ``keep`` is left in place (a finished cache this job can reuse). Returns the removed paths.
    """
    removed = []
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob(pattern)):
            if keep is not None and path == keep:
                continue
            fd = _try_exclusive(path)
            if fd is None:
                continue
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
            finally:
                os.close(fd)
    return removed


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def remove_at_exit(path: Path) -> None:
    """Remove ``path`` when this process exits (a cache in shared memory must not outlive its job)."""
    atexit.register(_remove, path)
