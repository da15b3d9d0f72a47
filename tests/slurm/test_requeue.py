"""Preemption on a real SLURM cluster: the warning signal stops every rank at one step, rank 0 checkpoints,
the job requeues itself, and the requeued job finishes the same run with the weights of an uninterrupted one."""

from __future__ import annotations

import shlex
import sys
import time

import pytest

from tests.cli.test_interrupt import assert_same_weights
from tests.conftest import ROOT, concurrently
from tests.distributed.test_faults import WRAPPER

TRAIN = str(ROOT / "train.py")


def flags(data, runs, name: str) -> list[str]:
    """Two epochs of 4 steps (updates every 2 batches after warm-up), bit-reproducible on CPU."""
    return [
        *("--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--img", "64", "--batch", "4"),
        *("--workers", "0", "--device", "cpu", "--noplots", "--nbs", "8", "--epochs", "2", "--deterministic"),
        *("--project", str(runs), "--name", name),
    ]


def wait_for(predicate, timeout: float, what: str, details=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}\n{details()}")
        time.sleep(0.5)


@pytest.mark.timeout(600)
def test_warning_signal_checkpoints_requeues_and_the_requeued_job_finishes(slurm_cluster, tmp_path, tiny_shapes):
    runs, log = tmp_path / "runs", tmp_path / "job.log"
    slow = [sys.executable, WRAPPER, "--fault", "slow", "--seconds", "0.5", "--"]
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --ntasks=2 --requeue --open-mode=append --output={log}\n"
        f"srun {shlex.join([*slow, *flags(tiny_shapes, runs, 'cut')])}\n"
    )
    text = lambda: log.read_text() if log.is_file() else ""  # noqa: E731

    def cut_and_requeued() -> str:
        submitted = slurm_cluster.run("sbatch", "--parsable", str(script), cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip().split(";")[0]
        wait_for(lambda: "rank 0 finished step 4" in text(), 180, "epoch 1 to begin", text)
        # What sbatch --signal=USR1@120 sends before the time limit: to every task of the job's steps.
        sent = slurm_cluster.run("scancel", "--signal=USR1", job)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: slurm_cluster.job_field(job, "Restarts") == "1", 120, "the job to requeue itself", text)
        output = text()
        assert f"requeueing SLURM job {job}: it continues this run from its last.pt" in output, output[-3000:]
        assert "rank 1: interrupted at epoch 1 step" in output and "Traceback" not in output, output[-3000:]
        # SLURM holds a requeued job back for two minutes before it may start again; start it now.
        wait_for(lambda: slurm_cluster.job_state(job) == "PENDING", 120, "the requeued job to be pending", text)
        slurm_cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
        wait_for(lambda: slurm_cluster.job_state(job) == "COMPLETED", 300, "the requeued job to finish", text)
        return text()

    # The uninterrupted run trains at the same time as the job that is cut and requeued.
    reference, output = concurrently(
        lambda: slurm_cluster.run(
            "srun", "-n", "2", sys.executable, TRAIN, *flags(tiny_shapes, runs, "full"), timeout=300, cwd=tmp_path
        ),
        cut_and_requeued,
    )
    assert reference.returncode == 0, (reference.stdout + reference.stderr)[-3000:]
    assert "requeue 1 of SLURM job: continuing this launch's run from" in output, output[-3000:]
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["cut", "full"]  # the same run, continued
    assert_same_weights(runs / "full" / "weights" / "last.pt", runs / "cut" / "weights" / "last.pt")
    assert not list(runs.glob(".restart-*"))  # the finished run forgot its note
