"""The launch topology, read once from the launcher's environment into a frozen value."""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from yolodist.dist.devices import device_for_rank, parse_device

LOGGER = logging.getLogger(__name__)
CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    mode: str = "single"  # 'single' | 'dp' | 'ddp'
    device: torch.device = CPU
    backend: str | None = None
    devices: tuple[torch.device, ...] = (CPU,)
    restart_count: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.mode == "ddp"


def from_environ(
    environ: Mapping[str, str],
    device: str = "",
    local_rank_arg: int | None = None,
    cuda_count: int = 0,
    mps: bool = False,
) -> DistEnv:
    """The pure part of :func:`detect`: a mapping of environment variables in, a DistEnv out."""
    devices = parse_device(device, cuda_count, mps)
    launched = "RANK" in environ and "WORLD_SIZE" in environ
    if not launched:
        if len(devices) > 1:
            return DistEnv(mode="dp", device=devices[0], devices=tuple(devices))
        return DistEnv(device=devices[0], devices=(devices[0],))
    world = int(environ["WORLD_SIZE"])
    local_rank = int(environ.get("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0))
    local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    chosen = device_for_rank(devices, local_rank, local_world)
    return DistEnv(
        rank=int(environ["RANK"]),
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=int(environ.get("GROUP_RANK", 0)),
        mode="ddp",
        device=chosen,
        backend="nccl" if chosen.type == "cuda" else "gloo",
        devices=(chosen,),
        restart_count=int(environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
    )


def detect(device: str = "", local_rank_arg: int | None = None) -> DistEnv:
    """Read this process's launch topology (torchrun, the legacy launcher, or none)."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return from_environ(os.environ, device, local_rank_arg, torch.cuda.device_count(), mps)


def dp_warning(n: int, argv: list[str]) -> str:
    """The one-line advice printed when --device lists several GPUs without a launcher."""
    command = shlex.join(["python", "-m", "torch.distributed.run", "--nproc_per_node", str(n), *argv])
    return f"DataParallel on {n} GPUs is slow and not recommended; for DDP run: {command}"
