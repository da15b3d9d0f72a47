"""SLURM as a launcher: ``srun`` starts one task per GPU, and each task learns its place from SLURM's variables.

Under ``srun --ntasks-per-node=G python train.py ...`` there is no torchrun: global rank, local rank,
world size and node rank come from ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS`` and
``SLURM_NODEID``; the master is the first host of the step's node list (SLURM's hostlist syntax,
``gpu[01-04,07],login1``) and the port is derived from the job id, so every task of a job computes
the same one without talking to the others. ``MASTER_ADDR``/``MASTER_PORT`` override both, and
torchrun's own variables win over all of this (``srun torchrun ...``, one launcher per node).

Only ``yolodist.distributed.env`` calls in here: it is the one reader of launcher variables.
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from yolodist.errors import DistFailure

LOGGER = logging.getLogger(__name__)

PORT_BASE, PORT_SPAN = 20000, 20000  # job-derived master ports: 20000-39999
_GROUP = re.compile(r"\[([^\]]*)\]")
_REPEAT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list -> host names, in order: ``a[1-3,07],b`` -> a1, a2, a3, a07, b.

    Ranges keep the zero padding of their first number (``gpu[08-10]`` -> gpu08, gpu09, gpu10); several
    bracket groups in one name expand as a product (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2).
    """
    hosts: list[str] = []
    for entry in _top_level_split(hostlist.strip()):
        parts = _GROUP.split(entry)  # text, group, text, group, ..., text
        if any("[" in p or "]" in p for p in parts[::2]):
            raise ValueError(f"unbalanced brackets in host list {hostlist!r}")
        choices = [[p] if i % 2 == 0 else _expand_ranges(p, hostlist) for i, p in enumerate(parts)]
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside brackets."""
    out, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in host list {text!r}")
        if ch == "," and depth == 0:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"unbalanced brackets in host list {text!r}")
    out.append("".join(current))
    return [e for e in out if e]


def _expand_ranges(spec: str, hostlist: str) -> list[str]:
    out = []
    for item in spec.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in host list {hostlist!r}")
        width = len(lo)
        out += [str(n).zfill(width) for n in range(int(lo), int(hi if sep else lo) + 1)]
    return out


def expand_tasks_per_node(spec: str) -> list[int]:
    """``SLURM_TASKS_PER_NODE`` syntax -> tasks on each node in order: ``2(x3),1`` -> [2, 2, 2, 1]."""
    out: list[int] = []
    for item in spec.split(","):
        match = _REPEAT.match(item.strip())
        if not match:
            raise ValueError(f"bad tasks-per-node value {spec!r}")
        out += [int(match.group(1))] * int(match.group(2) or 1)
    return out


def is_srun_step(environ: Mapping[str, str]) -> bool:
    """Whether this process is a task of an ``srun`` step (not the batch script itself, not torchrun)."""
    return "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ and "SLURM_JOB_ID" in environ


def is_multi_task_step(environ: Mapping[str, str]) -> bool:
    """An srun step of several tasks: they are the job's ranks, no launcher is to be started from them."""
    return is_srun_step(environ) and environ.get("SLURM_NTASKS", "1").strip() not in ("", "1")


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    restart_count: int  # times SLURM requeued the job (preemption, node failure, scontrol requeue)


def job(environ: Mapping[str, str]) -> SlurmJob | None:
    """The SLURM job this process runs in (batch script, srun task or salloc shell), or None."""
    job_id = environ.get("SLURM_JOB_ID", "").strip()
    if not job_id:
        return None
    return SlurmJob(job_id, _int(environ, "SLURM_RESTART_COUNT", 0))


def requeue(job_id: str) -> str:
    """Ask SLURM to requeue the job; returns what happened, in words for the user."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"scontrol is not on PATH, so SLURM job {job_id} was not requeued; resubmit it to continue"
    # SLURM ends the job's steps as soon as it takes the requeue, often before this process can print
    # what happened: say it first.
    LOGGER.warning(f"requeueing SLURM job {job_id}: it continues this run from its last.pt when it starts again")
    try:
        proc = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"scontrol requeue {job_id} failed ({error}); resubmit the job to continue"
    if proc.returncode:
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no reason given"]
        return f"SLURM did not requeue job {job_id} ({why[0]}; submit with --requeue); resubmit it to continue"
    return f"SLURM job {job_id} requeued"


@dataclass(frozen=True)
class SlurmTask:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name, "")
    if raw.strip() == "" and default is not None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistFailure(f"SLURM variable {name}={raw!r} is not an integer; run the job under srun") from None


def task(environ: Mapping[str, str]) -> SlurmTask:
    """This srun task's place in the job; call only when :func:`is_srun_step` holds."""
    rank, world = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS", 1)
    node = _int(environ, "SLURM_NODEID", 0)
    local_rank = _int(environ, "SLURM_LOCALID", 0)
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or ""
    try:
        counts = expand_tasks_per_node(per_node) if per_node else []
    except ValueError as error:
        raise DistFailure(str(error)) from None
    local_world = counts[node] if node < len(counts) else _int(environ, "SLURM_NTASKS_PER_NODE", world)
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or ""
    addr = environ.get("MASTER_ADDR") or _first_host(nodelist)
    port = _int(environ, "MASTER_PORT", 0) or job_port(environ.get("SLURM_JOB_ID", "0"))
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world and node >= 0):
        raise DistFailure(
            f"inconsistent SLURM variables SLURM_PROCID={rank}, SLURM_NTASKS={world}, SLURM_LOCALID={local_rank}, "
            f"tasks on this node {local_world}; launch with srun --ntasks-per-node=G"
        )
    return SlurmTask(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=node,
        master_addr=addr,
        master_port=port,
    )


def _first_host(nodelist: str) -> str:
    """The first host of the node list (``scontrol show hostnames`` order); localhost when there is none."""
    if not nodelist:
        return "127.0.0.1"
    try:
        hosts = expand_hostlist(nodelist)
    except ValueError:
        hosts = _scontrol_hostnames(nodelist)
    if not hosts:
        raise DistFailure(f"cannot read the first host of SLURM's node list {nodelist!r}; set MASTER_ADDR")
    return hosts[0]


def _scontrol_hostnames(nodelist: str) -> list[str]:
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return []
    proc = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=False)
    return proc.stdout.split() if proc.returncode == 0 else []


def job_port(job_id: str) -> int:
    """The master port every task of a job derives from its id (the same after a requeue)."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN
