"""Optimiser and learning-rate schedule as upstream YOLOv5: three parameter groups, warm-up, linear/cosine."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov), Adam or AdamW with upstream's three parameter groups, in upstream's order.

    Group 0: biases (no decay); group 1: conv/linear weights (``decay``); group 2: normalisation
    weights (no decay). ``x/lr0``, ``x/lr1``, ``x/lr2`` in results.csv are these groups.
    """
    biases, weights, norm_weights = [], [], []
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if pname == "bias":
                biases.append(param)
            elif isinstance(module, NORM_TYPES):
                norm_weights.append(param)
            else:
                weights.append(param)
    if name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name in ("Adam", "AdamW"):
        cls = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
        optimizer = cls(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    optimizer.add_param_group({"params": weights, "weight_decay": decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    return optimizer


def accumulate_steps(batch_size: int, nbs: int = 64) -> int:
    """Micro-batches per optimiser step so each step sees about the nominal batch ``nbs``."""
    return max(round(nbs / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nbs: int = 64) -> float:
    return weight_decay * batch_size * accumulate / nbs


def lr_lambda(epochs: int, lrf: float, cos: bool) -> Callable[[int], float]:
    """Learning-rate factor per epoch: linear from 1 to ``lrf``, or a cosine one-cycle."""
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def warmup(
    optimizer: torch.optim.Optimizer,
    step: int,
    warmup_steps: int,
    epoch: int,
    lf: Callable[[int], float],
    warmup_bias_lr: float,
    momentum: float,
    warmup_momentum: float,
) -> None:
    """Linear warm-up: the bias group falls from ``warmup_bias_lr``, the others rise from 0, to lr0 * lf(epoch)."""
    xi = [0, warmup_steps]
    for j, group in enumerate(optimizer.param_groups):
        start = warmup_bias_lr if j == 0 else 0.0
        group["lr"] = float(np.interp(step, xi, [start, group["initial_lr"] * lf(epoch)]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(step, xi, [warmup_momentum, momentum]))
        elif "betas" in group:
            group["betas"] = (float(np.interp(step, xi, [warmup_momentum, momentum])), group["betas"][1])
