"""``yolodist detect`` / ``python detect.py``: flags as upstream YOLOv5's detect.py."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from yolodist.cli.exit import run_command
from yolodist.cli.flags import ArgumentParser, add_device, add_run_dir
from yolodist.errors import BadData, BadFlag

LOGGER = logging.getLogger("yolodist.cli.detect")
DEFAULT_SOURCE = Path("data/images")
# Flags upstream has that this version cannot honour; accepting them silently would be a lie.
UNSUPPORTED = {
    "augment": "--augment (test-time augmentation)",
    "visualize": "--visualize (feature-map plots)",
    "dnn": "--dnn (OpenCV DNN inference)",
    "update": "--update (re-saving the weights)",
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="detect.py", description="Run a YOLOv5 detector on images, folders, globs and videos.")
    p.add_argument("--weights", nargs="+", default=["yolov5s.pt"], help="model path (.pt)")
    p.add_argument("--source", nargs="+", default=None, help="file/dir/glob/.txt list/video (default: data/images)")
    p.add_argument("--data", default=None, help="(optional) dataset.yaml path, for class names the weights lack")
    p.add_argument(
        "--imgsz", "--img", "--img-size", dest="imgsz", nargs="+", type=int, default=[640], help="inference size h,w"
    )
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    add_device(p)
    p.add_argument("--view-img", action="store_true", help="show results")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument(
        "--save-format", type=int, choices=(0, 1), default=0, help="--save-txt boxes: 0 = YOLO xywh, 1 = xyxy"
    )
    p.add_argument("--save-csv", action="store_true", help="save results in CSV format")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--augment", action="store_true", help="augmented inference (not supported)")
    p.add_argument("--visualize", action="store_true", help="visualize features (not supported)")
    p.add_argument("--update", action="store_true", help="update all models (not supported)")
    add_run_dir(p, "runs/detect")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    p.add_argument("--dnn", action="store_true", help="use OpenCV DNN for ONNX inference (not supported)")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    return p


def check_args(args: argparse.Namespace) -> list[str]:
    """Refuse what cannot work, before any work; returns the source entries."""
    for flag, what in UNSUPPORTED.items():
        if getattr(args, flag):
            raise BadFlag(f"{what} is not supported in this version; run without it")
    if len(args.weights) != 1:
        raise BadFlag(f"--weights got {len(args.weights)} files but ensembles are not supported; pass one")
    if args.source is not None:
        return list(args.source)
    if not DEFAULT_SOURCE.exists():
        raise BadFlag(f"no --source given and the default {DEFAULT_SOURCE} does not exist; pass --source PATH")
    return [str(DEFAULT_SOURCE)]


def names_from_data(data: str | None) -> list[str] | None:
    """Class names listed in a dataset YAML (list or {id: name} map), for weights that carry none."""
    if data is None:
        return None
    import yaml

    path = Path(data).expanduser()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadData(f"--data {data} cannot be read ({type(e).__name__}); fix the path or drop --data") from e
    names = raw.get("names") if isinstance(raw, dict) else None
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list):
        raise BadData(f"--data {data} has no 'names' list; fix it or drop --data (names come from the weights)")
    return [str(n) for n in names]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)

    def body() -> int:
        from yolodist.infer.sources import Source
        from yolodist.utils.log import colorstr, setup_logging

        setup_logging()
        # Flags and the source are checked before torch is imported: a typo costs no start-up time.
        source = Source(check_args(args), args.vid_stride)
        LOGGER.info(colorstr("detect: ") + ", ".join(f"{k}={v}" for k, v in vars(args).items()))

        from yolodist.infer.predict import DetectOptions, run_detect
        from yolodist.utils.devices import select_device

        options = DetectOptions(
            weights=Path(args.weights[0]),
            imgsz=tuple(args.imgsz),
            conf_thres=args.conf_thres,
            iou_thres=args.iou_thres,
            max_det=args.max_det,
            classes=tuple(args.classes) if args.classes is not None else None,
            agnostic_nms=args.agnostic_nms,
            project=Path(args.project),
            name=args.name,
            exist_ok=args.exist_ok,
            view_img=args.view_img,
            save_txt=args.save_txt,
            save_format=args.save_format,
            save_csv=args.save_csv,
            save_conf=args.save_conf,
            save_crop=args.save_crop,
            nosave=args.nosave,
            line_thickness=args.line_thickness if args.line_thickness > 0 else None,
            hide_labels=args.hide_labels,
            hide_conf=args.hide_conf,
            half=args.half,
            data_names=names_from_data(args.data),
        )
        run_detect(source, options, select_device(args.device))  # detect runs on one device
        return 0

    return run_command("detect", body)
