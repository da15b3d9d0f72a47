"""Ctrl-C and SIGTERM: every rank stops at the same optimiser step, a checkpoint resumes mid-epoch exactly (F8, F9).

``fault_train.py --fault slow`` sleeps after each step and prints a line, so the test can send the
signal in the middle of an epoch. The resumed run is plain ``train.py --resume``; its final weights
must equal, bit for bit, those of a run that was never interrupted (CPU, --deterministic).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import free_port
from tests.distributed.test_faults import TRAIN, WRAPPER, Job, finish, launched, no_leftovers, torchrun_command


def flags(data: Path, project: Path, name: str) -> list[str]:
    """Two epochs of 4 steps; with --nbs 8 the updates after warm-up come every 2 batches (epoch 1: steps 1, 3).

    The image cache is on (in a folder of the test's own): stopped runs must remove it too.
    """
    return [
        *("--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--img", "64", "--batch", "4"),
        *("--workers", "0", "--device", "cpu", "--noplots", "--nbs", "8", "--epochs", "2", "--deterministic"),
        *("--project", str(project), "--name", name, "--cache", "ram"),
    ]


@pytest.fixture
def shm(tmp_path, monkeypatch) -> Path:
    where = tmp_path / "shm"
    where.mkdir()
    monkeypatch.setenv("YOLODIST_SHM_DIR", str(where))
    return where


RUNTIME = ("--workers", "0", "--device", "cpu")  # not part of the run: a resume gives them anew


def assert_same_weights(a_path: Path, b_path: Path) -> None:
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and b["batches_done"] == 0
    for key in a["model"]:  # bitwise: CPU, --deterministic, all randomness keyed by (seed, epoch, index)
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert a["updates"] == b["updates"]


def check_interrupted(last: Path, output: str) -> int:
    """The checkpoint an interruption leaves: an optimiser-step boundary of a started epoch; returns its batch."""
    ckpt = torch.load(last, weights_only=True)
    done = ckpt["batches_done"]
    assert f"Interrupted at epoch {ckpt['epoch'] + 1} step {done}; resume with: python train.py --resume {last}" in (
        output
    ), output[-3000:]
    assert ckpt["optimizer"] is not None and done > 0
    return done


@pytest.mark.timeout(180)
def test_f9_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, tiny_shapes, shm):
    logs, runs = tmp_path / "logs", tmp_path / "runs"
    slow = [sys.executable, WRAPPER, "--fault", "slow", "--seconds", "0.5", "--"]
    with launched() as marker:
        reference = Job([sys.executable, TRAIN, *flags(tiny_shapes, runs, "full")], logs, "full", marker, cwd=tmp_path)
        cut = Job([*slow, *flags(tiny_shapes, runs, "cut")], logs, "cut", marker, cwd=tmp_path)
        cut.wait_for_text("rank 0 finished step 4", timeout=120)  # epoch 1 has begun
        cut.proc.send_signal(signal.SIGINT)
        finish([cut, reference], timeout=60)
        assert no_leftovers(marker) == []
    assert reference.proc.returncode == 0, reference.output[-3000:]
    assert cut.proc.returncode == 130, cut.output[-3000:]
    last = runs / "cut" / "weights" / "last.pt"
    check_interrupted(last, cut.output)
    assert list(shm.iterdir()) == []  # the image cache went with the job
    with launched() as marker:
        resumed = Job([sys.executable, TRAIN, "--resume", str(last), *RUNTIME], logs, "resumed", marker, cwd=tmp_path)
        finish([resumed], timeout=90)
    assert resumed.proc.returncode == 0, resumed.output[-3000:]
    assert_same_weights(runs / "full" / "weights" / "last.pt", last)


@pytest.mark.dist
@pytest.mark.timeout(240)
@pytest.mark.timing
def test_f8_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resumes_exactly(tmp_path, tiny_shapes, shm):
    logs, runs = tmp_path / "logs", tmp_path / "runs"
    slow = [WRAPPER, "--fault", "slow", "--seconds", "0.5", "--"]
    with launched() as marker:
        reference = Job(
            torchrun_command(TRAIN, *flags(tiny_shapes, runs, "full"), nproc=2, port=free_port()), logs, "full", marker
        )
        cut = Job(
            torchrun_command(*slow, *flags(tiny_shapes, runs, "cut"), nproc=2, port=free_port()), logs, "cut", marker
        )
        cut.wait_for_text("rank 0 finished step 4", timeout=120)
        cut.proc.send_signal(signal.SIGTERM)  # the launcher forwards it to its ranks
        finish([cut, reference], timeout=60)
        assert no_leftovers(marker) == []
    assert reference.proc.returncode == 0, reference.output[-3000:]
    output = cut.output
    assert cut.proc.returncode != 0
    last = runs / "cut" / "weights" / "last.pt"
    done = check_interrupted(last, output)
    assert f"rank 1: interrupted at epoch 1 step {done} together with rank 0" in output  # the same step
    assert output.count("Traceback") == 1  # the launcher's own (it was signalled); the ranks say one line each
    assert list(shm.iterdir()) == []  # the image cache went with the job
    with launched() as marker:
        resumed = Job(
            torchrun_command(TRAIN, "--resume", str(last), *RUNTIME, nproc=2, port=free_port()), logs, "res", marker
        )
        finish([resumed], timeout=90)
    assert resumed.proc.returncode == 0, resumed.output[-3000:]
    assert_same_weights(runs / "full" / "weights" / "last.pt", last)
