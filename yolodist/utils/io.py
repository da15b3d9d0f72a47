"""Atomic file writes: a crash or a full disk never leaves a half-written file in place."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import torch


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(path)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: object, path: str | Path, *, _hook: Callable[[bytes], bytes] | None = None) -> None:
    """``torch.save`` made atomic: the previous file stays intact until the new one is complete.

    ``_hook`` lets tests interfere with the serialised bytes before they are written.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, _hook(data) if _hook else data)


def cleanup_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove temp files (``.<name>.<pid>.tmp``) left by writers that were killed mid-write."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed
