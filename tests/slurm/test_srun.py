"""``srun`` as the launcher, on a real SLURM cluster of one node: DDP without torchrun, and srun + torchrun."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import free_port
from tests.dist.test_ddp import invariance_args, load_last

pytestmark = pytest.mark.timeout(400)


def test_srun_tasks_train_as_one_ddp_job(slurm_cluster, tmp_path, tiny_shapes):
    """srun -n 2 python train.py: one run of 2 processes, equal bit for bit to torchrun's 2-process run."""
    common = [*invariance_args(tiny_shapes, tmp_path), "--sync-bn", "--noplots"]
    proc = slurm_cluster.run("srun", "-n", "2", sys.executable, *common, "--name", "srun", timeout=300, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "2 process(es) x 4 images" in output, output[-3000:]
    assert output.count("Starting training for 2 epochs") == 1  # rank 1 logs nothing of its own
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["srun"]  # one run, not two
    launched = slurm_cluster.run(
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), *common, "--name", "torchrun", timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = load_last(tmp_path, "srun"), load_last(tmp_path, "torchrun")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_srun_torchrun_lets_torchrun_describe_the_job(slurm_cluster, tmp_path, tiny_shapes):
    """srun -n 1 torchrun --nproc_per_node 2 (one launcher per node): torchrun's variables win over SLURM's."""
    common = [*invariance_args(tiny_shapes, tmp_path), "--epochs", "1", "--noplots", "--name", "nested"]
    proc = slurm_cluster.run(
        "srun", "-n", "1", sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *common, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "2 process(es) x 4 images" in output, output[-3000:]
    assert (tmp_path / "runs" / "nested" / "weights" / "last.pt").is_file()


def test_srun_of_one_task_is_one_process(slurm_cluster, tmp_path, tiny_shapes):
    common = [*invariance_args(tiny_shapes, tmp_path), "--epochs", "1", "--noplots", "--name", "one"]
    proc = slurm_cluster.run("srun", "-n", "1", sys.executable, *common, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "1 process(es) x 8 images" in proc.stdout + proc.stderr
