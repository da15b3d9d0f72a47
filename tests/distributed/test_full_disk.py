"""A disk that really fills during a save, under two ranks: one line, the last checkpoint intact, a resume.

The run's ``weights/`` folder is a tmpfs mounted by the test with room for exactly two checkpoints:
epoch 0 writes ``last.pt`` and ``best.pt``, and epoch 1's ``last.pt`` no longer fits (the previous
one is kept beside it until the new one is complete). Mounting needs root (CI runs as root); the
test is skipped with the reason where it is not allowed.
"""

from __future__ import annotations

import io
import subprocess

import pytest
import torch

from tests.conftest import tmpfs
from tests.distributed.conftest import ROOT, run_torchrun
from yolodist.models import Model

MB = 2**20


def checkpoint_bytes() -> int:
    """About what a yolov5n training checkpoint for six classes takes: weights, EMA and SGD momentum."""
    model = Model("yolov5n.yaml", nc=6)
    state = model.state_dict()
    ema = {k: v.clone() for k, v in state.items()}  # torch.save stores a shared tensor once
    momentum = [p.detach().clone() for p in model.parameters()]
    buffer = io.BytesIO()
    torch.save({"model": state, "ema": ema, "momentum": momentum}, buffer)
    return buffer.tell()


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs; yields a function that (re)sizes it. Unmounted afterwards."""
    with tmpfs(tmp_path / "runs" / "full" / "weights", 2 * checkpoint_bytes() + 4 * MB) as where:

        def resize(new_size: int) -> None:
            subprocess.run(["mount", "-o", f"remount,size={new_size}", str(where)], check=True)

        yield where, resize


@pytest.mark.dist
@pytest.mark.timeout(400)
def test_a_full_disk_stops_every_rank_with_one_line_and_resume_continues(tmp_path, tiny_shapes, small_disk):
    weights, resize = small_disk
    args = [str(ROOT / "train.py"), "--data", str(tiny_shapes), "--cfg", "yolov5n.yaml", "--weights", ""]
    args += ["--img", "64", "--batch", "4", "--epochs", "3", "--workers", "0", "--device", "cpu", "--noplots"]
    args += ["--project", str(tmp_path / "runs"), "--name", "full", "--exist-ok"]
    full = run_torchrun(args, cwd=tmp_path, timeout=240)
    output = full.stdout + full.stderr
    assert full.returncode != 0, output[-3000:]
    # Ours is one line per rank; torchrun then reports the failed children with a traceback of its own.
    our_frames = [line for line in output.splitlines() if line.strip().startswith("File ") and "yolodist" in line]
    assert our_frames == [] and "enforce fail" not in output, output[-5000:]
    last = weights / "last.pt"
    lines = [line for line in output.splitlines() if "yolodist train: error:" in line]
    assert any(
        f"could not write {last}: No space left on device" in line
        and "MB free on the disk of" in line
        and "Training stopped after epoch 1" in line
        and f"python train.py --resume {last}" in line
        for line in lines
    ), lines or output[-3000:]
    assert any("rank 1: stopped with rank 0, which could not write" in line for line in lines), lines
    # Nothing half-written: the epoch-0 checkpoint is whole and loads; no temp file is left.
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]
    assert torch.load(last, weights_only=True)["epoch"] == 0
    # Room again: the same run resumes from epoch 1 and finishes.
    resize(8 * checkpoint_bytes())
    resumed = run_torchrun([str(ROOT / "train.py"), "--resume", str(last)], cwd=tmp_path, timeout=240)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "Resuming training from epoch 1 to 3 total epochs" in resumed.stdout + resumed.stderr
    assert torch.load(last, weights_only=True)["epoch"] == 2
