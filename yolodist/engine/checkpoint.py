"""Kept so that code still importing checkpoints from the engine works; they live in ``yolodist.checkpoint``.

tests/dist/test_kill.py imports ``load_checkpoint`` from here; new code imports the package.
"""

from yolodist.checkpoint.files import (
    PickledCheckpoint,
    load_checkpoint,
    load_latest_good,
    previous_path,
    save_checkpoint,
    strip_for_release,
)
from yolodist.checkpoint.state import FORMAT, FORMAT_VERSION, build_checkpoint
from yolodist.checkpoint.weights import transfer_weights

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PickledCheckpoint",
    "build_checkpoint",
    "load_checkpoint",
    "load_latest_good",
    "previous_path",
    "save_checkpoint",
    "strip_for_release",
    "transfer_weights",
]
