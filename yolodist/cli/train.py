"""``yolodist train`` / ``python train.py``: flags as upstream YOLOv5's train.py."""

from __future__ import annotations

import argparse
import sys

from yolodist.cli.exit import run_command
from yolodist.cli.flags import ArgumentParser, add_device, add_image_size, add_local_rank, add_run_dir
from yolodist.config.presets import resolve_profile
from yolodist.config.schema import OPTIMIZERS, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="train.py",
        description="Train a YOLOv5 detector. With no --data, trains the built-in 'shapes' demo on this machine.",
    )
    p.add_argument("--weights", default=None, help="initial weights path ('' = from scratch)")
    p.add_argument("--cfg", default=None, help="model.yaml path or shipped name (yolov5n/s/m/l/x.yaml)")
    p.add_argument("--data", default=None, help="dataset.yaml path (default: built-in shapes demo)")
    p.add_argument("--hyp", default=None, help="hyperparameters path or shipped name")
    p.add_argument("--epochs", type=int, default=None, help="total training epochs")
    p.add_argument(
        "--batch-size",
        "--batch",
        dest="batch_size",
        type=int,
        default=None,
        help="total batch size for all GPUs",
    )
    add_image_size(p, None)
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="resume most recent training, or the given last.pt",
    )
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--cache", nargs="?", const="ram", default=None, help="image --cache ram (default) or disk")
    add_device(p)
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="optimizer (default SGD; the demo uses AdamW)")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per process)")
    add_run_dir(p, "runs/train")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--deterministic", action="store_true", help="use deterministic algorithms (bit-identical CPU runs)")
    add_local_rank(p)
    p.add_argument(
        "--nbs",
        type=int,
        default=None,
        help="nominal batch size: gradients accumulate up to it (upstream: 64)",
    )
    p.add_argument("--dist-timeout", type=float, default=1800.0, help="distributed collective timeout in seconds")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = resolve_profile(vars(args))
    freeze = values.pop("freeze")
    return TrainConfig(**values, freeze=tuple(freeze))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from yolodist.engine.launch import train  # heavy imports only after the flags are fine

        return train(config_from_args(args))

    return run_command("train", body)
