"""A small yolodist checkpoint for tests that need weights on disk (export, backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CHECKPOINT_NAMES = ["circle", "square", "triangle"]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a YOLOv5n checkpoint with 3 classes to ``path``.

    BatchNorm statistics are randomised (as after training) so that fusing them into the convolutions
    changes the weights; a freshly built model's identity statistics would hide fusion errors.
    """
    from yolodist.engine.checkpoint import build_checkpoint, save_checkpoint
    from yolodist.models import Model

    torch.manual_seed(seed)
    model = Model("yolov5n.yaml", nc=len(CHECKPOINT_NAMES))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    ckpt = build_checkpoint(
        model_state=model.state_dict(),
        ema_state=None,
        ema_updates=0,
        optimizer_state=None,
        epoch=-1,
        best_fitness=0.0,
        opt={},
        yaml=model.yaml,
        names=CHECKPOINT_NAMES,
        hyp={},
    )
    save_checkpoint(ckpt, path, keep_previous=False)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A YOLOv5n 3-class checkpoint (``best.pt``), written once per session; copy it before exporting next to it."""
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt")
