"""The HSV jitter of a whole batch on its own device, bit for bit the loader's (``color.apply_hsv_table``).

On a GPU node the loader's CPU cores are what runs short, and the jitter is the largest single part of a
training sample's CPU time. After batching it is a few table lookups per pixel on the accelerator. The
colour conversions are OpenCV's own, evaluated once at every possible input (all 2^24 colours to 8-bit
HSV, every HSV with hue < 180 back to RGB), so a jitter applied here equals the one the loader would
have applied exactly, and training does not depend on where it ran.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

HUES = 180  # OpenCV's 8-bit hue range; the jitter's hue table wraps below it


def _host_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB code r<<16|g<<8|b -> HSV, HSV code h<<16|s<<8|v -> RGB), uint8 ``[codes, 3]``, from OpenCV."""
    code = np.arange(1 << 24, dtype=np.uint32)
    bgr = np.stack([code & 255, (code >> 8) & 255, code >> 16], axis=-1).astype(np.uint8)
    to_hsv = cv2.cvtColor(bgr.reshape(4096, 4096, 3), cv2.COLOR_BGR2HSV).reshape(-1, 3)
    code = code[: HUES << 16]
    hsv = np.stack([code >> 16, (code >> 8) & 255, code & 255], axis=-1).astype(np.uint8)
    to_rgb = cv2.cvtColor(hsv.reshape(HUES * 16, 4096, 3), cv2.COLOR_HSV2RGB).reshape(-1, 3)
    return torch.from_numpy(to_hsv), torch.from_numpy(to_rgb)


@functools.cache
def _tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tables on ``device`` (83 MB there), made once per process and device (about a second on
    one core); the host copies are not kept."""
    return tuple(t.to(device) for t in _host_tables())


def _code(x: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` bytes -> one int32 index per pixel (int32: half the memory of int64 indices)."""
    x = x.int()
    return (x[..., 0] << 16) | (x[..., 1] << 8) | x[..., 2]


def hsv_batch(imgs: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Jitter uint8 RGB ``imgs`` ``[B, 3, H, W]`` with one ``color.hsv_table`` per image (uint8 ``[B, 256, 3]``),
    on ``imgs``' device. Returns a new uint8 ``[B, 3, H, W]`` batch in channels-last memory."""
    if imgs.dtype != torch.uint8 or tables.dtype != torch.uint8:
        raise TypeError(f"hsv_batch needs uint8 images and tables, got {imgs.dtype} and {tables.dtype}")
    to_hsv, to_rgb = _tables(imgs.device)
    b = imgs.shape[0]
    hsv = to_hsv[_code(imgs.permute(0, 2, 3, 1))].int()  # [B, H, W, 3]
    # Channel c of image i reads its table at i * 768 + value * 3 + c (the tables flattened).
    index = torch.arange(b, device=imgs.device, dtype=torch.int32)
    offset = (index * 768).view(b, 1, 1, 1) + torch.arange(3, device=imgs.device, dtype=torch.int32)
    jittered = tables.to(imgs.device).reshape(-1)[hsv * 3 + offset]
    return to_rgb[_code(jittered)].permute(0, 3, 1, 2)
