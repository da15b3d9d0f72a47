"""Exponential moving average of model weights, with upstream YOLOv5's decay ramp."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` over all floating-point parameters and buffers.

    The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so the early, fast-changing weights are
    not frozen into the average. Integer buffers (BatchNorm's ``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def decay_at(self, updates: int) -> float:
        return self.decay * (1 - math.exp(-updates / self.tau))

    def _split(self, model: nn.Module):
        ema_state, model_state = self.ema.state_dict(), model.state_dict()
        float_keys = [k for k, v in ema_state.items() if v.is_floating_point()]
        other_keys = [k for k, v in ema_state.items() if not v.is_floating_point()]
        return (
            [ema_state[k] for k in float_keys],
            [model_state[k] for k in float_keys],
            [ema_state[k] for k in other_keys],
            [model_state[k] for k in other_keys],
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        ema_f, model_f, ema_i, model_i = self._split(model)
        torch._foreach_mul_(ema_f, d)
        torch._foreach_add_(ema_f, [m.detach().to(e.dtype) for e, m in zip(ema_f, model_f, strict=True)], alpha=1 - d)
        for e, m in zip(ema_i, model_i, strict=True):
            e.copy_(m)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
