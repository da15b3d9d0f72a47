"""One optimisation step: micro-batch forward/backward, then (at accumulation boundaries) the update.

The loss comes back as per-level sums and counts. The counts are all-reduced so every rank divides
by the *global* number of matched targets and grid cells: the gradient DDP averages is then the
gradient of the one-process loss over the whole global batch (world-size invariance).

Decisions are shared without a collective of their own (on a loopback gloo group each one costs
~1.5 ms, a few percent of a CPU step). Each rank's news rides on the counts all-reduce: whether its
loss is NaN/inf, and which stop signal (SIGINT/SIGTERM) it was sent. Non-finite *gradients* need no
exchange: after DDP's all-reduce every rank holds the same gradients, hence the same norm. At each
update (the one host synchronisation of an accumulation window) every rank reads the same sums and
makes the same decision: skip the update together, or stop together after it.
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
from yolodist.engine.watchdog import STOP_SIGNALS

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
    autocast: torch.dtype | None  # float16/bfloat16 autocast, or None for float32
    # The signal number this rank was asked to stop with (0: none); read at every micro-batch.
    pending_signal: Callable[[], int] = no_signal
    # Written at every update, for the trainer: whether all ranks skipped it, for how many updates
    # in a row, and the signal all ranks agreed to stop on after it (0: go on).
    skipped: bool = False
    skipped_in_a_row: int = 0
    stop_signal: int = 0
    # Summed over ranks and over the micro-batches since the last update, on the device:
    # [ranks with a non-finite loss, ranks sent STOP_SIGNALS[0], ranks sent STOP_SIGNALS[1], ...].
    window_news: torch.Tensor | None = None


def train_step(ctx: StepContext, imgs: torch.Tensor, targets: torch.Tensor, update: bool) -> torch.Tensor:
    """Forward/backward one micro-batch; step the optimiser when ``update``. Returns (box, obj, cls) items.

    No host-device synchronisation happens here except at an update, where the ranks agree on
    skipping (non-finite values) or stopping (a signal). The returned items stay on the device.
    """
    with parallel.no_sync(ctx.net, enabled=not update):
        with torch.autocast(ctx.env.device.type, dtype=ctx.autocast, enabled=ctx.autocast is not None):
            preds = ctx.net(imgs)
            terms = ctx.loss_fn([p.float() for p in preds], targets)
        counts = share_counts(ctx, terms.counts.detach(), local_news(ctx, terms.sums.detach()))
        loss, items = reduce_loss(terms, counts, ctx.loss_fn.weights, batch_size=ctx.total_batch)
        # DDP averages gradients over ranks; scaling by the world size turns that average into the sum.
        ctx.scaler.scale(loss * ctx.env.world_size).backward()
    if update:
        apply_update(ctx)
    return items


def local_news(ctx: StepContext, sums: torch.Tensor) -> torch.Tensor:
    """This rank's ``[non-finite loss, sent STOP_SIGNALS[0], ...]`` as 0/1 floats on the device.

    The loss is finite exactly when its sums are (the counts are clamped to >= 1, the weights finite).
    """
    pending = ctx.pending_signal()
    signals = torch.tensor([float(pending == sig) for sig in STOP_SIGNALS])
    return torch.cat([(~torch.isfinite(sums).all()).float().view(1), signals.to(sums.device)])


def share_counts(ctx: StepContext, counts: torch.Tensor, news: torch.Tensor) -> torch.Tensor:
    """The target counts summed over ranks; the ranks' news, summed too, is added to ``ctx.window_news``."""
    shared = collectives.all_reduce(torch.cat([counts.flatten(), news]), ctx.env, op="sum")
    window = shared[counts.numel() :]
    ctx.window_news = window if ctx.window_news is None else ctx.window_news + window
    return shared[: counts.numel()].view_as(counts)


def apply_update(ctx: StepContext) -> None:
    """Unscale, clip and step (or, when any rank saw NaN/inf, skip on every rank); zero the gradients."""
    ctx.scaler.unscale_(ctx.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), max_norm=MAX_GRAD_NORM)
    device = grad_norm.device
    news = ctx.window_news if ctx.window_news is not None else torch.zeros(1 + len(STOP_SIGNALS), device=device)
    ctx.window_news = None
    # With AMP, inf gradients are the scaler's business (it skips the step and lowers the scale).
    bad_grads = (~torch.isfinite(grad_norm) & (not ctx.scaler.is_enabled())).float().view(1)
    nonfinite_loss, *signalled, nonfinite_grads = torch.cat([news.to(device), bad_grads]).tolist()  # the one sync
    any_bad = nonfinite_loss > 0 or nonfinite_grads > 0
    ctx.skipped = any_bad
    ctx.stop_signal = max((sig for sig, n in zip(STOP_SIGNALS, signalled, strict=True) if n > 0), default=0)
    if not any_bad:
        ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()  # also after a skip: unscale_ has recorded this window's inf checks
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.skipped_in_a_row = ctx.skipped_in_a_row + 1 if any_bad else 0
    if not any_bad and ctx.ema is not None:
        ctx.ema.update(ctx.model)
