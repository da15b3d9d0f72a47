"""torchvision's compiled NMS operator, registered without importing the torchvision package.

Importing torchvision imports ``torch._dynamo`` (its ``ops.roi_align`` does): measured on a 2-core
CPU, val.py on a small dataset took 12.4 s with it and 8.0 s without (training imports ``torch._dynamo``
anyway, through torch's optimizers). torchvision's operator library registers
``torch.ops.torchvision.nms`` (CPU and CUDA kernels) on its own, so that library is loaded directly;
where it cannot be found (an unfamiliar build), the package is imported after all, which registers
the same operator.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import torch

_LIBRARY_STEMS = ("_C_stable", "_C")  # torchvision's operator library, newer name first


def _operator_libraries() -> list[Path]:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent
    names = [stem + suffix for stem in _LIBRARY_STEMS for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    return [folder / name for name in names if (folder / name).is_file()]


def _register_nms() -> None:
    for library in _operator_libraries():
        try:
            torch.ops.load_library(str(library))
        except OSError:
            continue
        if hasattr(torch.ops.torchvision, "nms"):
            return
    import torchvision  # noqa: F401  (the package loads its operators itself)


_register_nms()


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Indices of corner ``boxes`` ``[n, 4]`` kept by NMS at ``iou_thres``, by decreasing ``scores``."""
    return torch.ops.torchvision.nms(boxes, scores, iou_thres)
