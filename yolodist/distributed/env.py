"""The launch topology, read once from the launcher's environment into a frozen value.

Everything else in yolodist receives this value (or plain ints taken from it); nothing outside
``yolodist/distributed`` reads the launcher's variables.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from yolodist.distributed import slurm
from yolodist.distributed.devices import device_for_rank
from yolodist.errors import BadFlag, DistFailure
from yolodist.utils.devices import local_accelerators, parse_device

LOGGER = logging.getLogger(__name__)
CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, and what it computes on.

    ``mode`` is 'single' (one process, one device), 'dp' (one process driving several GPUs through
    DataParallel) or 'ddp' (one process per device, started by a launcher). ``devices`` lists every
    device this process drives: more than one only for 'dp'.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    mode: str = "single"
    device: torch.device = CPU
    backend: str | None = None
    devices: tuple[torch.device, ...] = (CPU,)
    # torchrun's restart round, and whether its agent's rendezvous store is shared with the workers
    # (static rendezvous): session() then keeps each round's keys apart (RELIABILITY.md finding 2).
    restart_count: int = 0
    agent_store: bool = False
    # How many restarts the launcher allows (--max-restarts), and a name for this launch that stays
    # the same across its restarts (the master's address and port, and the rendezvous id).
    max_restarts: int = 0
    job_key: str = ""
    # Set when SLURM's srun started the ranks without torchrun: where rank 0 hosts the process group's
    # store (torchrun passes these in MASTER_ADDR/MASTER_PORT instead).
    master_addr: str = ""
    master_port: int = 0
    # The SLURM job this process runs in ('' outside SLURM), and how often SLURM requeued it: a requeued
    # job continues its run like a torchrun restart round does.
    scheduler_job: str = ""
    requeues: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.mode == "ddp"


def _int_var(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise DistFailure(
                f"the launcher variable {name} is not set; start the job with python -m torch.distributed.run"
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistFailure(f"the launcher variable {name}={raw!r} is not an integer; unset it or relaunch") from None


def _launched(environ: Mapping[str, str], local_rank_arg: int | None) -> bool:
    """Whether a launcher started this process; half-set variables are errors, not guesses."""
    has_rank, has_world = "RANK" in environ, "WORLD_SIZE" in environ
    if has_rank and has_world:
        return True
    if has_world and _int_var(environ, "WORLD_SIZE") > 1:
        raise DistFailure(
            "WORLD_SIZE is set but RANK is not; launch with python -m torch.distributed.run "
            "--nproc_per_node N train.py ... or unset WORLD_SIZE"
        )
    if local_rank_arg is not None:
        raise BadFlag(
            f"--local-rank {local_rank_arg} is set but no launcher variables (RANK, WORLD_SIZE) are; "
            "launch with python -m torch.distributed.run --nproc_per_node N train.py ... or drop --local-rank"
        )
    return False


def _ddp_env(environ: Mapping[str, str], devices: list[torch.device], local_rank_arg: int | None) -> DistEnv:
    world = _int_var(environ, "WORLD_SIZE")
    rank = _int_var(environ, "RANK")
    # Without LOCAL_WORLD_SIZE the job is taken to be a single node, as with a hand-set environment.
    local_world = _int_var(environ, "LOCAL_WORLD_SIZE", world)
    fallback_local = local_rank_arg if local_rank_arg is not None else rank % max(local_world, 1)
    local_rank = _int_var(environ, "LOCAL_RANK", fallback_local)
    if not (world >= 1 and 0 <= rank < world and 1 <= local_world <= world and 0 <= local_rank < local_world):
        raise DistFailure(
            f"inconsistent launcher variables RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}, "
            f"LOCAL_WORLD_SIZE={local_world}; relaunch with python -m torch.distributed.run"
        )
    chosen = device_for_rank(devices, local_rank, local_world)
    return DistEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=_int_var(environ, "GROUP_RANK", rank // local_world),
        mode="ddp",
        device=chosen,
        backend="nccl" if chosen.type == "cuda" else "gloo",
        devices=(chosen,),
        restart_count=_int_var(environ, "TORCHELASTIC_RESTART_COUNT", 0),
        agent_store=environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
        max_restarts=_int_var(environ, "TORCHELASTIC_MAX_RESTARTS", 0),
        job_key=_job_key(environ),
    )


def _slurm_env(environ: Mapping[str, str], devices: list[torch.device]) -> DistEnv:
    """An ``srun`` task: DDP when the step has several tasks, one process otherwise."""
    task = slurm.task(environ)
    if task.world_size == 1:
        return DistEnv(device=devices[0], devices=(devices[0],))
    if devices[0].type == "cuda" and len(devices) == 1:
        chosen = devices[0]  # --gpus-per-task: SLURM made this task's one GPU the only visible one
    else:
        chosen = device_for_rank(devices, task.local_rank, task.local_world_size)
    return DistEnv(
        rank=task.rank,
        local_rank=task.local_rank,
        world_size=task.world_size,
        local_world_size=task.local_world_size,
        node_rank=task.node_rank,
        mode="ddp",
        device=chosen,
        backend="nccl" if chosen.type == "cuda" else "gloo",
        devices=(chosen,),
        master_addr=task.master_addr,
        master_port=task.master_port,
    )


def _in_slurm_job(env: DistEnv, environ: Mapping[str, str]) -> DistEnv:
    """Inside a SLURM job (any launcher, or none): the job may be requeued any number of times, and
    a requeued job continues this run; the launch is named after the job."""
    job = slurm.job(environ)
    if job is None:
        return env
    return dataclasses.replace(
        env, scheduler_job=job.job_id, requeues=job.restart_count, job_key=f"slurm-{job.job_id}", max_restarts=1 << 30
    )


def _job_key(environ: Mapping[str, str]) -> str:
    """A file-name-safe name of this launch, equal in every restart round: no two live launches share
    a master address and port, and a restart keeps both."""
    parts = (environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts))


def from_environ(
    environ: Mapping[str, str],
    device: str = "",
    local_rank_arg: int | None = None,
    cuda_count: int = 0,
    mps: bool = False,
) -> DistEnv:
    """The pure part of :func:`detect`: a mapping of environment variables in, a DistEnv out.

    A launcher (RANK and WORLD_SIZE set) means 'ddp'; so does an ``srun`` step of several tasks
    without torchrun (torchrun's variables win when both are there); several GPUs in ``device``
    without one mean 'dp'; anything else is 'single'. ``local_rank_arg`` is the legacy launcher's
    ``--local-rank``, used only when LOCAL_RANK is absent.
    """
    devices = parse_device(device, cuda_count, mps)
    if str(device).strip() == "" and cuda_count > 1:
        # No --device under a launcher: one visible GPU per local rank, as upstream (cuda:LOCAL_RANK).
        devices = [torch.device("cuda", i) for i in range(cuda_count)]
    if _launched(environ, local_rank_arg):
        env = _ddp_env(environ, devices, local_rank_arg)
    elif slurm.is_srun_step(environ):
        env = _slurm_env(environ, devices)
    elif len(devices) > 1 and str(device).strip() != "":  # DataParallel only when asked for by --device 0,1
        env = DistEnv(mode="dp", device=devices[0], devices=tuple(devices))
    else:
        env = DistEnv(device=devices[0], devices=(devices[0],))
    return _in_slurm_job(env, environ)


def detect(device: str = "", local_rank_arg: int | None = None) -> DistEnv:
    """Read this process's launch topology (torchrun, the legacy launcher, or none)."""
    env = from_environ(os.environ, device, local_rank_arg, *local_accelerators())
    if env.mode == "dp":
        LOGGER.warning(dp_warning(len(env.devices), sys.argv))
    return env


def dp_warning(n: int, argv: Sequence[str]) -> str:
    """The one-line advice logged when --device lists several GPUs without a launcher.

    ``argv`` is the command line as ``sys.argv`` gives it (script first), so the advice can be pasted.
    """
    command = shlex.join(["python", "-m", "torch.distributed.run", "--nproc_per_node", str(n), *argv])
    return f"DataParallel on {n} GPUs is slower than DDP and not recommended; for DDP run: {command}"
