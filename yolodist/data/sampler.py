"""Batch sampler that shards each GLOBAL batch over ranks, so the data order is independent of world size.

Epoch e uses the permutation of torch.Generator(seed + e) (or 0..N-1 without shuffling). Global batch k
is ``perm[k*B:(k+1)*B]`` for the total batch ``B``; rank r takes the contiguous slice
``[r*B/W, (r+1)*B/W)`` of it. One process with batch B and W processes with B/W each therefore see
exactly the same samples per step, which is what makes runs world-size invariant.

The last, partial global batch is dropped (``drop_last``) or padded to B by repeating its own
samples cyclically, so every rank runs the same number of steps (a rank with fewer steps would hang
the others in a collective). Padding from the same batch, not from the start of the permutation,
keeps a rect-validation batch (``shuffle=False``) inside one dataset batch, so ``index // B`` still
names its letterbox shape. Padded samples repeat; ``pad_mask`` tells which.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global batch as ``[(epoch, index), ...]`` of length B / world."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1 or world < 1 or batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of world size {world}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.per_rank = batch_size // world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation (and per-sample rng key) the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches every rank yields per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The epoch's sample order (int64 ``[N]``), the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def global_batch(self, k: int, order: torch.Tensor | None = None) -> list[int]:
        """Indices of global batch ``k``; a partial last batch is padded to B by cycling its own samples."""
        order = self.order() if order is None else order
        batch = order[k * self.batch_size : (k + 1) * self.batch_size].tolist()
        if batch and len(batch) < self.batch_size:
            batch = [batch[i % len(batch)] for i in range(self.batch_size)]
        return batch

    def pad_mask(self, k: int) -> list[bool]:
        """For this rank's slice of batch ``k``: True where the sample is padding (a repeat)."""
        real = min(self.batch_size, self.num_samples - k * self.batch_size)
        start = self.rank * self.per_rank
        return [start + j >= real for j in range(self.per_rank)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, epoch = self.order(), self.epoch
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        for k in range(len(self)):
            yield [(epoch, i) for i in self.global_batch(k, order)[lo:hi]]
