"""Several launchers at once (nodes of one job, or unrelated jobs), each with a hard deadline.

Output goes to files rather than pipes, so no launcher can block on a full pipe while the test
waits for another. Every process carries the marker of :mod:`tests.distributed.conftest`, so whatever is
left when the deadline passes (launchers and their ranks) is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.distributed.conftest import MARKER, ROOT, _kill_marked

WRAPPER = Path(__file__).with_name("launch_wrapper.py")


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def python_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run_together(
    commands: Sequence[Sequence[str]], logs: Path, timeout: float, cwd: Path = ROOT, stagger_s: float = 0.0
) -> list[Finished]:
    """Start every command (``stagger_s`` apart), wait for all; fail the test if any outlives ``timeout``."""
    logs.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex
    env = {**python_env(), MARKER: marker}
    started = time.monotonic()
    procs, files = [], []
    try:
        for i, command in enumerate(commands):
            if i and stagger_s:
                time.sleep(stagger_s)
            out, err = (logs / f"{i}.out").open("w"), (logs / f"{i}.err").open("w")
            files += [out, err]
            procs.append(
                (
                    subprocess.Popen(
                        list(command), cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True
                    ),
                    time.monotonic(),
                )
            )
        ended: dict[int, float] = {}
        while len(ended) < len(procs):
            for i, (proc, _) in enumerate(procs):
                if i not in ended and proc.poll() is not None:
                    ended[i] = time.monotonic()
            if time.monotonic() - started > timeout:
                tails = "\n".join((logs / f"{i}.err").read_text()[-1500:] for i in range(len(procs)))
                pytest.fail(f"{len(commands)} launcher(s) did not all finish in {timeout:g} s\n{tails}")
            time.sleep(0.1)
    finally:
        _kill_marked(marker)
        for f in files:
            f.close()
    return [
        Finished(proc.returncode, (logs / f"{i}.out").read_text(), (logs / f"{i}.err").read_text(), ended[i] - t0)
        for i, (proc, t0) in enumerate(procs)
    ]


def run_one(command: Sequence[str], logs: Path, timeout: float, cwd: Path = ROOT) -> Finished:
    return run_together([command], logs, timeout, cwd)[0]


def tiny_train_args(data: Path, project: Path, name: str, *extra: str) -> list[str]:
    """``yolodist train`` flags for one quick epoch of YOLOv5n at 64 px on the tiny dataset."""
    return [
        "--data",
        str(data),
        "--cfg",
        "yolov5n.yaml",
        "--weights",
        "",
        "--img",
        "64",
        "--batch",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--noplots",
        "--project",
        str(project),
        "--name",
        name,
        *extra,
    ]
