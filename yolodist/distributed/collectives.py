"""Collectives that are identities in a single process.

Every rank must issue the same collectives in the same order; callers keep that discipline and
these helpers keep theirs (``reduce_dict`` sorts its keys). With nccl, tensors travel on this
rank's device and come back to where they were, so callers may pass CPU tensors either way.
"""

from __future__ import annotations

from types import FrameType

import torch
import torch.distributed as dist

from yolodist.distributed.env import DistEnv

_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def world_size(env: DistEnv) -> int:
    """The number of processes taking part in collectives (1 unless DDP)."""
    return env.world_size if env.is_distributed else 1


def barrier(env: DistEnv) -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if env.is_distributed:
        dist.barrier()


def all_reduce(tensor: torch.Tensor, env: DistEnv, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` (any shape) over all ranks in place and return it.

    op: 'sum', 'mean' (the sum divided by the world size; floating tensors only) or 'max'.
    """
    if op not in _OPS:
        raise ValueError(f"all_reduce op must be one of {sorted(_OPS)}, got {op!r}")
    if op == "mean" and not tensor.is_floating_point():
        raise ValueError(f"all_reduce 'mean' needs a floating-point tensor, got {tensor.dtype}")
    if not env.is_distributed:
        return tensor
    # nccl only reduces tensors on this rank's GPU; gloo only CPU tensors.
    wire_device = env.device if env.backend == "nccl" else torch.device("cpu")
    wire = tensor if tensor.device == wire_device else tensor.to(wire_device)
    dist.all_reduce(wire, op=_OPS[op])
    if op == "mean":
        wire /= env.world_size
    if wire is not tensor:
        tensor.copy_(wire)
    return tensor


def all_gather_object(obj: object, env: DistEnv) -> list:
    """Every rank's (picklable) ``obj``, in rank order, on every rank."""
    if not env.is_distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, env: DistEnv, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (the others' ``obj`` is ignored)."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_state(module: torch.nn.Module, env: DistEnv, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers of ``module`` to every rank, in place."""
    if not env.is_distributed:
        return
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            dist.broadcast(tensor.data, src=src)


def broadcast_buffers(module: torch.nn.Module, env: DistEnv, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, ...) of ``module`` to every rank, in place."""
    if not env.is_distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def reduce_dict(values: dict[str, torch.Tensor], env: DistEnv, average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduce a dict of same-shaped tensors (usually scalars) in one collective.

    Keys are sorted so every rank stacks them in the same order; the result is a new dict in
    sorted key order (the input is returned unchanged in one process); integer tensors come back
    as float64.
    """
    if not env.is_distributed:
        return values
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([values[k].detach().to(values[keys[0]].device) for k in keys])
    if not stacked.is_floating_point():
        stacked = stacked.double()
    all_reduce(stacked, env, "mean" if average else "sum")
    return dict(zip(keys, stacked.unbind(0), strict=True))


# How a collective reports that a peer went away (gloo, NCCL, the store); lower-case fragments.
_LOST_PEER = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "remote worker crashing",
    "socket closed",
    "ncclremoteerror",
    "communicator was aborted",
    "connection refused",
)
_TIMED_OUT = ("timed out waiting", "collective operation timeout", "wait timeout", "socket timeout")
# Code a thread is waiting in while it waits for its peers: our helpers, torch's collectives, and
# the autograd engine, where DDP's backward waits for its gradient all-reduce.
_WAITING_MODULES = ("yolodist.distributed.", "torch.distributed", "torch.nn.parallel", "torch.autograd")


def peer_failure(error: BaseException) -> str | None:
    """'lost' when ``error`` comes from a collective whose peer died, 'timeout' when it waited too long; else None.

    Lets the caller tell "another rank failed" from its own failure without parsing backend text itself.
    """
    if not isinstance(error, RuntimeError):  # gloo, NCCL and the store (DistError) all raise RuntimeErrors
        return None
    text = str(error).lower()
    if any(fragment in text for fragment in _LOST_PEER) or isinstance(error, dist.DistNetworkError):
        return "lost"
    if any(fragment in text for fragment in _TIMED_OUT):
        return "timeout"
    return None


def waiting_for_peers(frame: FrameType | None) -> bool:
    """Whether the stack ending in ``frame`` is inside a collective (or DDP's backward), i.e. waiting on others."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_WAITING_MODULES) and module != "yolodist.distributed.session":
            return True
        frame = frame.f_back
    return False
