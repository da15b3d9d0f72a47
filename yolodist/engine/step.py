"""One optimisation step: micro-batch forward/backward, then (at accumulation boundaries) the update.

The loss comes back as per-level sums and counts. The counts are all-reduced so every rank divides
by the *global* number of matched targets and grid cells: the gradient DDP averages is then the
gradient of the one-process loss over the whole global batch (world-size invariance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from yolodist.dist import collectives, parallel
from yolodist.dist.env import DistEnv
from yolodist.engine.ema import ModelEMA
from yolodist.engine.loss import reduce_loss

MAX_GRAD_NORM = 10.0


@dataclass
class StepContext:
    net: nn.Module  # the wrapped model (plain, DataParallel or DDP)
    model: nn.Module  # the unwrapped model the EMA follows
    loss_fn: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    env: DistEnv
    total_batch: int
    amp: bool


def train_step(ctx: StepContext, imgs: torch.Tensor, targets: torch.Tensor, update: bool) -> torch.Tensor:
    """Forward/backward one micro-batch; step the optimiser when ``update``. Returns (box, obj, cls) items.

    No host-device synchronisation happens here: the returned items stay on the device.
    """
    with parallel.no_sync(ctx.net, enabled=not update):
        with torch.autocast(ctx.env.device.type, enabled=ctx.amp):
            preds = ctx.net(imgs)
            terms = ctx.loss_fn([p.float() for p in preds], targets)
        counts = collectives.all_reduce(terms.counts.detach().clone(), ctx.env, op="sum")
        loss, items = reduce_loss(terms, counts, ctx.loss_fn.weights, batch_size=ctx.total_batch)
        # DDP averages gradients over ranks; scaling by the world size turns that average into the sum.
        ctx.scaler.scale(loss * ctx.env.world_size).backward()
    if update:
        ctx.scaler.unscale_(ctx.optimizer)
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), max_norm=MAX_GRAD_NORM)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.ema is not None:
            ctx.ema.update(ctx.model)
    return items
