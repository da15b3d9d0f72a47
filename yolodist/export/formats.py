"""The export formats and ``--include`` parsing; imports nothing heavy, so flag errors come back at once."""

from __future__ import annotations

from collections.abc import Sequence

from yolodist.errors import BadFlag

SUFFIXES = {"torchscript": ".torchscript", "onnx": ".onnx"}
FORMATS = tuple(SUFFIXES)
UPSTREAM_ONLY = ("openvino", "engine", "coreml", "saved_model", "pb", "tflite", "edgetpu", "tfjs", "paddle")


def parse_formats(include: Sequence[str]) -> tuple[str, ...]:
    """``--include`` values (case-insensitive, space- or comma-separated) -> supported formats, in order."""
    names = [x.strip().lower() for item in include for x in item.split(",") if x.strip()]
    rejected = [n for n in names if n not in FORMATS]
    if rejected or not names:
        what = " ".join(rejected) or "(nothing)"
        also = " (an upstream YOLOv5 format not available here)" if set(rejected) <= set(UPSTREAM_ONLY) else ""
        raise BadFlag(f"--include {what} is not supported{also}; choose from: {' '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))
