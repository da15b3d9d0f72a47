"""Atomic file writes: a crash, a kill or a full disk never leaves a half-written file in place.

Every writer here follows one pattern: write a temp file ``.<name>.<pid>.tmp`` in the destination's
directory (same filesystem, so the rename is atomic), flush and fsync it, ``os.replace`` it over the
destination, then fsync the directory so the rename itself survives a power cut. Until the rename,
readers see the complete previous file; after it, the complete new one. A writer killed half-way
leaves only its temp file, which ``cleanup_stale_tmp`` removes on the next start (RELIABILITY F10).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch

LOGGER = logging.getLogger(__name__)

# ".last.pt.1234.tmp": a hidden name, the writer's pid, and a suffix nothing else uses.
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def temp_path_for(path: str | Path) -> Path:
    """The temp file this process writes before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_dir(directory: Path) -> None:
    # Some filesystems (and Windows) cannot open or fsync a directory; the rename is still atomic there.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; it replaces ``path`` when the block ends.

    The file is a temp file beside ``path``, flushed, fsynced and renamed over ``path`` when the
    ``with`` block completes, then the directory is fsynced. If the block raises, the temp file is
    removed, ``path`` is left as it was and the error propagates unchanged.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temp file behind.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write(file)`` on a temp file beside ``path`` and move the result into place atomically.

    On any error the temp file is removed and the error re-raised; an ``OSError`` (disk full,
    permission denied) is re-raised as the same kind of ``OSError`` whose message names ``path``.
    """
    path = Path(path)
    try:
        with atomic_open(path) as f:
            write(f)
    except OSError as e:
        if e.errno is not None:
            # OSError(errno, ...) picks the matching subclass (PermissionError, ...), so callers can
            # still tell the cases apart; the caller decides whether a full disk stops training.
            raise OSError(e.errno, f"could not write {path}: {e.strerror or e}{free_space_note(e, path)}") from e
        raise


def free_space_note(error: OSError, path: Path) -> str:
    """`` (N MB free on the disk of <dir>)`` for a full disk or quota, else nothing."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f" ({free / 2**20:.1f} MB free on the disk of {path.parent})"


class _RecordingWriter:
    """A file wrapper that keeps the OSError of a failed write: torch.save reports a failed write as a
    RuntimeError of its own ("PytorchStreamWriter failed writing file ...") and drops the cause."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> object:  # flush, seek, tell, ...: the file's own
        return getattr(self.f, name)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (the old content stays until the new one is complete)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Replace the text file ``path`` with ``text`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save(obj: object, path: str | Path, *, _hook: Callable[[BinaryIO], None] | None = None) -> None:
    """``torch.save(obj, path)`` made atomic: the previous file stays intact until the new one is complete.

    The object is serialised straight into the temp file (no second copy in memory, which matters for
    large checkpoints). ``_hook(file)`` is for tests only: it runs after serialisation and before the
    fsync and rename, so a test can corrupt the stream, raise (a failure mid-write) or sleep (a slow
    writer to kill).
    """

    def write(f: BinaryIO) -> None:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError as e:
            if writer.error is not None:
                raise writer.error from e
            raise
        if _hook is not None:
            _hook(f)

    _atomic_write(path, write)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` a complete copy of ``src`` atomically: a hard link when possible, else a byte copy."""
    src, dst = Path(src), Path(dst)
    tmp = temp_path_for(dst)
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)  # no data is copied, and the old inode is immutable once replaced
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise
            shutil.copyfile(src, tmp)  # filesystems without hard links (FAT, some network mounts)
        os.replace(tmp, dst)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno is not None:
            raise OSError(e.errno, f"could not copy {src} to {dst}: {e.strerror or e}") from e
        raise
    _fsync_dir(dst.parent)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else
    return True


def cleanup_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove temp files (``.<name>.<pid>.tmp``) left in ``directory`` by writers that were killed.

    Files whose pid is a live process on this machine are kept: that writer may still be working.
    (On a shared filesystem a pid from another host may look alive; the file is then kept, which is
    harmless.) Returns the removed paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for tmp in directory.glob(".*.tmp"):
        match = _TMP_NAME.match(tmp.name)
        if match is None or not tmp.is_file() or _pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    if removed:
        LOGGER.info(f"Removed {len(removed)} incomplete file(s) left by an interrupted write in {directory}")
    return removed
