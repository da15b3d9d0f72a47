"""Shared fixtures: tiny generated datasets, free ports, subprocess runners."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small built-in 'shapes' dataset (YAML path), generated once per test session."""
    from yolodist.data.synthetic import ensure_shapes

    return ensure_shapes(tmp_path_factory.mktemp("datasets") / "shapes", n_train=16, n_val=8, img_size=128, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(
    args: list[str], cwd: Path, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a root script (``train.py`` ...) as a user would, with one thread per process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_shapes) -> Path:
    """An untrained yolov5n checkpoint for the built-in classes, biased to detect (many boxes above 0.001)."""
    import torch
    import yaml

    from yolodist.engine.checkpoint import build_checkpoint, save_checkpoint
    from yolodist.models import Model

    names = yaml.safe_load(tiny_shapes.read_text())["names"]
    names = list(names.values()) if isinstance(names, dict) else list(names)
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=len(names))
    with torch.no_grad():
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 3.0  # objectness up: detections to score and draw
    ckpt = build_checkpoint(
        model_state=model.state_dict(),
        ema_state=None,
        ema_updates=0,
        optimizer_state=None,
        epoch=-1,
        best_fitness=0.0,
        opt={},
        yaml=model.yaml,
        names=names,
        hyp={},
    )
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(ckpt, path)
    return path
