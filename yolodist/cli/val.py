"""``yolodist val`` / ``python val.py``: flags and output as upstream YOLOv5's val.py.

Under ``torchrun`` every rank validates its shard and rank 0 reports (distributed validation);
the metrics are those of a single process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from yolodist.cli.exit import run_command
from yolodist.cli.flags import ArgumentParser, add_device, add_image_size, add_local_rank, add_run_dir
from yolodist.config.schema import ValConfig
from yolodist.errors import BadFlag

if TYPE_CHECKING:  # the command imports torch and the model code only once its flags are fine
    from yolodist.data.spec import DataSpec
    from yolodist.distributed.env import DistEnv
    from yolodist.eval.validator import ValResult
    from yolodist.infer.backend import Backend

LOGGER = logging.getLogger("yolodist")
UNSUPPORTED = {
    "augment": "test-time augmentation (--augment)",
    "save_hybrid": "--save-hybrid (it writes labels mixed with predictions, which inflates mAP)",
    "dnn": "OpenCV DNN inference (--dnn); use an .onnx file with onnxruntime",
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="val.py", description="Validate a trained YOLOv5 model on a dataset's val or test split.")
    p.add_argument("--data", default=None, help="dataset.yaml path (default: built-in shapes)")
    p.add_argument("--weights", nargs="+", default=["yolov5s.pt"], help="model path (.pt, .torchscript, .onnx)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=32, help="batch size (all ranks)")
    add_image_size(p, 640)
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", default="val", help="val, test or speed")
    add_device(p)
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per process)")
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--augment", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-hybrid", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file and score it")
    add_run_dir(p, "runs/val")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA)")
    p.add_argument("--dnn", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--dist-timeout", type=float, default=1800.0, help="distributed collective timeout in seconds")
    add_local_rank(p)
    return p


def config_from_args(args: argparse.Namespace) -> ValConfig:
    """The flags as a ValConfig, the settings the task runs with; refused flags stop here."""
    for flag, what in UNSUPPORTED.items():
        if getattr(args, flag):
            raise BadFlag(f"{what} is not supported by this val.py; drop the flag")
    values = {k: v for k, v in vars(args).items() if k not in UNSUPPORTED}
    values["weights"] = tuple(values["weights"])
    return ValConfig(**values).for_task()


def run(cfg: ValConfig) -> None:
    """Validate on every rank of the launch; rank 0 reports and writes."""
    from yolodist.distributed import env as dist_env
    from yolodist.distributed.session import session
    from yolodist.utils.log import setup_logging

    env = dist_env.detect(cfg.device, cfg.local_rank)
    setup_logging(env.rank)
    with session(env, cfg.dist_timeout) as joined:
        _validate(cfg, joined)


def _validate(cfg: ValConfig, env: DistEnv) -> None:
    from yolodist.eval.pipeline import build_val_loader, run_val
    from yolodist.infer.backend import load_backend

    backend = load_backend(cfg.weights[0], env.device, half=cfg.half)
    spec, names, split = _dataset(cfg, env, backend)
    cfg = cfg.replace(imgsz=_check_imgsz(cfg.imgsz, backend))
    # A fixed-shape export takes square letterboxed inputs only.
    loader = build_val_loader(cfg, env, split, backend.stride, spec.nc, rect=backend.fixed_shape is None)
    save_dir = _save_dir(cfg, env)
    result = run_val(cfg, env, backend, loader, names, save_dir, report=lambda r: _report(cfg, env, r, names))
    if env.is_main:
        _save(cfg, result, names, save_dir, spec.path)


def _dataset(cfg: ValConfig, env: DistEnv, backend: Backend) -> tuple[DataSpec, list[str], list[Path]]:
    """The dataset, the class names to report and the split to validate, checked against the model."""
    from yolodist.data.spec import load_data_spec
    from yolodist.distributed.scope import main_first

    with main_first(env, local=True, name="val-dataset-yaml"):
        spec = load_data_spec(cfg.data)
    names = ["item"] if cfg.single_cls else list(backend.names)
    if not cfg.single_cls and len(backend.names) != spec.nc:
        raise BadFlag(
            f"{cfg.weights[0]} was trained on {len(backend.names)} classes but {spec.yaml_file} has {spec.nc}; "
            "pass the dataset the model was trained on (or --single-cls)"
        )
    split = spec.test if cfg.task == "test" else spec.val
    if not split:
        raise BadFlag(f"{spec.yaml_file} has no '{cfg.task}' split; add it to the YAML or use --task val")
    return spec, names, split


def _save_dir(cfg: ValConfig, env: DistEnv) -> Path:
    """project/name made unique by rank 0; every rank gets its path (the plot hooks need it)."""
    from yolodist.distributed import collectives
    from yolodist.utils.paths import increment_path

    save_dir = None
    if env.is_main:
        save_dir = increment_path(Path(cfg.project) / cfg.name, exist_ok=cfg.exist_ok, mkdir=True)
    return Path(collectives.broadcast_object(str(save_dir) if save_dir else None, env))


def _report(cfg: ValConfig, env: DistEnv, result: ValResult, names: list[str]) -> None:
    from yolodist.eval.pipeline import rank_batch
    from yolodist.eval.validator import format_table

    nc = len(names)
    LOGGER.info(format_table(result, per_class=(cfg.verbose or nc < 50) and nc > 1))
    shape = (rank_batch(cfg.batch_size, env.world_size), 3, cfg.imgsz, cfg.imgsz)
    pre, inf, nms = result.speed_ms
    LOGGER.info(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape {shape}")


def _save(cfg: ValConfig, result: ValResult, names: list[str], save_dir: Path, data_root: Path) -> None:
    """The --save-txt labels and the --save-json predictions (scored when COCO annotations are there)."""
    from yolodist.eval import outputs

    if cfg.save_txt:
        n = outputs.write_txt(result.records, save_dir / "labels", cfg.save_conf)
        LOGGER.info(f"{n} labels saved to {save_dir / 'labels'}")
    if cfg.save_json:
        scored = outputs.write_and_score_json(result.records, names, save_dir, Path(cfg.weights[0]).stem, data_root)
        if scored is not None:
            LOGGER.info(f"COCO evaluator: mAP@0.5:0.95 {scored[0]:.4f}, mAP@0.5 {scored[1]:.4f}")
    LOGGER.info(f"Results saved to {save_dir}")


def _check_imgsz(imgsz: int, backend: Backend) -> int:
    if backend.fixed_shape is not None:
        h, w = backend.fixed_shape
        if h != w or imgsz != h:
            LOGGER.warning(f"{backend.__class__.__name__} was exported for {h}x{w} inputs; validating at {h}")
        return h
    rounded = max(-(-imgsz // backend.stride) * backend.stride, backend.stride)
    if rounded != imgsz:
        LOGGER.warning(f"--img {imgsz} must be a multiple of the max stride {backend.stride}, updating to {rounded}")
    return rounded


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(config_from_args(args))
        return 0

    return run_command("val", body)
