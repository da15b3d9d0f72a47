"""Continuing an epoch that an interruption cut short: its remaining batches, exactly as they would have come.

What a resume restores from the checkpoint is in ``yolodist.checkpoint.restore``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from torch.utils.data import DataLoader, Sampler


class SkipBatches(Sampler):
    """A batch sampler's batches from number ``start`` on: the sampler is deterministic, so the rest is exact."""

    def __init__(self, sampler: Sampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.sampler), self.start, None)


def batches_from(loader: DataLoader, start: int) -> Iterable:
    """``loader``, or (for an epoch resumed mid-way) a loader like it without its first ``start`` batches.

    Only the batch indices are skipped, not loaded: every sample's augmentation depends on (seed,
    epoch, index) alone, so the remaining batches are exactly those of the uninterrupted epoch.
    """
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
