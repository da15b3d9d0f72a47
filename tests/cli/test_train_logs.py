"""Training output as a batch job keeps it (a file: plain lines) and as a terminal shows it (a redrawn bar)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

TABLE_HEADER = re.compile(r"^\s+Class\s+Images\s+Instances\s+P\s+R\s+mAP50\s+mAP50-95$")
PROGRESS_LINE = re.compile(
    r"^epoch (\d+)/1  (\d+)/4 batches  box \d+\.\d{4} obj \d+\.\d{4} cls \d+\.\d{4}  mem \S+  "
    r"\d+\.\d img/s  ETA \d+:\d\d:\d\d$"
)


def train_args(data: Path, project: Path, epochs: int) -> list[str]:
    return [
        str(ROOT / "train.py"),
        *("--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--img", "64", "--batch", "4"),
        *("--epochs", str(epochs), "--workers", "0", "--device", "cpu", "--noplots"),
        *("--project", str(project), "--name", "exp"),
    ]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("YOLODIST_PROGRESS", None)
    return env


@pytest.mark.timeout(240)
def test_a_batch_job_log_has_plain_lines(tmp_path, tiny_shapes):
    """As under nohup or SLURM: stdout and stderr into one file."""
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, *train_args(tiny_shapes, tmp_path / "runs", 2)],
            cwd=tmp_path,
            env=child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=200,
            check=False,
        )
    text = log.read_bytes().decode()  # not read_text(): universal newlines would turn "\r" into "\n"
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text and "Traceback" not in text
    lines = text.splitlines()
    progress = [PROGRESS_LINE.match(line) for line in lines]
    # Epochs of 4 batches take a second or two: only each epoch's last batch has its line.
    assert [(m.group(1), m.group(2)) for m in progress if m] == [("0", "4"), ("1", "4")], text[-3000:]
    # One summary block per epoch, and best.pt's at the end (as upstream's "Validating best.pt...").
    assert sum(bool(TABLE_HEADER.match(line)) for line in lines) == 3
    assert [line.split(":")[0] for line in lines if re.match(r"^epoch \d+: \d+ images in", line)] == [
        "epoch 0",
        "epoch 1",
    ]
    assert not any("box_loss" in line for line in lines)  # the bar's header belongs to the bar


def read_terminal(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as its stdout and stderr; returns (exit code, output)."""
    leader, follower = pty.openpty()
    # A terminal of 24 x 120: a new pty has a size of 0 x 0, in which tqdm draws an empty bar.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            pytest.fail(f"training on a terminal did not finish in {timeout:g} s")
    finally:
        os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.mark.timeout(240)
def test_a_terminal_still_gets_the_bar(tmp_path, tiny_shapes):
    code, text = read_terminal(
        [sys.executable, *train_args(tiny_shapes, tmp_path / "runs", 1)], tmp_path, child_env(), timeout=200
    )
    assert code == 0, text[-3000:]
    # A terminal ends lines with "\r\n"; a bar redraws with a "\r" of its own.
    assert re.search("\r(?!\n)", text) and "100%|" in text and "box_loss" in text
    assert not any(PROGRESS_LINE.match(line.strip()) for line in text.splitlines())
