"""The mixed-precision path of a training step (autocast + GradScaler), run on the CPU.

On CUDA the trainer autocasts to float16 with an enabled GradScaler; the same code path runs here
with CPU autocast (bfloat16) and an enabled CPU GradScaler, so its wiring (scale, unscale before
clipping, skip on inf gradients, scale update, EMA) is tested without a GPU.
"""

from __future__ import annotations

import torch

from yolodist.config.schema import Hyp
from yolodist.distributed.env import DistEnv
from yolodist.engine import step
from yolodist.engine.ema import ModelEMA
from yolodist.engine.loss import YoloLoss
from yolodist.models import Model


def _context() -> step.StepContext:
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=3).train()
    loss = YoloLoss(model.detect.anchors, 3, Hyp(), img_size=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)  # as build_optimizer makes it
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    return step.StepContext(
        model, model, loss, optimizer, scaler, ModelEMA(model), DistEnv(), 2, autocast=torch.bfloat16
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2]])
    return imgs, targets


def test_amp_step_updates_weights_and_keeps_the_scale():
    ctx = _context()
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    outcome = step.train_step(ctx, *_batch(), update=True)
    assert torch.isfinite(outcome.items).all() and not outcome.skipped
    after = ctx.model.state_dict()
    assert not torch.equal(before["model.24.m.0.weight"], after["model.24.m.0.weight"])
    assert ctx.scaler.get_scale() == 2.0**10  # a finite step keeps the scale (growth after 2000 steps)
    assert ctx.ema.updates == 1
    assert ctx.scaler.state_dict()["scale"] == 2.0**10  # what checkpoints store and resume restores


def test_amp_inf_gradients_skip_the_step_and_lower_the_scale():
    ctx = _context()
    imgs, targets = _batch()
    step.train_step(ctx, imgs, targets, update=False)  # accumulate a real gradient first
    with torch.no_grad():
        ctx.model.model[0].conv.weight.grad[0, 0, 0, 0] = float("inf")  # an fp16-style overflow
    weights = ctx.model.model[0].conv.weight.detach().clone()
    agreed = step.apply_update(ctx)
    # The scaler skips the optimiser step and halves the scale. With AMP, inf gradients are the
    # scaler's business: the loss was finite, so this is not counted as a skipped (non-finite) update.
    assert torch.equal(ctx.model.model[0].conv.weight, weights)
    assert ctx.scaler.get_scale() == 2.0**9
    assert not agreed.skipped
