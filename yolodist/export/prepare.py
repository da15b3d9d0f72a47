"""What every export format shares: the input size, the model put in export mode, the metadata it carries."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from yolodist.errors import BadFlag
from yolodist.models import Model

LOGGER = logging.getLogger(__name__)

# Upstream's file_size() reports MiB under the label "MB"; the same figures keep logs comparable.
_MIB = 1 << 20


def file_size_mb(path: str | Path) -> float:
    """Size of ``path`` in MiB, as upstream prints it."""
    return Path(path).stat().st_size / _MIB


def check_image_size_flag(imgsz: Sequence[int]) -> None:
    """BadFlag unless ``--img`` is one positive size or a positive height and width."""
    if len(imgsz) not in (1, 2):
        raise BadFlag(f"--img takes one size or a height and a width, got {len(imgsz)} values; e.g. --img 640")
    if any(s < 1 for s in imgsz):
        raise BadFlag(f"--img {' '.join(map(str, imgsz))} must be positive; e.g. --img 640")


def check_image_size(imgsz: Sequence[int], stride: int) -> tuple[int, int]:
    """``--img`` (one size, or height width) -> (h, w), each rounded up to a multiple of ``stride``."""
    check_image_size_flag(imgsz)
    checked = []
    for size in imgsz:
        new_size = max(math.ceil(size / stride), 1) * stride
        if new_size != size:
            LOGGER.warning(
                f"WARNING ⚠️ --img-size {size} must be multiple of max stride {stride}, updating to {new_size}"
            )
        checked.append(new_size)
    return checked[0], checked[-1]  # one size means a square


def metadata(model: Model, imgsz: tuple[int, int], batch: int, dynamic: bool, half: bool) -> dict:
    """What a backend needs to run an exported file without its checkpoint (JSON-serialisable)."""
    return {
        "names": list(model.names),
        "stride": int(model.stride.max()),
        "imgsz": list(imgsz),
        "batch": int(batch),
        "dynamic": bool(dynamic),
        "half": bool(half),
        "device": next(model.parameters()).device.type,
    }


def forget_cached_grids(model: Model) -> None:
    """Empty the head's per-size grid cache before tracing.

    While tracing, feature-map sizes are traced values, so the head builds its grids with an
    ``arange`` recorded in the graph: the export then runs at any input size (what ``--dynamic``
    needs), and the graph names the device it was traced on. A grid taken from the cache would be
    frozen into the graph as a constant of one size instead, so none may be there.
    """
    model.detect._grids.clear()


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence torch.jit's deprecation notices and the tracer's warnings; the exports are checked for parity."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        yield
