"""One optimisation step: micro-batch forward/backward, then (at accumulation boundaries) the update.

The loss comes back as per-level sums and counts. The counts are all-reduced so every rank divides
by the *global* number of matched targets and grid cells: the gradient DDP averages is then the
gradient of the one-process loss over the whole global batch (world-size invariance).

At each update (not each micro-batch, to keep host synchronisations rare) the ranks exchange one
small flag tensor: whether any rank saw a non-finite loss or gradient in this accumulation window,
and whether any rank was asked to stop (SIGINT/SIGTERM). Every rank then makes the same decision:
skip the update together, or stop together after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from yolodist.dist import collectives, parallel
from yolodist.dist.env import DistEnv
from yolodist.engine.ema import ModelEMA
from yolodist.engine.loss import reduce_loss

MAX_GRAD_NORM = 10.0
MAX_SKIPPED_UPDATES = 10  # consecutive non-finite updates before training stops


def no_signal() -> int:
    return 0


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
    # The signal number this rank was asked to stop with (0: none); read at every update.
    pending_signal: Callable[[], int] = no_signal
    # Written at every update, for the trainer: whether all ranks skipped it, for how many updates
    # in a row, and the signal all ranks agreed to stop on after it (0: go on).
    skipped: bool = False
    skipped_in_a_row: int = 0
    stop_signal: int = 0
    window_nonfinite: torch.Tensor | None = None  # bool, on the device: a non-finite loss since the last update


def train_step(ctx: StepContext, imgs: torch.Tensor, targets: torch.Tensor, update: bool) -> torch.Tensor:
    """Forward/backward one micro-batch; step the optimiser when ``update``. Returns (box, obj, cls) items.

    No host-device synchronisation happens here except at an update, where the ranks agree on
    skipping (non-finite values) or stopping (a signal). The returned items stay on the device.
    """
    with parallel.no_sync(ctx.net, enabled=not update):
        with torch.autocast(ctx.env.device.type, enabled=ctx.amp):
            preds = ctx.net(imgs)
            terms = ctx.loss_fn([p.float() for p in preds], targets)
        counts = collectives.all_reduce(terms.counts.detach().clone(), ctx.env, op="sum")
        loss, items = reduce_loss(terms, counts, ctx.loss_fn.weights, batch_size=ctx.total_batch)
        # DDP averages gradients over ranks; scaling by the world size turns that average into the sum.
        ctx.scaler.scale(loss * ctx.env.world_size).backward()
    nonfinite = ~torch.isfinite(loss.detach())
    ctx.window_nonfinite = nonfinite if ctx.window_nonfinite is None else ctx.window_nonfinite | nonfinite
    if update:
        apply_update(ctx)
    return items


def apply_update(ctx: StepContext) -> None:
    """Unscale, clip and step (or, when any rank saw NaN/inf, skip on every rank); zero the gradients."""
    ctx.scaler.unscale_(ctx.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), max_norm=MAX_GRAD_NORM)
    local_bad = torch.zeros((), dtype=torch.bool, device=ctx.env.device)
    if ctx.window_nonfinite is not None:
        local_bad |= ctx.window_nonfinite
    if not ctx.scaler.is_enabled():
        # With AMP, inf gradients are the scaler's business (it skips the step and lowers the scale).
        local_bad |= ~torch.isfinite(grad_norm)
    ctx.window_nonfinite = None
    any_bad, signal = agree(ctx, local_bad)
    ctx.skipped, ctx.stop_signal = any_bad, signal
    if not any_bad:
        ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()  # also after a skip: unscale_ has recorded this window's inf checks
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.skipped_in_a_row = ctx.skipped_in_a_row + 1 if any_bad else 0
    if not any_bad and ctx.ema is not None:
        ctx.ema.update(ctx.model)


def agree(ctx: StepContext, local_bad: torch.Tensor) -> tuple[bool, int]:
    """(whether any rank saw a non-finite value, the largest pending signal number of any rank): one all-reduce."""
    flags = torch.zeros(2, device=local_bad.device)
    flags[0] = local_bad.float()
    flags[1] = float(ctx.pending_signal())
    bad, signal = collectives.all_reduce(flags, ctx.env, op="max").tolist()  # the one host sync of an update
    return bad > 0, int(signal)
