"""TorchScript export: ``torch.jit.trace`` of the model in export mode, metadata in ``config.txt``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from yolodist.errors import BadFlag
from yolodist.export.prepare import forget_cached_grids, quiet_tracing
from yolodist.models import Model
from yolodist.utils.io import atomic_write_bytes

#: the extra file inside the archive that holds names, stride and input shape (as upstream)
CONFIG_FILE = "config.txt"


def check_optimize(device: torch.device) -> None:
    """Fail before any work when ``--optimize`` cannot work here."""
    if device.type != "cpu":
        raise BadFlag("--optimize is not compatible with cuda devices; use --device cpu")
    import torch.backends.xnnpack

    if not torch.backends.xnnpack.enabled:
        raise BadFlag("--optimize needs a PyTorch build with XNNPACK, which this one lacks; export without --optimize")


def export_torchscript(
    model: Model, example: torch.Tensor, path: str | Path, meta: dict, optimize: bool = False
) -> Path:
    """Trace ``model`` (``detect.export`` on) on ``example`` ``[B, 3, H, W]`` and write ``path`` atomically.

    ``meta`` (see ``prepare.metadata``) goes into the archive as ``config.txt``. The trace records the
    head's shape arithmetic, so it could run other sizes; backends hold a file to its ``imgsz`` and
    ``batch`` unless ``meta["dynamic"]``. It runs on the device type it was traced on (``meta["device"]``).
    """
    path = Path(path)
    forget_cached_grids(model)
    buffer = io.BytesIO()
    with quiet_tracing(), torch.no_grad():
        # check_trace would trace a second time (4x the export time) to catch data-dependent control
        # flow, which this model has none of; the export tests compare outputs with the eager model instead.
        traced = torch.jit.trace(model, example, strict=False, check_trace=False)
        if optimize:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            # Saved in the regular format (not the lite interpreter's), so torch.jit.load and our backend read it.
            traced = optimize_for_mobile(traced)
        torch.jit.save(traced, buffer, _extra_files={CONFIG_FILE: json.dumps(meta)})
    atomic_write_bytes(path, buffer.getvalue())
    return path
