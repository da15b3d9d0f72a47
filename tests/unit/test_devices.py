"""--device strings -> devices, and which device each local rank drives (no GPU needed)."""

import os

import pytest
import torch

from yolodist.distributed.devices import device_for_rank
from yolodist.errors import BadFlag
from yolodist.utils.devices import parse_device


@pytest.mark.parametrize(
    ("device", "cuda", "mps", "expected"),
    [
        ("cpu", 0, False, ["cpu"]),
        ("CPU", 2, False, ["cpu"]),
        ("", 0, False, ["cpu"]),
        ("", 2, False, ["cuda:0"]),  # upstream: '' is the first GPU when there is one
        ("mps", 0, True, ["mps"]),
        ("0", 1, False, ["cuda:0"]),
        ("0,1", 2, False, ["cuda:0", "cuda:1"]),
        ("2,3", 4, False, ["cuda:2", "cuda:3"]),
        (" 0, 1 ", 2, False, ["cuda:0", "cuda:1"]),
        ("1,0", 2, False, ["cuda:1", "cuda:0"]),  # the listed order is the local-rank order
        ("cuda:1", 2, False, ["cuda:1"]),
        ("cuda", 1, False, ["cuda:0"]),
    ],
)
def test_parse_device(device, cuda, mps, expected):
    assert [str(d) for d in parse_device(device, cuda, mps)] == expected


@pytest.mark.parametrize(
    ("device", "cuda", "message"),
    [
        ("3", 2, r"--device 3 requested but only 2 CUDA devices are visible \(0\.\.1\)"),
        ("0,1", 1, r"only 1 CUDA device is visible \(0\.\.0\)"),
        ("0", 0, r"only 0 CUDA devices are visible \(none\)"),
        ("-1", 2, "only 2 CUDA"),
        ("x", 1, "not understood"),
        ("0;1", 2, "not understood"),
        ("0,0", 2, "distinct"),
        (",", 2, "distinct"),
        ("mps", 0, "MPS is not available"),
    ],
)
def test_bad_devices(device, cuda, message):
    with pytest.raises(BadFlag, match=message):
        parse_device(device, cuda)


def test_parse_device_never_touches_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    parse_device("2,3", 4)
    parse_device("cpu", 0)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_local_rank_drives_the_listed_device():
    listed = parse_device("2,3", 4)
    assert [device_for_rank(listed, r, 2) for r in (0, 1)] == [torch.device("cuda", 2), torch.device("cuda", 3)]


def test_every_rank_shares_the_cpu():
    assert {device_for_rank([torch.device("cpu")], r, 8) for r in range(8)} == {torch.device("cpu")}


def test_too_few_devices_for_the_ranks_on_a_node():
    with pytest.raises(BadFlag, match=r"2 processes on this node but --device lists only 1 GPU\(s\) \(0\)"):
        device_for_rank(parse_device("0", 1), 1, 2)
    with pytest.raises(BadFlag, match="lower --nproc_per_node"):
        device_for_rank(parse_device("0,1", 4), 0, 4)
    with pytest.raises(BadFlag, match="no device"):
        device_for_rank([], 0, 1)
