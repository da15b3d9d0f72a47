"""Model summaries: layer, parameter and gradient counts, GFLOPs, and upstream's per-layer table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from yolodist.models.parse import LayerRecord

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSummary:
    """Counts as upstream reports them: ``layers`` is ``len(list(model.modules()))``."""

    layers: int
    parameters: int
    gradients: int
    gflops: float


def _probe_size(model: nn.Module) -> int:
    """A small square input whose feature maps all scale exactly with area (a multiple of the max stride)."""
    stride = getattr(model, "stride", None)
    max_stride = int(stride.max()) if isinstance(stride, torch.Tensor) else 32
    return max(max_stride, 32) * 2


def _layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    """FLOPs of one convolution or linear layer's forward (a multiply-add is 2), without its bias."""
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return 2 * output.numel() * per_output
    return 2 * output.numel() * module.in_features  # nn.Linear


def count_gflops(model: nn.Module, imgsz: int | Sequence[int] = 640) -> float:
    """GFLOPs of one forward pass on a ``[1, ch, h, w]`` image: its convolutions and linear layers.

    A multiply-add counts as 2 FLOPs, as torch's ``FlopCounterMode`` counts them (the tests compare
    the two); forward hooks count instead, because that mode imports ``torch._dynamo``, seconds of
    every training process's start-up. The count is taken on a small probe image and scaled by
    area, which is exact for these convolutional models when every size is a multiple of the
    largest stride. Training flags and BatchNorm statistics are left as they were.
    """
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    probe = _probe_size(model)
    try:
        first = next(model.parameters())
    except StopIteration:
        return 0.0
    cfg = getattr(model, "yaml", None)
    ch = int(cfg.get("ch", 3)) if isinstance(cfg, dict) else 3
    image = torch.zeros(1, ch, probe, probe, device=first.device, dtype=first.dtype)
    flops = []
    hooks = [
        m.register_forward_hook(lambda m, _, out: flops.append(_layer_flops(m, out)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    modes = {m: m.training for m in model.modules()}
    model.eval()  # eval: BatchNorm must not update its running statistics while we count
    try:
        with torch.no_grad():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return sum(flops) / 1e9 * (h * w) / (probe * probe)


def model_summary(model: nn.Module, imgsz: int | Sequence[int] = 640) -> ModelSummary:
    """Layers, parameters, trainable parameters and GFLOPs at ``imgsz`` of ``model``."""
    parameters = sum(p.numel() for p in model.parameters())
    gradients = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(
        layers=len(list(model.modules())),
        parameters=parameters,
        gradients=gradients,
        gflops=count_gflops(model, imgsz),
    )


def summary_line(name: str, summary: ModelSummary, imgsz: int | Sequence[int] = 640) -> str:
    """``YOLOv5s summary: 214 layers, 7235389 parameters, 7235389 gradients, 16.5 GFLOPs``."""
    size = "" if imgsz == 640 else f" at {imgsz}"
    return (
        f"{name} summary: {summary.layers} layers, {summary.parameters} parameters, "
        f"{summary.gradients} gradients, {summary.gflops:.1f} GFLOPs{size}"
    )


def layer_table(records: Sequence[LayerRecord]) -> str:
    """Upstream's parse log: one row per layer with from, n, params, module and arguments."""
    lines = [f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}"]
    for r in records:
        lines.append(f"{r.index:>3}{r.source!s:>18}{r.number:>3}{r.params:10.0f}  {r.type:<40}{r.args!s:<30}")
    return "\n".join(lines)


def log_layer_table(records: Sequence[LayerRecord]) -> None:
    """Log :func:`layer_table` at INFO."""
    LOGGER.info(layer_table(records))
