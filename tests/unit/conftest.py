"""A small yolodist checkpoint for tests that need weights on disk (export, backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import write_checkpoint

CHECKPOINT_NAMES = ["circle", "square", "triangle"]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a YOLOv5n checkpoint with 3 classes to ``path``.

    BatchNorm statistics are randomised (as after training) so that fusing them into the convolutions
    changes the weights; a freshly built model's identity statistics would hide fusion errors.
    """

    def randomise_bn(model: torch.nn.Module) -> None:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)

    return write_checkpoint(path, CHECKPOINT_NAMES, seed=seed, edit=randomise_bn)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A YOLOv5n 3-class checkpoint (``best.pt``), written once per session; copy it before exporting next to it."""
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt")
