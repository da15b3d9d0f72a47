"""SLURM as a launcher: hostlists, tasks per node, and the DistEnv an srun task gets (environment mappings)."""

from __future__ import annotations

import pytest
import torch

from yolodist.distributed import slurm
from yolodist.distributed.env import from_environ
from yolodist.errors import BadFlag, DistFailure


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node1", ["node1"]),
        ("gpu[01-04,07],login1", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "login1"]),
        ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),  # padding of the first number kept past a carry
        ("a,b[2-3],c", ["a", "b2", "b3", "c"]),
        ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
        ("node[5]-ib", ["node5-ib"]),
        ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
        ("", []),
    ],
)
def test_hostlist_expands_as_scontrol_show_hostnames(hostlist, hosts):
    assert slurm.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-04", "gpu01-04]", "gpu[a-b]", "gpu[1-]"])
def test_malformed_hostlists_are_refused(bad):
    with pytest.raises(ValueError):
        slurm.expand_hostlist(bad)


def test_tasks_per_node():
    assert slurm.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert slurm.expand_tasks_per_node("4") == [4]
    with pytest.raises(ValueError):
        slurm.expand_tasks_per_node("2(3)")


def step(**over: str) -> dict[str, str]:
    """Task 5 of an srun step over 3 nodes of 4, 4 and 2 tasks (what srun sets, as seen on a real step)."""
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "10",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2),2",
        "SLURM_TASKS_PER_NODE": "4(x2),2",
        "SLURM_STEP_NODELIST": "gpu[07-08],login1",
        "SLURM_JOB_NODELIST": "gpu[07-08],login1",
    }
    return {**env, **over}


def topology(env) -> tuple:
    return (env.mode, env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank)


def test_an_srun_task_is_a_ddp_rank():
    env = from_environ(step(), device="cpu")
    assert topology(env) == ("ddp", 5, 1, 10, 4, 1)
    assert (env.master_addr, env.master_port) == ("gpu07", slurm.job_port("123456"))
    assert env.backend == "gloo" and env.job_key == "slurm-123456" and env.requeues == 0
    assert env.scheduler_job == "123456" and env.max_restarts > 0
    last = from_environ(step(SLURM_PROCID="9", SLURM_LOCALID="1", SLURM_NODEID="2"), device="cpu")
    assert topology(last) == ("ddp", 9, 1, 10, 2, 2)  # the third node runs 2 tasks


def test_every_task_of_a_job_derives_the_same_port_and_a_requeue_keeps_it():
    ports = {from_environ(step(SLURM_PROCID=str(r)), device="cpu").master_port for r in range(4)}
    assert len(ports) == 1 and 20000 <= ports.pop() < 40000
    requeued = from_environ(step(SLURM_RESTART_COUNT="2"), device="cpu")
    assert requeued.master_port == slurm.job_port("123456") and requeued.requeues == 2
    assert requeued.restart_count == 0  # torchrun's round count (its store prefix) stays apart
    assert slurm.job_port("123457") != slurm.job_port("123456")


def test_master_variables_override_slurms_choice():
    env = from_environ(step(MASTER_ADDR="10.1.2.3", MASTER_PORT="29555"), device="cpu")
    assert (env.master_addr, env.master_port) == ("10.1.2.3", 29555)


def test_torchrun_variables_win_over_slurms():
    """srun torchrun ...: one launcher per node, and its workers' variables describe the job."""
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}
    env = from_environ({**step(SLURM_NTASKS="2", SLURM_PROCID="1"), **torchrun}, device="cpu")
    assert topology(env) == ("ddp", 3, 1, 4, 2, 1) and env.master_addr == ""  # torchrun's MASTER_* apply


def test_batch_script_and_single_task_are_one_process():
    batch = step()
    del batch["SLURM_STEP_ID"]  # the batch script itself: no step
    alone = from_environ({**batch, "SLURM_RESTART_COUNT": "1"}, device="cpu")
    assert alone.mode == "single" and (alone.scheduler_job, alone.requeues) == ("123456", 1)
    assert from_environ({}, device="cpu").scheduler_job == ""
    single = {"SLURM_NTASKS": "1", "SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_STEP_NODELIST": "gpu07"}
    one = from_environ(step(**single, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0"), device="cpu")
    assert one.mode == "single" and one.job_key == "slurm-123456"  # a requeued job still continues its run


def test_gpu_of_a_task():
    # All 4 GPUs of the node visible: local rank 1 takes the second.
    assert from_environ(step(), device="", cuda_count=4).device == torch.device("cuda", 1)
    # --gpus-per-task=1: SLURM shows each task its own GPU only.
    env = from_environ(step(), device="", cuda_count=1)
    assert env.device == torch.device("cuda", 0) and env.backend == "nccl"
    with pytest.raises(BadFlag, match="4 processes on this node"):
        from_environ(step(), device="", cuda_count=2)


def test_inconsistent_slurm_variables_are_one_line():
    with pytest.raises(DistFailure, match="inconsistent SLURM variables"):
        from_environ(step(SLURM_PROCID="10"), device="cpu")
    with pytest.raises(DistFailure, match="SLURM_NTASKS"):
        from_environ(step(SLURM_NTASKS="ten"), device="cpu")
