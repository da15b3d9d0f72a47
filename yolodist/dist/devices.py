"""``--device`` strings -> torch devices; which device each local rank drives."""

from __future__ import annotations

import torch

from yolodist.errors import BadFlag


def parse_device(device: str, cuda_count: int, mps_available: bool = False) -> list[torch.device]:
    """'' (first GPU, else CPU), 'cpu', 'mps', '0', '0,1', '2,3' -> the devices, checked to exist."""
    text = str(device).strip().lower().replace("cuda:", "").replace(" ", "")
    if text == "cpu":
        return [torch.device("cpu")]
    if text == "mps":
        if not mps_available:
            raise BadFlag("--device mps requested but MPS is not available on this machine; use --device cpu")
        return [torch.device("mps")]
    if text == "":
        return [torch.device("cuda", 0)] if cuda_count else [torch.device("cpu")]
    try:
        indices = [int(x) for x in text.split(",") if x != ""]
    except ValueError:
        raise BadFlag(f"--device {device!r} is not understood; use cpu, mps, 0 or a list like 0,1") from None
    if not indices or len(set(indices)) != len(indices):
        raise BadFlag(f"--device {device!r} must list distinct GPU indices, e.g. 0,1")
    missing = [i for i in indices if not 0 <= i < cuda_count]
    if missing:
        visible = f"0..{cuda_count - 1}" if cuda_count else "none"
        raise BadFlag(
            f"--device {device} requested but only {cuda_count} CUDA device(s) are visible ({visible}); "
            "choose visible GPUs or --device cpu"
        )
    return [torch.device("cuda", i) for i in indices]


def device_for_rank(devices: list[torch.device], local_rank: int, local_world_size: int) -> torch.device:
    """Local rank i drives the i-th listed device (every rank shares the CPU)."""
    if devices[0].type in ("cpu", "mps"):
        return devices[0]
    if len(devices) < local_world_size:
        raise BadFlag(
            f"{local_world_size} processes on this node but --device lists only {len(devices)} GPU(s) "
            f"({','.join(str(d.index) for d in devices)}); list one GPU per process or lower --nproc_per_node"
        )
    return devices[local_rank]
