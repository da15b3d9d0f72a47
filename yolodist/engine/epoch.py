"""One training epoch on this rank: its batches (only the rest of an epoch an interruption cut short,
when resuming), warm-up, accumulation windows, and what the ranks agreed at each update.

A resumed epoch continues exactly: only the batch indices already trained are skipped, not loaded.
Every sample's augmentation depends on (seed, epoch, index) alone, so the remaining batches are
those of the uninterrupted epoch. What a resume restores from the checkpoint is in
``yolodist.checkpoint.restore``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from yolodist.config.schema import Hyp
from yolodist.distributed import collectives
from yolodist.distributed.env import DistEnv
from yolodist.distributed.lifecycle import Guard, StopRequested
from yolodist.engine.build import OptimParts
from yolodist.engine.inputs import device_batch, network_input
from yolodist.engine.optim import warmup
from yolodist.engine.run import Run, RunProgress
from yolodist.engine.step import StepOutcome, train_step
from yolodist.errors import NonFiniteLoss
from yolodist.eval import plots

LOGGER = logging.getLogger(__name__)
LOG_EVERY = 10  # steps between loss synchronisations (the only host-device syncs of an epoch)
PLOTTED_TRAIN_BATCHES = 3  # train_batch0..2.jpg, as upstream
MAX_SKIPPED_UPDATES = 10  # consecutive non-finite updates before training stops


def train_one_epoch(
    run: Run, progress: RunProgress, epoch: int, guard: Guard | None = None, start: int = 0
) -> list[float]:
    """One pass over this rank's shard from batch ``start``; returns the mean (box, obj, cls) losses over all ranks."""
    ctx, data, cfg, reporter = run.ctx, run.data, run.cfg, run.reporter
    ctx.net.train()
    data.train_sampler.set_epoch(epoch)
    steps = len(data.train_loader)
    reporter.epoch_start(epoch, steps, start)
    started = time.perf_counter()
    loss_sum = torch.zeros(3, device=ctx.env.device)
    mean_losses = torch.zeros(3)
    # A resumed epoch starts right after an update, so its accumulation windows are the original's.
    last_update, logged = start - 1, start
    plot_batches = PLOTTED_TRAIN_BATCHES if ctx.env.is_main and not cfg.noplots and epoch == run.start_epoch else 0
    for i, batch in enumerate(batches_from(data.train_loader, start), start):
        if guard is not None:
            guard.pet(epoch, i)
        targets = batch.targets
        imgs = device_batch(batch.imgs, batch.hsv, ctx.env.device)
        if i < plot_batches:
            name = run.save_dir / f"train_batch{i}.jpg"
            plots.safe_plot(plots.plot_images, imgs.cpu(), targets, list(batch.paths), data.names, name)
        accumulate = apply_warmup(run.optim, run.hyp, run.warmup_iters, epoch, i + steps * epoch)
        imgs = network_input(imgs, cfg, run.stride, epoch, i)
        update = ends_window(i, last_update, accumulate, steps)
        outcome = train_step(ctx, imgs, targets.to(ctx.env.device), update)
        # A skipped update's NaN stays out of the mean.
        loss_sum += torch.nan_to_num(outcome.items, nan=0.0, posinf=0.0, neginf=0.0)
        if update:
            last_update = i
            after_update(progress, outcome, run.env, epoch, i)
        if (i + 1) % LOG_EVERY == 0 or i == steps - 1:
            mean_losses = collectives.all_reduce(loss_sum.clone(), ctx.env, op="sum").cpu() / (i + 1 - start)
            reporter.step(mean_losses, int(targets.shape[0]), imgs.shape[-1], done=i + 1, advance=i + 1 - logged)
            logged = i + 1
    reporter.epoch_end()
    seconds = time.perf_counter() - started
    images = (steps - start) * cfg.batch_size
    # Throughput over all ranks, training only (validation excluded); bench/ reads this line.
    LOGGER.info(f"epoch {epoch}: {images} images in {seconds:.1f} s ({images / seconds:.1f} images/s)")
    return mean_losses.tolist()


def apply_warmup(optim: OptimParts, hyp: Hyp, warmup_iters: int, epoch: int, global_step: int) -> int:
    """Set the warm-up lr and momentum for ``global_step``; returns the accumulation length in force."""
    if global_step > warmup_iters:
        return optim.accumulate
    warmup(
        optim.optimizer,
        global_step,
        warmup_iters,
        epoch,
        optim.lr_fn,
        hyp.warmup_bias_lr,
        hyp.momentum,
        hyp.warmup_momentum,
    )
    return warmup_accumulation(global_step, warmup_iters, optim.accumulate)


def warmup_accumulation(global_step: int, warmup_iters: int, accumulate: int) -> int:
    """Batches per update during warm-up: rising linearly (rounded) from 1 to ``accumulate``, as upstream."""
    return max(1, int(np.interp(global_step, [0, warmup_iters], [1, accumulate]).round()))


def ends_window(step: int, last_update: int, accumulate: int, steps: int) -> bool:
    """Whether batch ``step`` of an epoch of ``steps`` batches ends an accumulation window (an update).

    As upstream, an update comes once ``accumulate`` batches have passed since the last one. Unlike
    upstream, windows end with the epoch: its last batch always updates, where upstream drops the
    gradients of an unfinished window at the next epoch's start. The two agree whenever ``steps`` is
    a multiple of ``accumulate``; ours lets an epoch-end checkpoint resume exactly.
    """
    return step - last_update >= accumulate or step == steps - 1


def after_update(progress: RunProgress, outcome: StepOutcome, env: DistEnv, epoch: int, step: int) -> None:
    """Count and report a skipped (non-finite) update, give up after too many in a row; stop if the ranks agreed to."""
    in_a_row = progress.count_update(outcome.skipped)
    if outcome.skipped:
        if in_a_row >= MAX_SKIPPED_UPDATES:
            if not env.is_main:
                raise NonFiniteLoss(f"rank {env.rank}: stopping together with rank 0 (non-finite loss)")
            raise NonFiniteLoss(
                f"loss is NaN/inf for {MAX_SKIPPED_UPDATES} steps in a row (last at epoch {epoch} step {step}): "
                "lower --hyp lr0 or check your data"
            )
        if env.is_main:
            LOGGER.warning(
                f"non-finite loss or gradients at epoch {epoch} step {step}: skipped this optimiser update on "
                f"every rank ({in_a_row} in a row)"
            )
    if outcome.stop_signal:
        raise StopRequested(epoch, step + 1, outcome.stop_signal)


class SkipBatches(Sampler):
    """A batch sampler's batches from number ``start`` on: the sampler is deterministic, so the rest is exact."""

    def __init__(self, sampler: Sampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.sampler), self.start, None)


def batches_from(loader: DataLoader, start: int) -> Iterable:
    """``loader``, or (for an epoch resumed mid-way) a loader like it without its first ``start`` batches."""
    if start == 0:
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=SkipBatches(loader.batch_sampler, start),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        pin_memory=loader.pin_memory,
    )
