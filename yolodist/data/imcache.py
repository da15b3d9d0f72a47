"""One decoded-image cache per node: a single file that every rank and data worker maps read-only.

``--cache ram`` puts the file in shared memory (``/dev/shm``, or ``$YOLODIST_SHM_DIR``): a node holds one
decoded copy however many ranks and workers read it, and the job removes it when it ends. ``--cache
disk`` writes the same file beside the label cache (``labels/train.640-linear.imcache``) and keeps it
for the next run.

File layout: a 4 KiB header (magic, format version, key, image count, file size), one status byte per
image, then each image's resized BGR pixels (h x w x 3 uint8) from a page boundary. The key hashes every
image's path, size and mtime with the image size, the interpolation and the format version, so a
changed image gives a new key and is never served from an old file.

Why this shape: pixels are written with ``pwrite`` after ``posix_fallocate`` reserved the whole file,
so a full filesystem is an ``OSError`` the caller reports, never a SIGBUS inside a worker. Readers map
the finished file read-only and hand out zero-copy views. Every process that maps a file holds a
shared ``flock`` on it; a file nobody holds a lock on was left by a killed job and may be reused
(when complete and current) or removed.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"YDIMCACH"
HEADER_BYTES = 4096
PAGE = 4096
SHM_ENV = "YOLODIST_SHM_DIR"
DEFAULT_SHM = "/dev/shm"
SHM_PREFIX = "yolodist-"
SUFFIX = ".imcache"
PARTIAL = ".partial"
# Room left for everything else a training needs when the cache goes into memory (upstream: 10%).
MEMORY_MARGIN = 0.1
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


def shm_dir() -> Path:
    """Where ``--cache ram`` keeps its file: ``$YOLODIST_SHM_DIR`` or ``/dev/shm``."""
    return Path(os.environ.get(SHM_ENV) or DEFAULT_SHM)


def ram_path(plan: Plan, directory: Path | None = None) -> Path:
    return (directory or shm_dir()) / f"{SHM_PREFIX}{plan.key_hex[:20]}{SUFFIX}"


def disk_path(label_cache: Path, img_size: int, interp: str) -> Path:
    """``labels/train.cache`` -> ``labels/train.640-linear.imcache`` (one per size and resize)."""
    return label_cache.with_name(f"{label_cache.stem}.{img_size}-{interp}{SUFFIX}")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---------------------------------------------------------------------------------------- memory
def _meminfo_available(meminfo: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_headroom(proc_cgroup: Path, cgroup_root: Path) -> int | None:
    """The tightest (limit - usage) over this process's memory cgroup and its parents (v2 or v1)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1], parts[2].strip("/")
        if controllers == "":
            base, limit_name, usage_name = cgroup_root, "memory.max", "memory.current"
            if (cgroup_root / "unified").is_dir() and not (cgroup_root / "cgroup.controllers").exists():
                base = cgroup_root / "unified"
        elif "memory" in controllers.split(","):
            base, limit_name, usage_name = cgroup_root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        node = base / rel if rel else base
        while True:
            with contextlib.suppress(OSError, ValueError):
                raw = (node / limit_name).read_text().strip()
                if raw != "max" and int(raw) < 2**60:
                    room = int(raw) - int((node / usage_name).read_text().strip())
                    best = room if best is None else min(best, room)
            if node == base:
                break
            node = node.parent
    return best


def available_memory(
    meminfo: Path = Path("/proc/meminfo"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> int | None:
    """Bytes this process can still take: MemAvailable, capped by its cgroup's limit (containers)."""
    found = [v for v in (_meminfo_available(meminfo), _cgroup_headroom(proc_cgroup, cgroup_root)) if v is not None]
    return max(0, min(found)) if found else None


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


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
        h, w = (int(v) for v in self.plan.shapes[i])
        img = np.frombuffer(self._map, dtype=np.uint8, count=h * w * 3, offset=int(self.plan.offsets[i]))
        h0, w0 = (int(v) for v in self.plan.originals[i])
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


def _fallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            os.ftruncate(fd, size)  # no reservation on this filesystem; pwrite still reports ENOSPC
            return
        raise


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
            if stop.is_set():
                return
            try:
                img = load(i)
            except Exception:
                return  # the reader's own load reports it, once, where the sample is needed
            if tuple(img.shape) != (*(int(v) for v in plan.shapes[i]), 3) or img.dtype != np.uint8:
                return
            data = np.ascontiguousarray(img).data
            offset, written = int(plan.offsets[i]), 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)
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


# ---------------------------------------------------------------------------------------- deciding
def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _decline(prefix: str, why: str) -> None:
    LOGGER.warning(f"{prefix}not caching images: {why}; decoding them from the files instead")


def prepare(
    path: Path,
    plan: Plan,
    load: Callable[[int], np.ndarray],
    *,
    in_memory: bool,
    threads: int,
    prefix: str = "",
) -> ImageCache | None:
    """The node's cache at ``path``: reused when a finished one is there, else built if it fits.

    Run by one process per node (the others then ``open_cache``). Says in one line what happens;
    returns None (decode from the files) when the memory or the space is not there. A cache in
    memory is removed when this process exits.
    """
    n = len(plan.shapes)
    directory = path.parent
    where = f"{directory} (from {SHM_ENV})" if in_memory and os.environ.get(SHM_ENV) else str(directory)
    if not directory.is_dir():
        if in_memory:
            _decline(prefix, f"{where} does not exist (set {SHM_ENV} to a tmpfs folder, or use --cache disk)")
            return None
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _decline(prefix, f"cannot create {directory} ({e.strerror or e})")
            return None
    if in_memory:
        sweep(directory, f"{SHM_PREFIX}*{SUFFIX}", keep=path)
        sweep(directory, f".{SHM_PREFIX}*{SUFFIX}.*{PARTIAL}")
    else:
        sweep(directory, f".{path.name}.*{PARTIAL}")
    cache = open_cache(path, plan)
    if cache is not None:
        if in_memory:
            atexit.register(_remove, path)
        LOGGER.info(f"{prefix}using the image cache {path} ({human(plan.size)}, {cache.complete}/{n} images)")
        return cache
    need = plan.size
    if in_memory:
        room = available_memory()
        if room is not None and need * (1 + MEMORY_MARGIN) > room:
            _decline(
                prefix,
                f"{n} images need {human(need)} of memory and this node has {human(room)} available "
                "(--cache disk keeps them on disk instead)",
            )
            return None
    try:
        free = free_bytes(directory)
    except OSError as e:
        _decline(prefix, f"cannot use {directory} ({e.strerror or e})")
        return None
    if need > free:
        advice = f"set {SHM_ENV} to a larger tmpfs, or use --cache disk" if in_memory else "free some space"
        _decline(prefix, f"{n} images need {human(need)} and {directory} has {human(free)} free ({advice})")
        return None
    started = time.monotonic()
    try:
        if in_memory:
            atexit.register(_remove, path)
        built = build_cache(path, plan, load, threads=threads, durable=not in_memory)
    except OSError as e:
        detail = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            detail += f", {human(free_bytes(directory))} free of the {human(need)} needed"
        _decline(prefix, f"cannot write {path} ({detail})")
        return None
    cache = open_cache(path, plan)
    if cache is None:
        _decline(prefix, f"{path} disappeared after it was written")
        return None
    shared = "every process on this node maps it" if in_memory else "kept for the next run"
    seconds = time.monotonic() - started
    LOGGER.info(f"{prefix}cached {built}/{n} images ({human(need)}) in {path} in {seconds:.1f} s; {shared}")
    return cache
