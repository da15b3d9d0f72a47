"""One optimisation step: micro-batch forward/backward, then (at accumulation boundaries) the update.

The loss comes back as per-level sums and counts. The counts are all-reduced so every rank divides
by the *global* number of matched targets and grid cells: the gradient DDP averages is then the
gradient of the one-process loss over the whole global batch (world-size invariance).

Decisions are shared without a collective of their own (on a loopback gloo group each one costs
~1.5 ms, a few percent of a CPU step). Each rank's news rides on the counts all-reduce: whether its
loss is NaN/inf, and which stop signal (SIGINT/SIGTERM) it was sent. Non-finite *gradients* need no
exchange: after DDP's all-reduce every rank holds the same gradients, hence the same norm. At each
update (the one host synchronisation of an accumulation window) every rank reads the same sums and
makes the same decision: skip the update together, or stop together after it. The step returns that
decision (a :class:`StepOutcome`); what to do about it is the trainer's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import nn

from yolodist.distributed import collectives, parallel
from yolodist.distributed.env import DistEnv
from yolodist.engine.ema import ModelEMA
from yolodist.engine.loss import reduce_loss

MAX_GRAD_NORM = 10.0


class StopSource(Protocol):
    """Where a rank learns that it was asked to stop (``distributed.lifecycle.StopSignals`` in a training run)."""

    @property
    def watched(self) -> tuple[int, ...]:
        """The signals that stop a run, in the order the ranks count them."""
        ...

    def pending(self) -> int:
        """The signal this rank was sent (0: none)."""
        ...


class NoStop:
    """A source that never asks to stop: a step outside a training run (tests, benchmarks)."""

    watched: tuple[int, ...] = ()

    def pending(self) -> int:
        return 0


class WindowNews:
    """The ranks' news summed over the micro-batches since the last update, on the device:
    ``[ranks with a non-finite loss, ranks sent watched[0], ranks sent watched[1], ...]``."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None

    def add(self, news: torch.Tensor) -> None:
        self.sums = news if self.sums is None else self.sums + news

    def take(self, size: int, device: torch.device) -> torch.Tensor:
        """The window's sums (zeros when no micro-batch reported any); the next window starts afresh."""
        sums = self.sums if self.sums is not None else torch.zeros(size, device=device)
        self.sums = None
        return sums.to(device)


@dataclass(frozen=True)
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
    stop: StopSource = field(default_factory=NoStop)  # read at every micro-batch
    # The one thing a step carries to the next: its window's news, until the update reads it.
    window: WindowNews = field(default_factory=WindowNews)


class Agreement(NamedTuple):
    """What every rank decided together at an update."""

    skipped: bool  # the update was skipped: a rank's loss or the gradients were NaN/inf
    stop_signal: int  # the signal the ranks stop on after this update (0: go on)


class StepOutcome(NamedTuple):
    items: torch.Tensor  # (box, obj, cls) loss items of this micro-batch, on the device
    skipped: bool  # an update that every rank skipped (False when this micro-batch did not update)
    stop_signal: int  # the signal every rank agreed to stop on after this update (0: go on)


def train_step(ctx: StepContext, imgs: torch.Tensor, targets: torch.Tensor, update: bool) -> StepOutcome:
    """Forward/backward one micro-batch; step the optimiser when ``update``.

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
    agreed = apply_update(ctx) if update else Agreement(skipped=False, stop_signal=0)
    return StepOutcome(items, agreed.skipped, agreed.stop_signal)


def local_news(ctx: StepContext, sums: torch.Tensor) -> torch.Tensor:
    """This rank's ``[non-finite loss, sent watched[0], ...]`` as 0/1 floats on the device.

    The loss is finite exactly when its sums are (the counts are clamped to >= 1, the weights finite).
    """
    pending = ctx.stop.pending()
    signals = torch.tensor([float(pending == sig) for sig in ctx.stop.watched])
    return torch.cat([(~torch.isfinite(sums).all()).float().view(1), signals.to(sums.device)])


def share_counts(ctx: StepContext, counts: torch.Tensor, news: torch.Tensor) -> torch.Tensor:
    """The target counts summed over ranks; the ranks' news, summed too, is added to the window's."""
    shared = collectives.all_reduce(torch.cat([counts.flatten(), news]), ctx.env, op="sum")
    ctx.window.add(shared[counts.numel() :])
    return shared[: counts.numel()].view_as(counts)


def apply_update(ctx: StepContext) -> Agreement:
    """Unscale, clip and step (or, when any rank saw NaN/inf, skip on every rank); zero the gradients."""
    ctx.scaler.unscale_(ctx.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), max_norm=MAX_GRAD_NORM)
    news = ctx.window.take(1 + len(ctx.stop.watched), grad_norm.device)
    # With AMP, inf gradients are the scaler's business (it skips the step and lowers the scale).
    bad_grads = (~torch.isfinite(grad_norm) & (not ctx.scaler.is_enabled())).float().view(1)
    nonfinite_loss, *signalled, nonfinite_grads = torch.cat([news, bad_grads]).tolist()  # the one sync
    any_bad = nonfinite_loss > 0 or nonfinite_grads > 0
    stop_signal = max((sig for sig, n in zip(ctx.stop.watched, signalled, strict=True) if n > 0), default=0)
    if not any_bad:
        ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()  # also after a skip: unscale_ has recorded this window's inf checks
    ctx.optimizer.zero_grad(set_to_none=True)
    if not any_bad and ctx.ema is not None:
        ctx.ema.update(ctx.model)
    return Agreement(any_bad, stop_signal)
