"""Collectives that are identities in a single process, issued in the same order on every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist

from yolodist.dist.env import DistEnv

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "mean": dist.ReduceOp.SUM}


def world_size(env: DistEnv) -> int:
    return env.world_size if env.is_distributed else 1


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


def all_reduce(tensor: torch.Tensor, env: DistEnv, op: str = "sum") -> torch.Tensor:
    """All-reduce in place (and return) ``tensor``; 'mean' divides the sum by the world size."""
    if not env.is_distributed:
        return tensor
    dist.all_reduce(tensor, op=_OPS[op])
    if op == "mean":
        tensor /= env.world_size
    return tensor


def all_gather_object(obj: object, env: DistEnv) -> list:
    if not env.is_distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, env: DistEnv, src: int = 0) -> object:
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_dict(values: dict[str, torch.Tensor], env: DistEnv, average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalars; keys are sorted so every rank reduces them in the same order."""
    if not env.is_distributed:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k] for k in keys])
    all_reduce(stacked, env, "mean" if average else "sum")
    return dict(zip(keys, stacked, strict=True))
