"""Shared fixtures: tiny generated datasets, free ports, subprocess runners."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
# Folders whose every test launches real ranks, nodes or a cluster (marked ``dist``). The SLURM tests
# are also ``timing``: they share one cluster per test session, so they run in one process.
DIST_FOLDERS = ("distributed", "slurm", "gpu")
TIMING_FOLDERS = ("slurm",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = ROOT / "tests"
    for item in items:
        folder = item.path.relative_to(tests).parts[0] if item.path.is_relative_to(tests) else ""
        if folder in DIST_FOLDERS:
            item.add_marker(pytest.mark.dist)
        if folder in TIMING_FOLDERS:
            item.add_marker(pytest.mark.timing)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small built-in 'shapes' dataset (YAML path), generated once per test session."""
    from yolodist.data.synthetic import ensure_shapes

    return ensure_shapes(tmp_path_factory.mktemp("datasets") / "shapes", n_train=16, n_val=8, img_size=128, seed=0)


@contextlib.contextmanager
def tmpfs(where: Path, size: int | str) -> Iterator[Path]:
    """A tmpfs of ``size`` (bytes or "16k") mounted at ``where`` for the block; skips the test where
    mounting is not allowed (it needs root). Unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in ``log_dir``, as TensorBoard loads them: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def concurrently(*jobs: Callable[[], T]) -> list[T]:
    """Run independent blocking jobs (trainings in subprocesses) at the same time; their results in order.

    A training spends part of its time starting up or waiting; two side by side finish sooner than one
    after the other. Only for jobs whose results do not depend on timing (deterministic runs).
    """
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        return [future.result() for future in [pool.submit(job) for job in jobs]]


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
    import yaml

    names = yaml.safe_load(tiny_shapes.read_text())["names"]
    names = list(names.values()) if isinstance(names, dict) else list(names)

    def detect_more(model) -> None:
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 3.0  # objectness up: detections to score and draw

    return write_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt", names, edit=detect_more)


def write_checkpoint(
    path: Path,
    names: Sequence[str],
    *,
    seed: int = 0,
    edit: Callable[[torch.nn.Module], None] | None = None,
) -> Path:
    """Write an untrained YOLOv5n checkpoint for ``names`` through our checkpoint API.

    ``edit(model)`` may change the model first (e.g. push head biases so that detections appear).
    """
    import torch

    from yolodist.checkpoint.files import save_checkpoint
    from yolodist.checkpoint.state import build_checkpoint
    from yolodist.models import Model

    torch.manual_seed(seed)
    model = Model("yolov5n.yaml", nc=len(names))
    if edit is not None:
        with torch.no_grad():
            edit(model)
    ckpt = build_checkpoint(
        model_state=model.state_dict(),
        ema_state=None,
        ema_updates=0,
        optimizer_state=None,
        epoch=-1,
        best_fitness=0.0,
        opt={},
        yaml=model.yaml,
        names=list(names),
        hyp={},
    )
    save_checkpoint(ckpt, path, keep_previous=False)
    return path


def val_images(data: Path, size: int) -> torch.Tensor:
    """The val images of the tiny set, resized to ``size`` square, as a 0-1 float RGB batch."""
    import cv2
    import numpy as np
    import torch

    files = sorted((data.parent / "images" / "val").iterdir())
    imgs = [cv2.resize(cv2.imread(str(f))[..., ::-1], (size, size)) for f in files]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="session")
def calibrated_checkpoint(tmp_path_factory, tiny_shapes) -> Path:
    """An untrained YOLOv5n whose BatchNorm statistics were measured on the tiny val images.

    With a fresh model's statistics (mean 0, variance 1) the signal fades layer by layer and the
    predictions hardly depend on the image (measured: 2e-4 px between two different images, less than
    float16 changes them), so a half-precision path that mangled its input would still agree with
    float32. Measured statistics keep the activations at unit scale: another image then moves the
    predictions by 6 px and 0.026 in score on average. Objectness is raised so that val.py has boxes to score.
    """
    import yaml
    from torch import nn

    names = yaml.safe_load(tiny_shapes.read_text())["names"]
    names = list(names.values()) if isinstance(names, dict) else list(names)
    imgs = val_images(tiny_shapes, 128)

    def calibrate(model: nn.Module) -> None:
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 3.0
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
        model.train()
        model(imgs)
        model.eval()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    return write_checkpoint(tmp_path_factory.mktemp("weights") / "calibrated.pt", names, edit=calibrate)
