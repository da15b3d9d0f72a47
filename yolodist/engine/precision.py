"""The step's numeric format: which autocast precision a run trains with, and the tensors' memory layout.

``--amp auto`` follows upstream on CUDA (float16 autocast with a GradScaler) and, on a CPU, uses
bfloat16 autocast only where the CPU computes bfloat16 natively (AMX or AVX512-BF16): there it is
faster than float32, elsewhere it is emulated and slower. The weights, the optimiser and the loss
stay float32 in every mode. ``--deterministic`` keeps ``auto`` in float32, so that its runs compare
bit for bit and its world-size comparisons are not swamped by bfloat16 rounding.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import torch

from yolodist.errors import BadFlag

LOGGER = logging.getLogger("yolodist")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is not there)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(mode: str, device: torch.device, deterministic: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``--amp mode`` on ``device`` (None: float32 throughout)."""
    if mode == "off":
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise BadFlag("--amp fp16 needs a CUDA device; on a CPU use --amp bf16 or --amp off")
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    if deterministic or not native_bf16(device):
        return None
    return torch.bfloat16


def describe(dtype: torch.dtype | None, channels_last: bool) -> str:
    """One line for the log: what the step computes in."""
    precision = {None: "float32", torch.float16: "float16 autocast", torch.bfloat16: "bfloat16 autocast"}[dtype]
    layout = "channels-last" if channels_last else "contiguous (NCHW)"
    return f"step: {precision}, {layout} tensors"


def needs_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none."""
    return dtype == torch.float16


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format
