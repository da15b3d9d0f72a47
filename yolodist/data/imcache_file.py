"""The image cache's file: its layout, reading it (``ImageCache``) and writing it (``build_cache``).

Layout: a 4 KiB header (magic, format version, key, image count, file size), one status byte per
image, then each image's resized BGR pixels (h x w x 3 uint8) from a page boundary. The key hashes every
image's path, size and mtime with the image size, the interpolation and the format version, so a
changed image gives a new key and is never served from an old file.

Why this shape: pixels are written with ``pwrite`` after ``posix_fallocate`` reserved the whole file,
so a full filesystem is an ``OSError`` the caller reports, never a SIGBUS inside a worker. Readers map
the finished file read-only and hand out zero-copy views. Every process that maps a file holds a
shared ``flock`` on it, and its writer an exclusive one (see ``imcache_cleanup``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MAGIC = b"YDIMCACH"
HEADER_BYTES = 4096
PAGE = 4096
PARTIAL = ".partial"  # suffix of a file being written
_HEADER = struct.Struct("<8sI32sQQ")  # magic, version, key digest, image count, file size
_OK = 1


def resized_shape(h0: int, w0: int, img_size: int) -> tuple[int, int]:
    """(h, w) of an (h0, w0) image resized so its long side is ``img_size`` (the loader's rule)."""
    r = img_size / max(h0, w0)
    if r == 1:
        return h0, w0
    return math.ceil(h0 * r), math.ceil(w0 * r)


@dataclass(frozen=True)
class Plan:
    """Where each image goes in the file. ``originals`` and ``shapes`` are (h, w) per image."""

    key: bytes
    originals: np.ndarray
    shapes: np.ndarray
    offsets: np.ndarray
    size: int

    @property
    def pixel_bytes(self) -> int:
        return int((self.shapes[:, 0] * self.shapes[:, 1] * 3).sum())

    @property
    def key_hex(self) -> str:
        return self.key.hex()


def make_plan(files: list[str], originals_wh: np.ndarray, img_size: int, interp: str) -> Plan:
    """The file layout for ``files`` (original (w, h) each, after EXIF rotation) resized to ``img_size``.

    ``interp`` names the resize (train and val resize differently) and is part of the key.
    """
    h = hashlib.sha256(f"yolodist-imcache v{FORMAT_VERSION} {img_size} {interp}\n".encode())
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0-\n".encode())
    originals = np.asarray(originals_wh, dtype=np.int64).reshape(-1, 2)[:, ::-1].copy()
    shapes = np.array([resized_shape(int(a), int(b), img_size) for a, b in originals], dtype=np.int64).reshape(-1, 2)
    start = -(-(HEADER_BYTES + len(files)) // PAGE) * PAGE
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    offsets = start + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(files) else sizes
    return Plan(h.digest(), originals, shapes, offsets, int(start + sizes.sum()))


# ---------------------------------------------------------------------------------------- reading
class CacheFileError(Exception):
    """A cache file that cannot be used (missing, short, another key); the caller decodes instead."""


def _read_header(fd: int) -> tuple[bytes, int, bytes, int, int]:
    raw = os.pread(fd, _HEADER.size, 0)
    if len(raw) != _HEADER.size:
        raise CacheFileError("short header")
    return _HEADER.unpack(raw)


def _check(fd: int, plan: Plan) -> None:
    magic, version, key, count, size = _read_header(fd)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CacheFileError("not a yolodist image cache of this version")
    if key != plan.key or count != len(plan.shapes) or size != plan.size:
        raise CacheFileError("made for other images or another image size")
    if os.fstat(fd).st_size != plan.size:
        raise CacheFileError("truncated")


class ImageCache:
    """A finished cache file, mapped read-only. ``get(i)`` -> (image view, (h0, w0)) or None.

    Pickled into a spawned data worker it reopens the file there; forked workers share the mapping.
    """

    def __init__(self, path: Path, plan: Plan) -> None:
        self.path, self.plan = Path(path), plan
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._status: np.ndarray | None = None
        self._gone = False
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # "in use": a starting job must not remove it
            _check(fd, self.plan)
            self._map = mmap.mmap(fd, self.plan.size, prot=mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        n = len(self.plan.shapes)
        self._status = np.frombuffer(self._map, dtype=np.uint8, count=n, offset=HEADER_BYTES)

    @property
    def complete(self) -> int:
        """How many images the file holds (the rest failed to load when it was built)."""
        return int((self._status == _OK).sum()) if self._status is not None else 0

    def get(self, i: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        if self._map is None:
            if self._gone:
                return None
            try:
                self._open()
            except (OSError, CacheFileError):
                self._gone = True  # removed or replaced since: the caller decodes the files instead
                return None
        if self._status[i] != _OK:
            return None
        h, w = self.plan.shapes[i].tolist()
        img = np.frombuffer(self._map, dtype=np.uint8, count=h * w * 3, offset=int(self.plan.offsets[i]))
        h0, w0 = self.plan.originals[i].tolist()
        return img.reshape(h, w, 3), (h0, w0)

    def close(self) -> None:
        self._status = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # views still alive: the mapping goes with them
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __getstate__(self) -> dict:
        return {"path": self.path, "plan": self.plan}

    def __setstate__(self, state: dict) -> None:
        self.path, self.plan = state["path"], state["plan"]
        self._fd, self._map, self._status, self._gone = -1, None, None, False


def open_cache(path: Path, plan: Plan) -> ImageCache | None:
    """The finished cache at ``path`` if it is there and matches ``plan``, else None."""
    try:
        return ImageCache(path, plan)
    except (OSError, CacheFileError):
        return None


# ---------------------------------------------------------------------------------------- writing
def _fallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            os.ftruncate(fd, size)  # no reservation on this filesystem; pwrite still reports ENOSPC
            return
        raise


def _write_image(fd: int, plan: Plan, i: int, load: Callable[[int], np.ndarray]) -> bool:
    """Write image ``i``'s pixels at its place in the file; False if it fails to load or has another shape."""
    try:
        img = load(i)
    except Exception:
        return False  # the reader's own load reports it, once, where the sample is needed
    if tuple(img.shape) != (*(int(v) for v in plan.shapes[i]), 3) or img.dtype != np.uint8:
        return False
    data = np.ascontiguousarray(img).data
    offset, written = int(plan.offsets[i]), 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)
    return True


def build_cache(
    path: Path,
    plan: Plan,
    load: Callable[[int], np.ndarray],
    *,
    threads: int,
    durable: bool = False,
) -> int:
    """Write every image ``load(i)`` returns into a new cache file at ``path``; returns how many it holds.

    ``load`` runs on ``threads`` threads (decoders and cv2 release the GIL). An image that fails to
    load, or loads with another shape than the plan's, is left out (readers decode it themselves).
    The file appears at ``path`` only when complete; OSError (ENOSPC, EACCES...) leaves nothing behind.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    ok = np.zeros(len(plan.shapes), dtype=np.uint8)
    stop = threading.Event()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a sweeping job leaves a file alone while its writer lives
        _fallocate(fd, plan.size)
        os.pwrite(fd, _HEADER.pack(MAGIC, FORMAT_VERSION, plan.key, len(plan.shapes), plan.size), 0)

        def one(i: int) -> None:
            if not stop.is_set() and _write_image(fd, plan, i, load):
                ok[i] = _OK

        with ThreadPoolExecutor(max(1, threads)) as pool:
            try:
                for _ in pool.map(one, range(len(plan.shapes))):
                    pass
            except BaseException:
                stop.set()  # Ctrl-C: the queued images are skipped, the pool drains at once
                raise
        os.pwrite(fd, ok.tobytes(), HEADER_BYTES)
        if durable:
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        os.close(fd)
    return int(ok.sum())
