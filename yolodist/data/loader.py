"""Batching: collate samples into tensors and build the DataLoader (worker count, seeding, persistence)."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from yolodist.data.sampler import ShardedBatchSampler


class Batch(NamedTuple):
    """A collated batch (see ``collate``)."""

    imgs: torch.Tensor  # uint8 [B, 3, H, W] RGB, channels-last memory
    targets: torch.Tensor  # float32 [N, 6] = (image index in batch, cls, cx, cy, w, h)
    paths: tuple[str, ...]
    shapes: tuple
    hsv: torch.Tensor | None  # uint8 [B, 256, 3]: the HSV jitter still to apply to imgs (None: applied or none)


def collate(batch: Sequence[tuple]) -> Batch:
    """Samples (img uint8 ``[3, H, W]``, labels ``[n, 6]``, path, shapes, hsv table or None) -> ``Batch``."""
    imgs, labels, paths, shapes, hsv = zip(*batch, strict=True)
    targets = []
    for i, lb in enumerate(labels):
        lb = lb.clone()
        lb[:, 0] = i  # which image of the batch each box belongs to
        targets.append(lb)
    # Stacked in HWC memory: a plain copy of each sample (samples come channels-last), and the batch is
    # the channels-last NCHW tensor the model wants. Any input layout gives the same values.
    stacked = torch.stack([im.permute(1, 2, 0) for im in imgs], 0).permute(0, 3, 1, 2)
    tables = None if hsv[0] is None else torch.stack(hsv, 0)
    return Batch(stacked, torch.cat(targets, 0), tuple(paths), tuple(shapes), tables)


def seed_worker(worker_id: int) -> None:
    """Seed a worker's process-level generators from torch's per-worker seed.

    Sample augmentation does not use these (it uses ``rng_for(seed, epoch, index)``); this only keeps
    stray library randomness distinct between workers. cv2 threads are turned off: workers already
    run in parallel, and cv2's own pool oversubscribes the cores.
    """
    # The trainer stops in order on Ctrl-C or SLURM's warning; a worker must not die of it first (spawn).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # SLURM's warning signal reaches every process of a task
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)


def num_workers(requested: int, batch_per_rank: int) -> int:
    """min(requested, CPU count, batch per rank) as upstream; 0 loads in the main process."""
    cpus = os.cpu_count() or 1
    return max(0, min(requested, cpus, batch_per_rank if batch_per_rank > 1 else 0))


def build_loader(
    dataset: Dataset, batch_sampler: ShardedBatchSampler, workers: int, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over ``batch_sampler`` with ``collate``; workers persist across epochs."""
    nw = num_workers(workers, batch_sampler.per_rank)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=nw,
        pin_memory=pin_memory,
        collate_fn=collate,
        worker_init_fn=seed_worker if nw else None,
        persistent_workers=nw > 0,
    )
