"""Seeding: process-level seeds and per-sample random generators keyed by data, not by process."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_for(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample in one epoch.

    Keyed by (seed, epoch, index) only, so what a sample looks like depends neither on the number
    of dataloader workers nor on the number of ranks.
    """
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
