"""Batch sampler that shards each GLOBAL batch over ranks, so the data order is independent of world size.

Epoch e uses a permutation keyed by (seed, e) (or 0..N-1 without shuffling): seeds 0 and 1 share no
epoch's order, as they would with a generator seeded by ``seed + e``. Global batch k
is ``perm[k*B:(k+1)*B]`` for the total batch ``B``; rank r takes the contiguous slice
``[r*B/W, (r+1)*B/W)`` of it. One process with batch B and W processes with B/W each therefore see
exactly the same samples per step, which is what makes runs world-size invariant.

With draw weights (``--image-weights``), epoch e's order is instead N draws with replacement,
weighted, from the same (seed, e) stream: still one global order that every rank slices.

The last, partial global batch (r < B samples) is dropped (``drop_last``) or split over the ranks
as evenly as possible, in order: one process sees those r samples once, as upstream's last batch,
and W processes see the same r samples, so the loss over the global batch (normalised by global
counts) is the same. Every rank runs the same number of steps (a rank with fewer steps would hang the
others in a collective). Only when r < W does a rank get no real sample; it then repeats one sample
of the same batch (``pad_mask`` tells which), because an empty batch cannot go through BatchNorm.
Taking the repeat from the same batch keeps a rect-validation batch (``shuffle=False``) inside one
dataset batch, so ``index // B`` still names its letterbox shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

ORDER_STREAM = 1


def order_key(seed: int, epoch: int) -> int:
    """A 64-bit generator seed for (seed, epoch): well mixed, so no two (seed, epoch) pairs share an order."""
    # A spawn key of its own keeps this stream apart from the per-sample ones (rng_for's [seed, epoch, i]).
    sequence = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch], spawn_key=(ORDER_STREAM,))
    return int(sequence.generate_state(1, np.uint64)[0])


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
        self.weights: np.ndarray | None = None

    def set_weights(self, weights: np.ndarray | None) -> None:
        """Draw the next epochs' samples with these per-sample weights (with replacement); None: a permutation."""
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (self.num_samples,) or not np.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(f"need {self.num_samples} finite non-negative weights, got shape {weights.shape}")
            if weights.sum() <= 0:
                raise ValueError("the draw weights sum to 0")
        self.weights = weights

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
        if self.weights is not None:
            rng = np.random.Generator(np.random.PCG64(order_key(self.seed, epoch)))
            p = self.weights / self.weights.sum()
            drawn = rng.choice(self.num_samples, size=self.num_samples, replace=True, p=p)
            return torch.from_numpy(drawn.astype(np.int64))
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(order_key(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def global_batch(self, k: int, order: torch.Tensor | None = None) -> list[int]:
        """Indices of global batch ``k`` (fewer than B for a partial last batch)."""
        order = self.order() if order is None else order
        return order[k * self.batch_size : (k + 1) * self.batch_size].tolist()

    def _slice(self, batch: list[int]) -> tuple[list[int], bool]:
        """This rank's share of ``batch`` and whether it is a padding repeat."""
        r = len(batch)
        if r == self.batch_size:
            lo = self.rank * self.per_rank
            return batch[lo : lo + self.per_rank], False
        base, extra = divmod(r, self.world)
        lo = self.rank * base + min(self.rank, extra)
        share = batch[lo : lo + base + (1 if self.rank < extra else 0)]
        if share:
            return share, False
        return [batch[self.rank % r]], True

    def pad_mask(self, k: int) -> list[bool]:
        """For this rank's slice of batch ``k``: True where the sample is padding (a repeat)."""
        share, padded = self._slice(self.global_batch(k))
        return [padded] * len(share)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, epoch = self.order(), self.epoch
        for k in range(len(self)):
            yield [(epoch, i) for i in self._slice(self.global_batch(k, order))[0]]
