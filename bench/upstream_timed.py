"""Run upstream YOLOv5's ``train.py`` unchanged, timing each epoch's training loop as yolodist does.

    UPSTREAM_PYTHON bench/upstream_timed.py [upstream train.py flags]

Run with the Python of the upstream environment that bench/accuracy.py creates. Upstream's own
callbacks mark the start and the end of each epoch's batch loop; this wrapper counts the images
seen in between and prints ``epoch N: IMAGES images in S s (R images/s)``, the line yolodist's
trainer prints, so that bench/train_speed.py reads both trainers the same way. Nothing else in the
training changes.
"""

from __future__ import annotations

import runpy
import sys
import time

from yolov5.utils.callbacks import Callbacks

_original_run = Callbacks.run
_state = {"epoch": -1, "started": 0.0, "images": 0}


def _timed_run(self: Callbacks, hook: str, *args: object, **kwargs: object) -> object:
    if hook == "on_train_epoch_start":
        _state.update(epoch=_state["epoch"] + 1, started=time.perf_counter(), images=0)
    elif hook == "on_train_batch_end":
        _state["images"] += int(args[2].shape[0])  # (model, ni, imgs, targets, paths, losses)
    elif hook == "on_train_epoch_end":
        seconds = time.perf_counter() - _state["started"]
        images = _state["images"]
        print(f"epoch {_state['epoch']}: {images} images in {seconds:.1f} s ({images / seconds:.1f} images/s)")
        sys.stdout.flush()
    return _original_run(self, hook, *args, **kwargs)


if __name__ == "__main__":
    Callbacks.run = _timed_run
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_module("yolov5.train", run_name="__main__", alter_sys=True)
