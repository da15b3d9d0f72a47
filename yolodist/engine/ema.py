"""Exponential moving average of model weights, with upstream YOLOv5's decay ramp."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` over every floating-point parameter and buffer.

    The decay ramps up as ``d = decay * (1 - exp(-updates / tau))`` (upstream's formula; ``updates``
    counts calls to ``update``), so the fast-changing early weights are not frozen into the average:
    d is 0.0005 after one update, 0.63 * decay after ``tau`` updates and ~``decay`` after 10 * tau.
    Integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged.

    ``ema.ema`` is a deep copy of the model in eval mode with gradients off; validate and save it.
    Pass the plain model to ``update`` (unwrap DDP first): the state-dict keys must match.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, int(updates)

    def decay_at(self, updates: int) -> float:
        """The decay used by the ``updates``-th update."""
        return self.decay * (1 - math.exp(-updates / self.tau))

    def _pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(ema floats, model floats, ema others, model others), matched by state-dict key."""
        ema_state, model_state = self.ema.state_dict(), model.state_dict()
        if ema_state.keys() != model_state.keys():
            missing = sorted(set(ema_state) ^ set(model_state))[:3]
            raise ValueError(f"EMA and model state dicts differ (e.g. {missing}); pass the unwrapped model")
        ema_f, model_f, ema_i, model_i = [], [], [], []
        for k, e in ema_state.items():
            m = model_state[k].detach()
            if e.is_floating_point():
                ema_f.append(e)
                # The model may be cast (e.g. half under some AMP setups); the average stays in its dtype.
                model_f.append(m if m.dtype == e.dtype else m.to(e.dtype))
            else:
                ema_i.append(e)
                model_i.append(m)
        return ema_f, model_f, ema_i, model_i

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (no host synchronisation)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        ema_f, model_f, ema_i, model_i = self._pairs(model)
        if ema_f:
            # lerp: ema + (1 - d) * (model - ema) == d * ema + (1 - d) * model, one fused kernel per
            # dtype/device group instead of two passes.
            torch._foreach_lerp_(ema_f, model_f, 1.0 - d)
        if ema_i:
            torch._foreach_copy_(ema_i, model_i)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed as the model's own state dict."""
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int | None = None) -> None:
        """Restore averaged weights (and, when given, the update count that drives the ramp)."""
        self.ema.load_state_dict(state)
        if updates is not None:
            self.updates = int(updates)
