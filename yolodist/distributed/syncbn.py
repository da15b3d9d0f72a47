"""Synchronised BatchNorm for CPU/gloo.

``torch.nn.SyncBatchNorm`` does not run on CPU in torch 2.14.1 (its statistics kernel has no CPU
implementation; RELIABILITY.md finding 1), so DDP on CPUs needs this one. In training mode each
rank computes its shard's per-channel count, mean and biased variance (two-pass, so no
cancellation), the ranks exchange them through ``torch.distributed.nn.functional.all_reduce``,
which carries autograd, and every rank combines them exactly (Chan et al.'s parallel variance).
So the forward *and* the gradients are those of BatchNorm over the concatenated global batch,
also for shards of different sizes, and the running statistics move as BatchNorm2d's would on
that batch. State-dict keys, shapes and dtypes are BatchNorm2d's, so checkpoints move freely
between the two.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

# all_reduce above is deprecated in favour of functional collectives, which carry no autograd; it
# is the one we need. Silence its FutureWarning only where this module calls it.
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated", module=__name__
)


def _syncing() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm2d whose training-mode statistics span every rank of the default process group.

    Input and output: [N, C, H, W]; N may differ between ranks, and may be 0 on some of them.
    Evaluation, and training without an initialised multi-rank group, is plain BatchNorm2d.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _syncing()):
            # Evaluation never communicates: validation may run on rank 0 alone.
            return super().forward(x)
        self._check_input_dim(x)
        mean, var, total = self._global_stats(x)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), total)
        return normalise(x, mean, var, self.eps, self.weight, self.bias)  # both None unless affine

    def _global_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mean [C] and biased variance [C] over all ranks' samples, and their count per channel."""
        channels, world, rank = x.shape[1], dist.get_world_size(), dist.get_rank()
        count, mean, var = shard_stats(x)
        row = torch.cat([mean.new_full((1,), float(count)), mean, var])
        # Each rank fills its own row of a zero table; the summed table is everyone's rows, and
        # all_reduce's backward sends every rank the gradient of its own row.
        table = torch.cat([row.new_zeros(rank, row.numel()), row[None], row.new_zeros(world - rank - 1, row.numel())])
        table = all_reduce(table)
        return combine_stats(table[:, :1], table[:, 1 : channels + 1], table[:, channels + 1 :])

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, total: float) -> None:
        """BatchNorm2d's update on the global batch: momentum (or cumulative average), unbiased variance."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (total / (total - 1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def shard_stats(x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """One shard's values per channel, mean [C] and biased variance [C] (two-pass: no cancellation)."""
    # Half-precision sums over a whole batch lose everything; float64 stays float64.
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(acc)
    count = x.numel() // x.shape[1]
    if count:
        var, mean = torch.var_mean(xs, dim=(0, 2, 3), correction=0)
    else:  # an empty shard contributes nothing, but stays in the autograd graph
        mean = var = xs.sum(dim=(0, 2, 3))
    return count, mean, var


def combine_stats(
    counts: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The global mean [C], biased variance [C] and sample count of shards given by their statistics.

    ``counts`` [R, 1] values per channel of each shard, ``means`` and ``variances`` (biased) [R, C].
    Exact for any shard sizes, 0 included (Chan et al.: the pooled variance is the mean within-shard
    variance plus the variance of the shard means), and differentiable in ``means`` and ``variances``.
    Kept apart from the all-reduce so that one process can check it against other implementations
    (torch's CUDA kernels, tests/gpu).
    """
    total = float(counts.detach().sum())
    if total <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {total:g} over all ranks")
    global_mean = (counts * means).sum(0) / total
    global_var = (counts * (variances + (means - global_mean) ** 2)).sum(0) / total
    return global_mean, global_var, total


def normalise(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x`` [N, C, H, W] normalised by the given per-channel statistics, then scaled and shifted.

    Computed in the statistics' dtype (float32 for half inputs, whose own precision would lose the
    small differences from the mean) and returned in ``x``'s dtype.
    """
    shape = (1, -1, 1, 1)
    out = (x.to(mean.dtype) - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None and bias is not None:
        out = out * weight.to(out.dtype).view(shape) + bias.to(out.dtype).view(shape)
    return out.to(x.dtype)


def _move_state(source: nn.Module, target: nn.Module) -> nn.Module:
    """Give ``target`` the very Parameter and buffer objects of ``source``.

    Sharing, not copying: an optimiser built before the conversion keeps updating the same tensors.
    """
    if source.affine:
        target.weight, target.bias = source.weight, source.bias
    if source.track_running_stats:
        target.running_mean, target.running_var = source.running_mean, source.running_var
        target.num_batches_tracked = source.num_batches_tracked
    if hasattr(source, "qconfig"):
        target.qconfig = source.qconfig
    return target.train(source.training)


def _like(cls: type[nn.Module], module: nn.Module) -> nn.Module:
    # Built on the meta device: its own tensors are replaced by the source's at once.
    new = cls(
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, device="meta"
    )
    return _move_state(module, new)


def convert(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (recursively, or ``module`` itself) by CpuSyncBatchNorm.

    The new modules share the originals' parameters and buffers and keep eps, momentum, affine and
    track_running_stats. Returns the converted module (the same object unless it is a BatchNorm2d).
    """
    if isinstance(module, nn.BatchNorm2d):
        return _like(CpuSyncBatchNorm, module)
    for name, child in module.named_children():
        module.add_module(name, convert(child))
    return module


def revert(module: nn.Module) -> nn.Module:
    """Every CpuSyncBatchNorm back to BatchNorm2d, sharing the same parameters and buffers."""
    if isinstance(module, CpuSyncBatchNorm):
        return _like(nn.BatchNorm2d, module)
    for name, child in module.named_children():
        module.add_module(name, revert(child))
    return module
