"""Synchronised BatchNorm for CPU/gloo.

``torch.nn.SyncBatchNorm`` does not run on CPU in torch 2.14.1 (its statistics kernel has no CPU
implementation), so DDP on CPUs needs this. Per-channel sum, sum of squares and count are
all-reduced through ``torch.distributed.nn.functional.all_reduce``, which carries autograd: the
forward *and* the gradients are those of BatchNorm over the concatenated global batch, and the
running statistics are updated as BatchNorm2d would on that batch. State-dict keys, shapes and
dtypes are BatchNorm2d's, so checkpoints move freely between the two.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_reduce

# Deprecated in favour of functional collectives, which do not carry autograd; this one does.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or not self.track_running_stats):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = all_reduce(stats)  # differentiable: gradients flow to every rank's input
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp(min=0)
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), total.detach())
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * total / (total - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def _move_state(source: nn.Module, target: nn.Module) -> nn.Module:
    """Give ``target`` the very Parameter and buffer objects of ``source``.

    Sharing, not copying: an optimiser built before the conversion keeps updating the same tensors.
    """
    if source.affine:
        target.weight, target.bias = source.weight, source.bias
    if source.track_running_stats:
        target.running_mean, target.running_var = source.running_mean, source.running_var
        target.num_batches_tracked = source.num_batches_tracked
    return target.train(source.training)


def convert(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (1d/2d/3d) in ``module`` by CpuSyncBatchNorm sharing its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        new = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, device="meta"
        )
        return _move_state(module, new)
    for name, child in module.named_children():
        module.add_module(name, convert(child))
    return module


def revert(module: nn.Module) -> nn.Module:
    """CpuSyncBatchNorm back to BatchNorm2d, sharing the same parameters and buffers."""
    if isinstance(module, CpuSyncBatchNorm):
        new = nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, device="meta"
        )
        return _move_state(module, new)
    for name, child in module.named_children():
        module.add_module(name, revert(child))
    return module
