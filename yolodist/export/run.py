"""The export command's work: check every flag, load the weights once, write each requested format.

Files land next to the weights with the format's suffix (``best.pt`` -> ``best.torchscript``,
``best.onnx``), as upstream YOLOv5 writes them, and the console lines follow upstream's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from yolodist.checkpoint.weights import load_model, resolve_weights
from yolodist.errors import BadFlag, UserError
from yolodist.export.formats import SUFFIXES, parse_formats
from yolodist.export.onnx import DEFAULT_OPSET, export_onnx, find_simplifier, require_onnx
from yolodist.export.prepare import check_image_size, check_image_size_flag, file_size_mb, metadata
from yolodist.export.torchscript import check_optimize, export_torchscript
from yolodist.models import Model
from yolodist.utils.log import colorstr

LOGGER = logging.getLogger(__name__)

PREFIXES = {"torchscript": "TorchScript:", "onnx": "ONNX:"}


@dataclass(frozen=True)
class ExportOptions:
    """One export run; field names follow upstream's export.py flags."""

    weights: Path
    include: tuple[str, ...] = ("torchscript",)
    imgsz: tuple[int, ...] = (640, 640)
    batch: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    half: bool = False
    dynamic: bool = False
    simplify: bool = False
    opset: int = DEFAULT_OPSET
    optimize: bool = False


def check_options(opts: ExportOptions, formats: Sequence[str]) -> None:
    """Every flag problem as a BadFlag, before the weights are even read."""
    check_image_size_flag(opts.imgsz)
    if opts.batch < 1:
        raise BadFlag(f"--batch-size {opts.batch} must be at least 1")
    if opts.half and opts.device.type != "cuda":
        raise BadFlag("--half only compatible with GPU export; use --device 0 (a CUDA GPU) or drop --half")
    if opts.half and opts.dynamic:
        raise BadFlag("--half not compatible with --dynamic; use either --half or --dynamic but not both")
    if opts.optimize and "torchscript" in formats:
        check_optimize(opts.device)
    if "onnx" in formats:
        require_onnx()
        if opts.simplify:
            find_simplifier()
        if not 7 <= opts.opset <= 20:  # the range torch's TorchScript-based ONNX exporter emits
            raise BadFlag(f"--opset {opts.opset} is not supported; choose 7 to 20 (default {DEFAULT_OPSET})")


def _export_format(fmt: str, model: Model, example: torch.Tensor, path: Path, meta: dict, opts: ExportOptions) -> None:
    prefix = colorstr(PREFIXES[fmt])
    if fmt == "torchscript":
        LOGGER.info(f"\n{prefix} starting export with torch {torch.__version__}...")
        export_torchscript(model, example, path, meta, optimize=opts.optimize)
    else:
        import onnx

        LOGGER.info(f"\n{prefix} starting export with onnx {onnx.__version__}...")
        export_onnx(model, example, path, meta, opset=opts.opset, simplify=opts.simplify, prefix=prefix)


def export(opts: ExportOptions) -> tuple[list[Path], list[str]]:
    """Write every format in ``opts.include``; returns (files written, formats that failed).

    Flag problems raise BadFlag first. A format whose export fails is logged as upstream does
    ("export failure ❌") and the others still run, so one broken exporter does not cost the rest.
    """
    start = time.perf_counter()
    formats = parse_formats(opts.include)
    check_options(opts, formats)
    weights = resolve_weights(str(opts.weights))  # a release name or URL is fetched, as for training
    model = load_model(weights, opts.device)
    imgsz = check_image_size(opts.imgsz, int(model.stride.max()))
    model.detect.export = True
    example = torch.zeros(opts.batch, 3, *imgsz, device=opts.device)
    if opts.half:
        model, example = model.half(), example.half()
    with torch.no_grad():
        shape = tuple(model(example).shape)
    LOGGER.info(
        f"\n{colorstr('PyTorch:')} starting from {weights} with output shape {shape} ({file_size_mb(weights):.1f} MB)"
    )
    meta = metadata(model, imgsz, opts.batch, opts.dynamic, opts.half)
    saved, failed = [], []
    for fmt in formats:
        path = weights.with_suffix(SUFFIXES[fmt])
        t0 = time.perf_counter()
        try:
            _export_format(fmt, model, example, path, meta, opts)
        except UserError:
            raise
        except Exception as e:  # an exporter's internal failure: report it and carry on with the others
            LOGGER.debug(f"{fmt} export failed", exc_info=True)
            LOGGER.info(f"{colorstr(PREFIXES[fmt])} export failure ❌ {time.perf_counter() - t0:.1f}s: {e}")
            failed.append(fmt)
            continue
        seconds = time.perf_counter() - t0
        LOGGER.info(
            f"{colorstr(PREFIXES[fmt])} export success ✅ {seconds:.1f}s, saved as {path} ({file_size_mb(path):.1f} MB)"
        )
        saved.append(path)
    if saved:
        _log_summary(weights, saved[-1], time.perf_counter() - start, opts.half)
    return saved, failed


def _log_summary(weights: Path, last: Path, seconds: float, half: bool) -> None:
    flags = " --half" if half else ""
    LOGGER.info(
        f"\nExport complete ({seconds:.1f}s)"
        f"\nResults saved to {colorstr(str(weights.parent.resolve()), 'bold')}"
        f"\nDetect:          python detect.py --weights {last}{flags}"
        f"\nValidate:        python val.py --weights {last}{flags}"
        f"\nVisualize:       https://netron.app"
    )
