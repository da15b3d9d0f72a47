"""``srun`` as the launcher, on a real SLURM cluster of one node: DDP without torchrun, and srun + torchrun."""

from __future__ import annotations

import shlex
import sys
import time

import pytest
import torch

from tests.conftest import concurrently, free_port
from tests.distributed.test_ddp import invariance_args, load_last

pytestmark = pytest.mark.timeout(400)


def test_srun_tasks_train_as_one_ddp_job(slurm_cluster, tmp_path, tiny_shapes):
    """srun -n 2 python train.py: one run of 2 processes, equal bit for bit to torchrun's 2-process run."""
    common = [*invariance_args(tiny_shapes, tmp_path), "--sync-bn"]
    proc, launched = concurrently(
        lambda: slurm_cluster.run(
            "srun", "-n", "2", sys.executable, *common, "--name", "srun", timeout=300, cwd=tmp_path
        ),
        lambda: slurm_cluster.run(
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *common, "--name", "torchrun", timeout=300, cwd=tmp_path,
        ),
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "2 process(es) x 4 images" in output, output[-3000:]
    assert output.count("Starting training for 2 epochs") == 1  # rank 1 logs nothing of its own
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["srun", "torchrun"]  # srun's one run, not two
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = load_last(tmp_path, "srun"), load_last(tmp_path, "torchrun")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_srun_torchrun_lets_torchrun_describe_the_job(slurm_cluster, tmp_path, tiny_shapes):
    """srun -n 1 torchrun --nproc_per_node 2 (one launcher per node): torchrun's variables win over SLURM's."""
    common = [*invariance_args(tiny_shapes, tmp_path), "--epochs", "1", "--name", "nested"]
    proc = slurm_cluster.run(
        "srun", "-n", "1", sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *common, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "2 process(es) x 4 images" in output, output[-3000:]
    assert (tmp_path / "runs" / "nested" / "weights" / "last.pt").is_file()


def test_srun_of_one_task_is_one_process(slurm_cluster, tmp_path, tiny_shapes):
    common = [*invariance_args(tiny_shapes, tmp_path), "--epochs", "1", "--name", "one"]
    proc = slurm_cluster.run("srun", "-n", "1", sys.executable, *common, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "1 process(es) x 8 images" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("dead", "line"),
    [
        (1, "rank(s) 1 of 2 never joined within 10 s"),
        # The slow layer's: the same wait for the other tasks, seen from the ranks that are not rank 0.
        pytest.param(0, "rank 0 never opened", marks=pytest.mark.slow),
    ],
)
def test_a_task_that_never_joins_is_named_by_the_ranks_that_did(slurm_cluster, tmp_path, tiny_shapes, dead, line):
    """One task of two exits before joining: the other ends within --dist-timeout with one line naming it."""
    common = [*invariance_args(tiny_shapes, tmp_path), "--dist-timeout", "10", "--name", "partial"]
    task = f'[ "$SLURM_PROCID" = {dead} ] && exit 3; exec {shlex.join([sys.executable, *common])}'
    started = time.monotonic()
    proc = slurm_cluster.run("srun", "-n", "2", "--kill-on-bad-exit=0", "bash", "-c", task, timeout=200, cwd=tmp_path)
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output, output[-3000:]
    errors = [ln for ln in output.splitlines() if "yolodist train: error:" in ln]
    assert len(errors) == 1 and line in errors[0], output[-3000:]
    assert f"rank {1 - dead}:" in errors[0]
    assert seconds < 100, seconds  # the 10 s wait, after start-up (imports, dataset scan) on a loaded machine
