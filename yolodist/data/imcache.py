"""One decoded-image cache per node: a single file that every rank and data worker maps read-only.

``--cache ram`` puts the file in shared memory (``/dev/shm``, or ``$YOLODIST_SHM_DIR``): a node holds one
decoded copy however many ranks and workers read it, and the job removes it when it ends. ``--cache
disk`` writes the same file beside the label cache (``labels/train.640-linear.imcache``) and keeps it
for the next run.

This module decides, once per node (``prepare``): reuse a finished file, build one if memory and
space allow, or decode from the files. The file itself is ``imcache_file`` (layout, reader, writer),
the room checks ``imcache_room``, and the sweeping of killed jobs' leftovers ``imcache_cleanup``.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from yolodist.data.imcache_cleanup import remove_at_exit, sweep
from yolodist.data.imcache_file import PARTIAL, ImageCache, Plan, build_cache, open_cache
from yolodist.data.imcache_room import available_memory, free_bytes, human

LOGGER = logging.getLogger(__name__)

SHM_ENV = "YOLODIST_SHM_DIR"
DEFAULT_SHM = "/dev/shm"
SHM_PREFIX = "yolodist-"
SUFFIX = ".imcache"
# Room left for everything else a training needs when the cache goes into memory (upstream: 10%).
MEMORY_MARGIN = 0.1


def shm_dir() -> Path:
    """Where ``--cache ram`` keeps its file: ``$YOLODIST_SHM_DIR`` or ``/dev/shm``."""
    return Path(os.environ.get(SHM_ENV) or DEFAULT_SHM)


def ram_path(plan: Plan, directory: Path | None = None) -> Path:
    """``--cache ram``'s file for ``plan``, named by its key (in ``directory``, default ``shm_dir()``)."""
    return (directory or shm_dir()) / f"{SHM_PREFIX}{plan.key_hex[:20]}{SUFFIX}"


def disk_path(label_cache: Path, img_size: int, interp: str) -> Path:
    """``labels/train.cache`` -> ``labels/train.640-linear.imcache`` (one per size and resize)."""
    return label_cache.with_name(f"{label_cache.stem}.{img_size}-{interp}{SUFFIX}")


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
    if not _usable_folder(path.parent, in_memory, prefix):
        return None
    _sweep_leftovers(path, in_memory)
    cache = open_cache(path, plan)
    if cache is not None:
        if in_memory:
            remove_at_exit(path)
        n = len(plan.shapes)
        LOGGER.info(f"{prefix}using the image cache {path} ({human(plan.size)}, {cache.complete}/{n} images)")
        return cache
    if not _fits(plan, path.parent, in_memory, prefix):
        return None
    return _build(path, plan, load, in_memory=in_memory, threads=threads, prefix=prefix)


def _usable_folder(directory: Path, in_memory: bool, prefix: str) -> bool:
    """Whether the cache's folder is there (a disk cache's is made); declines in one line if not."""
    if directory.is_dir():
        return True
    if in_memory:
        where = f"{directory} (from {SHM_ENV})" if os.environ.get(SHM_ENV) else str(directory)
        _decline(prefix, f"{where} does not exist (set {SHM_ENV} to a tmpfs folder, or use --cache disk)")
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _decline(prefix, f"cannot create {directory} ({e.strerror or e})")
        return False
    return True


def _sweep_leftovers(path: Path, in_memory: bool) -> None:
    """Remove what killed jobs left: in memory any other cache and partial file, on disk this one's partials."""
    directory = path.parent
    if in_memory:
        sweep(directory, f"{SHM_PREFIX}*{SUFFIX}", keep=path)
        sweep(directory, f".{SHM_PREFIX}*{SUFFIX}.*{PARTIAL}")
    else:
        sweep(directory, f".{path.name}.*{PARTIAL}")


def _fits(plan: Plan, directory: Path, in_memory: bool, prefix: str) -> bool:
    """Whether the memory (for a cache in memory) and the folder's free space hold ``plan``; declines if not."""
    n, need = len(plan.shapes), plan.size
    if in_memory:
        room = available_memory()
        if room is not None and need * (1 + MEMORY_MARGIN) > room:
            _decline(
                prefix,
                f"{n} images need {human(need)} of memory and this node has {human(room)} available "
                "(--cache disk keeps them on disk instead)",
            )
            return False
    try:
        free = free_bytes(directory)
    except OSError as e:
        _decline(prefix, f"cannot use {directory} ({e.strerror or e})")
        return False
    if need > free:
        advice = f"set {SHM_ENV} to a larger tmpfs, or use --cache disk" if in_memory else "free some space"
        _decline(prefix, f"{n} images need {human(need)} and {directory} has {human(free)} free ({advice})")
        return False
    return True


def _build(
    path: Path, plan: Plan, load: Callable[[int], np.ndarray], *, in_memory: bool, threads: int, prefix: str
) -> ImageCache | None:
    """Write the cache file and open it, saying in one line how it went; None when it could not be written."""
    n, need = len(plan.shapes), plan.size
    started = time.monotonic()
    try:
        if in_memory:
            remove_at_exit(path)
        built = build_cache(path, plan, load, threads=threads, durable=not in_memory)
    except OSError as e:
        detail = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            detail += f", {human(free_bytes(path.parent))} free of the {human(need)} needed"
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
