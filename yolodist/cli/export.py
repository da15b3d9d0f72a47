"""``yolodist export`` / ``python export.py``: flags as upstream YOLOv5's export.py, TorchScript and ONNX only."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from yolodist.cli.exit import run_command
from yolodist.cli.flags import ArgumentParser, add_device
from yolodist.errors import BadFlag

# Upstream flags for formats this version does not write: accepted by the parser so that upstream
# command lines fail with a sentence naming the flag, not with "unrecognized arguments".
_UNSUPPORTED_FLAGS = {
    "keras": "--keras applies to TensorFlow formats, which this version does not export",
    "int8": "--int8 quantisation is not supported for TorchScript or ONNX export; drop --int8",
    "per_tensor": "--per-tensor applies to TensorFlow int8 export, which this version does not do",
    "nms": "--nms (NMS inside the exported model) is not supported; val.py and detect.py run NMS after the model",
    "agnostic_nms": "--agnostic-nms (NMS inside the exported model) is not supported; drop the flag",
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="export.py", description="Export YOLOv5 weights to TorchScript and/or ONNX.")
    p.add_argument("--data", default=None, help="dataset.yaml path (accepted; class names come from the weights)")
    p.add_argument("--weights", nargs="+", default=["yolov5s.pt"], help="model.pt path(s)")
    p.add_argument(
        "--imgsz", "--img", "--img-size", dest="imgsz", nargs="+", type=int, default=[640, 640], help="image (h, w)"
    )
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=1, help="batch size")
    add_device(p)
    p.add_argument("--half", action="store_true", help="FP16 half-precision export (GPU only)")
    p.add_argument("--inplace", action="store_true", help="accepted for upstream compatibility; has no effect here")
    p.add_argument("--keras", action="store_true", help="TF: use Keras (not supported)")
    p.add_argument("--optimize", action="store_true", help="TorchScript: optimize for mobile (needs XNNPACK)")
    p.add_argument("--int8", action="store_true", help="INT8 quantization (not supported)")
    p.add_argument("--per-tensor", action="store_true", help="TF per-tensor quantization (not supported)")
    p.add_argument("--dynamic", action="store_true", help="ONNX/TorchScript: dynamic batch, height and width")
    p.add_argument("--simplify", action="store_true", help="ONNX: simplify model (needs onnxslim or onnxsim)")
    p.add_argument("--opset", type=int, default=17, help="ONNX: opset version")
    p.add_argument("--verbose", action="store_true", help="TensorRT: verbose log (accepted; no effect here)")
    p.add_argument("--workspace", type=int, default=4, help="TensorRT: workspace size (GB) (accepted; no effect)")
    p.add_argument("--nms", action="store_true", help="TF: add NMS to model (not supported)")
    p.add_argument("--agnostic-nms", action="store_true", help="TF: add agnostic NMS to model (not supported)")
    p.add_argument("--topk-per-class", type=int, default=100, help="TF.js NMS: topk per class (accepted; unused)")
    p.add_argument("--topk-all", type=int, default=100, help="TF.js NMS: topk for all classes (accepted; unused)")
    p.add_argument("--iou-thres", type=float, default=0.45, help="TF.js NMS: IoU threshold (accepted; unused)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="TF.js NMS: confidence threshold (accepted; unused)")
    p.add_argument(
        "--include",
        nargs="+",
        default=["torchscript"],
        help="formats to write: torchscript, onnx (upstream's others are not supported)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)

    def body() -> int:
        for flag, why in _UNSUPPORTED_FLAGS.items():
            if getattr(args, flag):
                raise BadFlag(why)
        from yolodist.export.formats import parse_formats

        formats = parse_formats(args.include)  # before torch is even imported
        from yolodist.export.run import ExportOptions, export
        from yolodist.utils.devices import select_device
        from yolodist.utils.log import setup_logging

        setup_logging(0)
        if args.inplace:
            logging.getLogger(__name__).info("--inplace has no effect here: the Detect head never decodes in place")
        device = select_device(args.device)  # one model at a time, so one device
        failed_any = False
        for weights in args.weights:
            options = ExportOptions(
                weights=Path(weights),
                include=formats,
                imgsz=tuple(args.imgsz),
                batch=args.batch_size,
                device=device,
                half=args.half,
                dynamic=args.dynamic,
                simplify=args.simplify,
                opset=args.opset,
                optimize=args.optimize,
            )
            _, failed = export(options)
            failed_any = failed_any or bool(failed)
        return 1 if failed_any else 0

    return run_command("export", body)
