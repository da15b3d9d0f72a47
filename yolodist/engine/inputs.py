"""The network's input for a step: the uint8 batch on the device (with the HSV jitter the loader left for
it), then as floats, resized for --multi-scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yolodist.augment.color_batch import hsv_batch
from yolodist.config.schema import TrainConfig
from yolodist.engine.precision import memory_format
from yolodist.utils.seed import rng_for


def multi_scale_size(cfg: TrainConfig, epoch: int, step: int, stride: int) -> int:
    """The same random size on every rank in the same step: keyed by (seed, epoch, step), not by rank."""
    rng = rng_for(cfg.seed, epoch, 1_000_000_000 + step)
    size = rng.uniform(cfg.imgsz * 0.5, cfg.imgsz * 1.5 + stride)
    return max(int(size // stride * stride), stride)


def hsv_on_device(place: str, device: torch.device) -> bool:
    """``--hsv-jitter``: whether the loader leaves the colour jitter to ``device`` (auto: on CUDA, whose
    loader cores are the scarce ones; on a CPU the loader workers run beside the step, the cheaper place)."""
    return place == "device" or (place == "auto" and device.type == "cuda")


def device_batch(imgs: torch.Tensor, hsv: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The uint8 batch on ``device``, jittered there with ``hsv`` (the loader's deferred tables) if given."""
    imgs = imgs.to(device, non_blocking=True)
    return imgs if hsv is None else hsv_batch(imgs, hsv.to(device, non_blocking=True))


def network_input(imgs: torch.Tensor, cfg: TrainConfig, stride: int, epoch: int, step: int) -> torch.Tensor:
    """uint8 batch on its device -> float in [0, 1] (channels-last with --channels-last), resized for --multi-scale."""
    imgs = imgs.float() / 255
    if cfg.multi_scale:
        size = multi_scale_size(cfg, epoch, step, stride)
        if size != imgs.shape[-1]:
            scale = size / max(imgs.shape[2:])
            new_shape = [max(round(x * scale / stride) * stride, stride) for x in imgs.shape[2:]]
            imgs = F.interpolate(imgs, size=new_shape, mode="bilinear", align_corners=False)
    return imgs.contiguous(memory_format=memory_format(cfg.channels_last))
