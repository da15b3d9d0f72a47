"""Optimiser and learning-rate schedule as upstream YOLOv5: three parameter groups, warm-up, linear/cosine."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from yolodist.config.schema import OPTIMIZERS
from yolodist.errors import BadFlag

LOGGER = logging.getLogger(__name__)

# Every normalisation layer torch.nn exports (upstream's rule: "Norm" in the class name), plus the
# private bases so subclasses count too (our CPU SyncBN derives from _BatchNorm). Computed, so that
# no module outside yolodist/distributed names the distributed BatchNorm class.
NORM_TYPES: tuple[type, ...] = (
    *(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type)),
    nn.modules.batchnorm._NormBase,
)


def param_groups(model: nn.Module) -> tuple[list, list, list]:
    """Split parameters as upstream: (weights with decay, normalisation weights, biases).

    A parameter named ``bias`` is a bias; any other parameter of a normalisation layer is a
    normalisation weight; everything else (conv/linear weights) gets decay.
    A parameter shared by several modules is listed once.
    """
    weights, norm_weights, biases = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if name == "bias":
                biases.append(param)
            elif isinstance(module, NORM_TYPES):
                norm_weights.append(param)
            else:
                weights.append(param)
    return weights, norm_weights, biases


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, decay: float) -> Optimizer:
    """SGD (Nesterov), Adam or AdamW over upstream's three parameter groups, in upstream's order.

    Group order (``x/lr0``, ``x/lr1``, ``x/lr2`` in results.csv are these groups):

    - group 0: biases, no weight decay (warm-up starts its lr at ``warmup_bias_lr``)
    - group 1: conv/linear weights, weight decay ``decay``
    - group 2: normalisation-layer weights, no weight decay

    SGD uses ``momentum`` with Nesterov (plain SGD when ``momentum`` is 0); Adam/AdamW use
    ``betas=(momentum, 0.999)``.
    """
    weights, norm_weights, biases = param_groups(model)
    # A list of one group dict, not a bare list, so a model without biases still gets group 0.
    first = [{"params": biases}]
    impl = implementation(weights + norm_weights + biases)
    if name == "SGD":
        # torch refuses Nesterov without momentum; a hyp file with momentum 0 means plain SGD.
        optimizer: Optimizer = torch.optim.SGD(first, lr=lr, momentum=momentum, nesterov=momentum > 0, **impl)
    elif name == "Adam":
        optimizer = torch.optim.Adam(first, lr=lr, betas=(momentum, 0.999), **impl)
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(first, lr=lr, betas=(momentum, 0.999), weight_decay=0.0, **impl)
    else:
        raise BadFlag(f"--optimizer {name!r} is not supported; choose one of {', '.join(OPTIMIZERS)}")
    optimizer.add_param_group({"params": weights, "weight_decay": decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    LOGGER.info(
        f"optimizer: {type(optimizer).__name__}(lr={lr}) with parameter groups "
        f"{len(norm_weights)} weight(decay=0.0), {len(weights)} weight(decay={decay}), {len(biases)} bias"
    )
    return optimizer


def implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a float tensor on the CPU or a CUDA GPU, else ``{}``.

    torch uses its for-loop optimisers on the CPU unless told otherwise; the fused kernels do the
    same update several times faster (YOLOv5n on one CPU thread: AdamW 8.6 -> 1.8 ms, SGD 3.5 ->
    1.0 ms per step). Every rank does the whole update, so under DDP this time does not shrink
    with more ranks: it bounds the scaling.
    """
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if params and fusable else {}


def accumulate_steps(batch_size: int, nbs: int = 64) -> int:
    """Batches per optimiser step, so each step sees about the nominal batch ``nbs`` (>= 1)."""
    return max(round(nbs / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nbs: int = 64) -> float:
    """Weight decay scaled to the images per optimiser step: ``wd * batch * accumulate / nbs``."""
    return weight_decay * batch_size * accumulate / nbs


def lr_lambda(epochs: int, lrf: float, cos: bool) -> Callable[[int], float]:
    """LR factor per epoch for ``LambdaLR``: 1 at epoch 0, ``lrf`` at ``epochs``.

    Linear: ``(1 - x / epochs) * (1 - lrf) + lrf``; cosine one-cycle:
    ``((1 - cos(x * pi / epochs)) / 2) * (lrf - 1) + 1``.
    """
    if cos:

        def one_cycle(x: int) -> float:
            return ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1

        return one_cycle

    def linear(x: int) -> float:
        return (1 - x / epochs) * (1.0 - lrf) + lrf

    return linear


def epoch_factor(lf: Callable[[int], float]) -> Callable[[int], float]:
    """The LR factor epoch ``x`` trains at once warm-up is over: ``lf(x - 1)``, and ``lf(0)`` for epoch 0.

    This is the schedule upstream's users train with: upstream builds its ``LambdaLR`` and then sets
    ``last_epoch = start_epoch - 1``, so the step at each epoch's end sets the factor of the epoch just
    finished. Each epoch after warm-up trains one epoch "behind" ``lf`` and the last one at
    ``lf(epochs - 2)``: ``lrf`` itself is never reached. Warm-up still aims at ``lf(epoch)``.
    Training at ``lf(x)`` instead ends with less learning in the low-LR epochs (at 14 epochs the last
    one runs at half of upstream's LR), which measurably costs accuracy on short runs.
    """

    def factor(x: int) -> float:
        return lf(max(x - 1, 0))

    return factor


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, minimum: int = 100) -> int:
    """Warm-up length in optimiser iterations: ``max(round(warmup_epochs * steps_per_epoch), minimum)``.

    Upstream's formula, including its quirk that ``minimum`` iterations are warmed up even when
    ``warmup_epochs`` is 0; pass ``minimum=0`` to turn warm-up off that way.
    """
    return max(round(warmup_epochs * steps_per_epoch), minimum)


def warmup(
    optimizer: Optimizer,
    step: int,
    warmup_steps: int,
    epoch: int,
    lf: Callable[[int], float],
    warmup_bias_lr: float,
    momentum: float,
    warmup_momentum: float,
) -> None:
    """Set each group's lr (and SGD momentum) for warm-up iteration ``step`` of ``warmup_steps``.

    Linear in ``step`` as upstream (``np.interp``): group 0 (biases) falls from ``warmup_bias_lr``,
    the other groups rise from 0, all to ``initial_lr * lf(epoch)``; ``momentum`` rises from
    ``warmup_momentum`` to ``momentum`` in groups that have one (SGD). Adam's betas are left alone,
    as upstream. Past ``warmup_steps`` the values stay at the end points.
    """
    xi = [0, warmup_steps]
    for j, group in enumerate(optimizer.param_groups):
        # LambdaLR sets initial_lr; without a scheduler the configured lr is the initial one.
        target = group.setdefault("initial_lr", group["lr"]) * lf(epoch)
        start = warmup_bias_lr if j == 0 else 0.0
        group["lr"] = float(np.interp(step, xi, [start, target]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(step, xi, [warmup_momentum, momentum]))
