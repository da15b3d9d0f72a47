"""Launch topology from environment mappings and --device strings (no processes needed)."""

import pytest
import torch

from yolodist.dist.collectives import all_gather_object, all_reduce, barrier, broadcast_object, reduce_dict
from yolodist.dist.devices import device_for_rank, parse_device
from yolodist.dist.env import DistEnv, dp_warning, from_environ
from yolodist.dist.parallel import check_sync_bn, no_sync, unwrap, wrap
from yolodist.errors import BadFlag

TORCHRUN = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}


def test_single_process_defaults():
    env = from_environ({}, device="", cuda_count=0)
    assert (env.mode, env.rank, env.world_size, env.device.type, env.is_main) == ("single", 0, 1, "cpu", True)
    assert from_environ({}, device="", cuda_count=2).device == torch.device("cuda", 0)


def test_torchrun_variables():
    env = from_environ(TORCHRUN, device="cpu")
    assert (env.mode, env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == (
        "ddp",
        3,
        1,
        4,
        2,
        1,
    )
    assert env.backend == "gloo" and not env.is_main and not env.is_local_main
    gpu = from_environ(TORCHRUN, device="2,3", cuda_count=4)
    assert gpu.device == torch.device("cuda", 3) and gpu.backend == "nccl"  # local rank 1 -> 2nd listed


def test_legacy_launch_local_rank_argument():
    env = from_environ({"RANK": "1", "WORLD_SIZE": "2"}, device="cpu", local_rank_arg=1)
    assert env.local_rank == 1 and env.mode == "ddp"


def test_dataparallel_without_launcher():
    env = from_environ({}, device="0,1", cuda_count=2)
    assert env.mode == "dp" and len(env.devices) == 2
    assert "torch.distributed.run --nproc_per_node 2 train.py --batch 64" in dp_warning(
        2, ["train.py", "--batch", "64"]
    )


@pytest.mark.parametrize(
    ("device", "cuda", "expected"),
    [
        ("cpu", 0, ["cpu"]),
        ("", 0, ["cpu"]),
        ("0", 1, ["cuda:0"]),
        (" 0, 1 ", 2, ["cuda:0", "cuda:1"]),
        ("cuda:1", 2, ["cuda:1"]),
    ],
)
def test_parse_device(device, cuda, expected):
    assert [str(d) for d in parse_device(device, cuda)] == expected


@pytest.mark.parametrize(
    ("device", "cuda", "message"),
    [
        ("3", 2, "only 2 CUDA"),
        ("0", 0, "only 0 CUDA"),
        ("x", 1, "not understood"),
        ("0,0", 2, "distinct"),
        ("mps", 0, "MPS"),
    ],
)
def test_bad_devices(device, cuda, message):
    with pytest.raises(BadFlag, match=message):
        parse_device(device, cuda)


def test_too_few_devices_for_ranks():
    with pytest.raises(BadFlag, match="2 processes on this node"):
        device_for_rank([torch.device("cuda", 0)], 1, 2)
    assert device_for_rank([torch.device("cpu")], 5, 8).type == "cpu"


def test_sync_bn_needs_ddp():
    with pytest.raises(BadFlag, match=r"torch\.distributed\.run"):
        check_sync_bn(DistEnv(), True)
    check_sync_bn(DistEnv(), False)
    with pytest.raises(BadFlag):
        wrap(torch.nn.Linear(2, 2), DistEnv(), sync_bn=True)


def test_collectives_are_identities_in_one_process():
    env = DistEnv()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce(t, env, "mean") is t and t.tolist() == [1.0, 2.0]
    assert all_gather_object({"a": 1}, env) == [{"a": 1}]
    assert broadcast_object("x", env) == "x"
    assert reduce_dict({"b": t, "a": t}, env) == {"b": t, "a": t}
    barrier(env)
    model = torch.nn.Linear(2, 2)
    assert unwrap(wrap(model, env)) is model
    with no_sync(model, enabled=True):
        pass
