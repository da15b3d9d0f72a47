"""ONNX export through torch's TorchScript-based exporter, checked with ``onnx.checker``, metadata attached.

torch 2.14 defaults to the ``torch.export``-based exporter, which needs the extra ``onnxscript``
package; the TorchScript-based one (``dynamo=False``) still ships, needs only ``onnx``, and handles
this model's shape arithmetic for dynamic axes, so it is the one used here.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
from pathlib import Path
from types import ModuleType

import torch

from yolodist.errors import BadFlag
from yolodist.export.prepare import forget_cached_grids, quiet_tracing
from yolodist.models import Model
from yolodist.utils.io import atomic_write_bytes

LOGGER = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "output0"
DEFAULT_OPSET = 17
SIMPLIFIERS = ("onnxslim", "onnxsim")


def require_onnx() -> ModuleType:
    """The ``onnx`` package, or a BadFlag saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise BadFlag(
            "ONNX export needs the onnx package; pip install onnx (or pip install yolodist[export])"
        ) from None
    return onnx


def find_simplifier() -> ModuleType:
    """The first importable ONNX simplifier (onnxslim, else onnxsim), or a BadFlag saying how to get one."""
    for name in SIMPLIFIERS:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BadFlag("--simplify needs onnxslim (or onnxsim), which is not installed; pip install onnxslim")


def _simplify(model_proto, simplifier: ModuleType, prefix: str):
    LOGGER.info(f"{prefix} slimming with {simplifier.__name__} {getattr(simplifier, '__version__', '')}...")
    if simplifier.__name__ == "onnxslim":
        return simplifier.slim(model_proto)
    simplified, ok = simplifier.simplify(model_proto)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    return simplified


def export_onnx(
    model: Model,
    example: torch.Tensor,
    path: str | Path,
    meta: dict,
    opset: int = DEFAULT_OPSET,
    simplify: bool = False,
    prefix: str = "ONNX:",
) -> Path:
    """Export ``model`` (``detect.export`` on) traced on ``example`` ``[B, 3, H, W]`` to ``path`` atomically.

    With ``meta["dynamic"]`` the batch, height and width axes of the input (and batch and anchor
    count of the output) are symbolic. ``meta`` (names as JSON, stride, ...) is stored in the
    model's ``metadata_props``. The result passes ``onnx.checker.check_model`` before it is written.
    """
    onnx = require_onnx()
    simplifier = find_simplifier() if simplify else None
    path = Path(path)
    dynamic_axes = None
    if meta["dynamic"]:
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "anchors"}}
    forget_cached_grids(model)
    buffer = io.BytesIO()
    with quiet_tracing(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
        )
    model_proto = onnx.load_from_string(buffer.getvalue())
    if simplifier is not None:
        model_proto = _simplify(model_proto, simplifier, prefix)
    for key, value in meta.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model_proto)
    atomic_write_bytes(path, model_proto.SerializeToString())
    return path
