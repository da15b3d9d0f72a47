"""Fault injection and probes for the launch tests: patch one thing, then run ``yolodist train``.

Started by torchrun as a file, once per rank::

    launch_wrapper.py slow-labels SECONDS MARKER_DIR TRAIN_ARGS...
        local rank 0 sleeps SECONDS in its first label-cache load (the rank-0-only phase the
        others wait for) and writes MARKER_DIR/slept-rank<R>.txt when it wakes up.
    launch_wrapper.py record-sizes OUT_DIR TRAIN_ARGS...
        every rank appends the (h, w) of each batch it trains on to OUT_DIR/sizes-rank<R>.txt.

The production code has no hooks for this: the patches live here.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _slow_labels(seconds: float, marker_dir: Path) -> None:
    from yolodist.data import dataset

    original = dataset.load_or_scan
    slept = False

    @functools.wraps(original)
    def slow(*args, **kwargs):
        nonlocal slept
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not slept:
            slept = True
            time.sleep(seconds)
            (marker_dir / f"slept-rank{_rank()}.txt").write_text(f"{seconds}\n")
        return original(*args, **kwargs)

    dataset.load_or_scan = slow


def _record_sizes(out_dir: Path) -> None:
    from yolodist.engine import step, trainer

    original = step.train_step
    log = out_dir / f"sizes-rank{_rank()}.txt"

    @functools.wraps(original)
    def recording(ctx, imgs, *args, **kwargs):
        with log.open("a") as f:
            f.write(f"{imgs.shape[-2]} {imgs.shape[-1]}\n")
        return original(ctx, imgs, *args, **kwargs)

    # The trainer may call it through its own imported name or through the step module.
    step.train_step = recording
    if hasattr(trainer, "train_step"):
        trainer.train_step = recording


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    if mode == "slow-labels":
        _slow_labels(float(rest[0]), Path(rest[1]))
        rest = rest[2:]
    elif mode == "record-sizes":
        _record_sizes(Path(rest[0]))
        rest = rest[1:]
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from yolodist.cli.train import main as train

    return train(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
