"""Fault injection and probes for the launch tests: patch one thing, then run ``yolodist train``.

Started by torchrun as a file, once per rank::

    launch_wrapper.py slow-labels SECONDS LOG_DIR TRAIN_ARGS...
        local rank 0 sleeps SECONDS in its first label-cache load (the rank-0-only phase the
        others wait for). Every rank appends one JSON line per event to LOG_DIR/labels-rank<R>.jsonl,
        with the wall-clock time: "load" (a dataset asks for its labels), "scan" (the images are
        verified and parsed), "save" (a label cache was written), each naming the cache path, and
        "wait" (a rank waited for the main rank's phase), naming the phase and the seconds waited.
        A test can then count per rank who scanned and who reused the cache, and who waited how long.
    launch_wrapper.py record-sizes OUT_DIR TRAIN_ARGS...
        every rank appends the (h, w) of each batch it trains on to OUT_DIR/sizes-rank<R>.txt.
    launch_wrapper.py count-decodes OUT_DIR TRAIN_ARGS...
        every process (ranks and their forked data workers) appends "<pid> <rank> <image path>" to
        OUT_DIR/decodes.txt each time the dataset decodes an image file.

The production code has no hooks for this: the patches live here.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _slow_labels(seconds: float, log_dir: Path) -> None:
    from yolodist.data import cache, dataset
    from yolodist.distributed import scope

    log = log_dir / f"labels-rank{_rank()}.jsonl"
    loading: list[str] = []  # the cache path of the load in progress, for the scan inside it
    slept = False

    def record(event: str, what: object, **more: float) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"event": event, "what": str(what), "time": time.time(), **more}) + "\n")

    original_load, original_scan, original_save = dataset.load_or_scan, cache.scan_images, cache.save_cache
    original_wait = scope._wait_for

    @functools.wraps(original_load)
    def slow_load(im_files, cache_path, *args, **kwargs):
        nonlocal slept
        record("load", cache_path)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not slept:
            slept = True
            time.sleep(seconds)
        loading.append(str(cache_path))
        try:
            return original_load(im_files, cache_path, *args, **kwargs)
        finally:
            loading.pop()

    @functools.wraps(original_scan)
    def recorded_scan(*args, **kwargs):
        record("scan", loading[-1] if loading else "?")
        return original_scan(*args, **kwargs)

    @functools.wraps(original_save)
    def recorded_save(path, *args, **kwargs):
        original_save(path, *args, **kwargs)
        record("save", path)  # after the write: the time the cache became readable

    @functools.wraps(original_wait)
    def recorded_wait(store, key, name, *args, **kwargs):
        started = time.monotonic()
        try:
            return original_wait(store, key, name, *args, **kwargs)
        finally:
            record("wait", name, seconds=time.monotonic() - started)

    # The dataset calls load_or_scan through its own imported name; load_or_scan calls the scan and
    # the save, and main_first the wait, through their modules' globals.
    dataset.load_or_scan = slow_load
    cache.scan_images = recorded_scan
    cache.save_cache = recorded_save
    scope._wait_for = recorded_wait


def _record_sizes(out_dir: Path) -> None:
    from yolodist.engine import epoch, step

    original = step.train_step
    log = out_dir / f"sizes-rank{_rank()}.txt"

    @functools.wraps(original)
    def recording(ctx, imgs, *args, **kwargs):
        with log.open("a") as f:
            f.write(f"{imgs.shape[-2]} {imgs.shape[-1]}\n")
        return original(ctx, imgs, *args, **kwargs)

    # The epoch loop may call it through its own imported name or through the step module.
    step.train_step = recording
    if hasattr(epoch, "train_step"):
        epoch.train_step = recording


def _count_decodes(out_dir: Path) -> None:
    from yolodist.data import dataset

    log = out_dir / "decodes.txt"

    def counting(original):
        @functools.wraps(original)
        def counted(path, *args, **kwargs):
            # One short O_APPEND write per line: lines from concurrent processes never interleave.
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()} {_rank()} {path}\n".encode())
            finally:
                os.close(fd)
            return original(path, *args, **kwargs)

        return counted

    # The dataset decodes through its own imported names (the strict and the fast decoder).
    dataset.read_image = counting(dataset.read_image)
    dataset.read_verified = counting(dataset.read_verified)


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    if mode == "slow-labels":
        _slow_labels(float(rest[0]), Path(rest[1]))
        rest = rest[2:]
    elif mode == "record-sizes":
        _record_sizes(Path(rest[0]))
        rest = rest[1:]
    elif mode == "count-decodes":
        _count_decodes(Path(rest[0]))
        rest = rest[1:]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from yolodist.cli.train import main as train

    return train(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
