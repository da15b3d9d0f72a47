"""Launch topology from environment mappings, and the distributed helpers in one process (no process group)."""

import logging
from types import SimpleNamespace

import pytest
import torch

from yolodist.distributed import env as dist_env
from yolodist.distributed.collectives import (
    all_gather_object,
    all_reduce,
    barrier,
    broadcast_object,
    reduce_dict,
    world_size,
)
from yolodist.distributed.env import DistEnv, dp_warning, from_environ
from yolodist.distributed.parallel import check_sync_bn, no_sync, unwrap, wrap
from yolodist.distributed.scope import main_first
from yolodist.distributed.session import _user_error, session
from yolodist.errors import BadFlag, DistFailure, PortBusy

TORCHRUN = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}


def _topology(env: DistEnv) -> tuple:
    return (env.mode, env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank)


def test_single_process_defaults():
    env = from_environ({}, device="", cuda_count=0)
    assert _topology(env) == ("single", 0, 0, 1, 1, 0)
    assert (env.device.type, env.backend, env.is_main, env.is_local_main, env.is_distributed) == (
        "cpu",
        None,
        True,
        True,
        False,
    )
    assert from_environ({}, device="", cuda_count=2).device == torch.device("cuda", 0)
    assert from_environ({"WORLD_SIZE": "1"}, device="cpu").mode == "single"  # a stray WORLD_SIZE=1 is harmless


def test_torchrun_variables():
    env = from_environ(TORCHRUN, device="cpu")
    assert _topology(env) == ("ddp", 3, 1, 4, 2, 1)
    assert env.backend == "gloo" and env.devices == (torch.device("cpu"),)
    assert env.is_distributed and not env.is_main and not env.is_local_main
    gpu = from_environ(TORCHRUN, device="2,3", cuda_count=4)
    assert gpu.device == torch.device("cuda", 3) and gpu.backend == "nccl"  # local rank 1 -> 2nd listed
    assert gpu.devices == (gpu.device,)
    # No --device: local rank i drives visible GPU i, as upstream's cuda:LOCAL_RANK.
    assert from_environ(TORCHRUN, device="", cuda_count=4).device == torch.device("cuda", 1)
    with pytest.raises(BadFlag, match="2 processes on this node"):
        from_environ(TORCHRUN, device="", cuda_count=1)


def test_one_process_under_a_launcher_is_ddp():
    env = from_environ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, device="cpu")
    assert _topology(env) == ("ddp", 0, 0, 1, 1, 0)


def test_missing_local_variables_mean_one_node():
    env = from_environ({"RANK": "1", "WORLD_SIZE": "2"}, device="cpu")
    assert _topology(env) == ("ddp", 1, 1, 2, 2, 0)


def test_restart_round_and_agent_store():
    env = from_environ({**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}, "cpu")
    assert (env.restart_count, env.agent_store) == (2, True)
    assert (from_environ(TORCHRUN, "cpu").restart_count, from_environ(TORCHRUN, "cpu").agent_store) == (0, False)


def test_restart_budget_and_a_job_key_that_outlives_restarts():
    launch = {**TORCHRUN, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "a/b c"}
    first = from_environ({**launch, "TORCHELASTIC_MAX_RESTARTS": "3"}, "cpu")
    again = from_environ({**launch, "TORCHELASTIC_MAX_RESTARTS": "3", "TORCHELASTIC_RESTART_COUNT": "1"}, "cpu")
    assert first.max_restarts == 3 and first.job_key == again.job_key == "10.0.0.1-29500-a_b_c"  # file-name safe
    assert from_environ({**launch, "MASTER_PORT": "29501"}, "cpu").job_key != first.job_key
    assert from_environ(TORCHRUN, "cpu").max_restarts == 0


def test_legacy_launch_local_rank_argument():
    env = from_environ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, device="cpu", local_rank_arg=1)
    assert env.local_rank == 1 and env.mode == "ddp"
    # LOCAL_RANK, when the launcher sets it too, is the authority.
    assert from_environ(TORCHRUN, device="cpu", local_rank_arg=0).local_rank == 1


def test_half_set_launcher_variables_are_errors():
    with pytest.raises(DistFailure, match="RANK is not"):
        from_environ({"WORLD_SIZE": "2"}, device="cpu")
    with pytest.raises(BadFlag, match="--local-rank 1 is set but no launcher variables"):
        from_environ({}, device="cpu", local_rank_arg=1)
    with pytest.raises(DistFailure, match="not an integer"):
        from_environ({**TORCHRUN, "RANK": "three"}, device="cpu")
    with pytest.raises(DistFailure, match="inconsistent"):
        from_environ({**TORCHRUN, "RANK": "4"}, device="cpu")
    with pytest.raises(DistFailure, match="inconsistent"):
        from_environ({**TORCHRUN, "LOCAL_RANK": "2"}, device="cpu")


def test_too_few_gpus_for_the_local_ranks():
    with pytest.raises(BadFlag, match="2 processes on this node"):
        from_environ(TORCHRUN, device="0", cuda_count=2)


def test_dataparallel_without_launcher():
    env = from_environ({}, device="0,1", cuda_count=2)
    assert env.mode == "dp" and env.devices == (torch.device("cuda", 0), torch.device("cuda", 1))
    assert env.device == torch.device("cuda", 0) and env.backend is None and not env.is_distributed
    advice = dp_warning(2, ["train.py", "--batch", "64", "--name", "my run"])
    assert "python -m torch.distributed.run --nproc_per_node 2 train.py --batch 64 --name 'my run'" in advice
    assert "\n" not in advice


def test_detect_reads_os_environ_and_logs_the_dp_advice(monkeypatch, caplog):
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    assert _topology(dist_env.detect("cpu")) == ("ddp", 3, 1, 4, 2, 1)
    for name in TORCHRUN:
        monkeypatch.delenv(name)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(dist_env.sys, "argv", ["train.py", "--device", "0,1"])
    with caplog.at_level(logging.WARNING, logger="yolodist.distributed.env"):
        assert dist_env.detect("0,1").mode == "dp"
    assert "--nproc_per_node 2 train.py --device 0,1" in caplog.text


def test_sync_bn_needs_ddp():
    with pytest.raises(BadFlag, match=r"--sync-bn needs DDP: launch with python -m torch\.distributed\.run"):
        check_sync_bn(DistEnv(), True)
    check_sync_bn(DistEnv(), False)
    with pytest.raises(BadFlag):
        wrap(torch.nn.Linear(2, 2), DistEnv(), sync_bn=True)


def test_collectives_are_identities_in_one_process():
    env = DistEnv()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce(t, env, "mean") is t and t.tolist() == [1.0, 2.0]
    assert all_reduce(t, env, "max") is t and world_size(env) == 1
    assert all_gather_object({"a": 1}, env) == [{"a": 1}]
    assert broadcast_object("x", env) == "x"
    assert reduce_dict({"b": t, "a": t}, env) == {"b": t, "a": t}
    barrier(env)
    with pytest.raises(ValueError, match="op must be"):
        all_reduce(t, env, "avg")
    with pytest.raises(ValueError, match="floating-point"):
        all_reduce(torch.tensor([1, 2]), env, "mean")


def test_session_and_main_first_are_identities_in_one_process():
    env = DistEnv()
    ran = []
    with session(env, timeout_s=1) as inside:
        with main_first(env, local=False, name="x"):
            ran.append(1)
    assert inside is env and ran == [1]


def test_wrap_unwrap_no_sync_without_ddp():
    env = DistEnv()
    model = torch.nn.Linear(2, 2)
    assert unwrap(wrap(model, env)) is model
    assert unwrap(torch.nn.DataParallel(model)) is model
    with no_sync(model, enabled=True):
        pass


@pytest.mark.parametrize(
    ("message", "kind", "words"),
    [
        ("The server socket has failed to listen on any local network address. EADDRINUSE", PortBusy, "free port"),
        ("Timed out after 31 seconds waiting for clients. 1/2 clients joined.", DistFailure, "not all 2 processes"),
        ("Connection refused: connect() failed", DistFailure, "--master_addr"),
        ("environment variable MASTER_ADDR expected, but not set", DistFailure, "torch.distributed.run"),
    ],
)
def test_launch_failures_become_user_errors(message, kind, words):
    error = _user_error(RuntimeError(message), SimpleNamespace(world_size=2), 30)
    assert isinstance(error, kind) and words in str(error)


def test_other_init_errors_are_not_disguised():
    assert _user_error(RuntimeError("CUDA error: out of memory"), SimpleNamespace(world_size=2), 30) is None
