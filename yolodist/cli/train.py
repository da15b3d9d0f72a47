"""``yolodist train`` / ``python train.py``: flags as upstream YOLOv5's train.py."""

from __future__ import annotations

import argparse
import sys

from yolodist.cli.exit import run_command
from yolodist.cli.flags import (
    ArgumentParser,
    add_device,
    add_image_size,
    add_local_rank,
    add_refused,
    add_run_dir,
)
from yolodist.config.presets import TRAIN_PROJECT, resolve_evolve, resolve_profile
from yolodist.config.schema import AMP_MODES, HSV_PLACES, OPTIMIZERS, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="train.py",
        description="Train a YOLOv5 detector. With no --data, trains the built-in 'shapes' demo on this machine.",
    )
    # In upstream's order, which --help shows.
    _add_inputs(p)
    _add_run_switches(p)
    _add_recipe(p)
    _add_own_flags(p)
    add_launch_flags(p)
    add_refused(p, REFUSED)
    return p


def _add_inputs(p: argparse.ArgumentParser) -> None:
    """What is trained, on what, how long and in what batches."""
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


def _add_run_switches(p: argparse.ArgumentParser) -> None:
    """Which steps of a run happen: resuming, saving, validating, AutoAnchor, plots, evolution, caching."""
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
    p.add_argument(
        "--evolve",
        type=int,
        nargs="?",
        const=300,
        default=None,
        help="evolve hyperparameters for x generations in all (runs/evolve; continue with --exist-ok)",
    )
    p.add_argument("--cache", nargs="?", const="ram", default=None, help="image --cache ram (default) or disk")
    p.add_argument(
        "--image-weights",
        "--image_weights",
        dest="image_weights",
        action="store_true",
        help="draw training images weighted by their classes' rarity and last mAP (with replacement)",
    )


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """Devices, the rest of upstream's training recipe, and where the run is saved."""
    add_device(p)
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="optimizer (default SGD; the demo uses AdamW)")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per process)")
    add_run_dir(p, TRAIN_PROJECT)
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--deterministic", action="store_true", help="use deterministic algorithms (bit-identical CPU runs)")
    add_local_rank(p)


def _add_own_flags(p: argparse.ArgumentParser) -> None:
    """Flags upstream does not have: the nominal batch, the collective timeout, precision and memory layout."""
    p.add_argument(
        "--nbs",
        type=int,
        default=None,
        help="nominal batch size: gradients accumulate up to it (upstream: 64)",
    )
    p.add_argument("--dist-timeout", type=float, default=1800.0, help="distributed collective timeout in seconds")
    p.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="auto",
        help="autocast: auto = float16 on CUDA, bfloat16 on CPUs with native bfloat16 (AMX/AVX512-BF16), else off",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train with channels-last tensors (faster convolutions on oneDNN and cuDNN)",
    )
    p.add_argument(
        "--scaled-decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let libjpeg shrink training JPEGs at least twice --img by 2, 4 or 8 while decoding (faster; "
        "--no-scaled-decode: full decode, then resize, as upstream)",
    )
    p.add_argument(
        "--hsv-jitter",
        choices=HSV_PLACES,
        default="auto",
        help="where the HSV colour jitter runs: in the dataloader workers, or on the training device after "
        "batching (the same pixels either way); auto = device on CUDA, loader on CPU",
    )


_NO_WANDB = (
    "is a Weights & Biases option and yolodist has no W&B logger; every epoch's metrics are in results.csv "
    "(and in TensorBoard, when tensorboard is installed)"
)
# Upstream v7.0 train.py flags that yolodist does not offer (yet), each with what to do instead.
REFUSED = {
    ("--quad",): "(upstream's 4-images-per-tile collate) is not implemented in yolodist; train without it",
    ("--bucket",): "(a gsutil bucket) is not supported; copy the data locally (gsutil -m cp -r) and point --data at it",
    ("--entity",): _NO_WANDB,
    ("--upload_dataset", "--upload-dataset"): _NO_WANDB,
    ("--bbox_interval", "--bbox-interval"): _NO_WANDB,
    ("--artifact_alias", "--artifact-alias"): _NO_WANDB,
}


def add_launch_flags(p: argparse.ArgumentParser) -> None:
    """Our launch shortcut: start the DDP job through torch.distributed.run from this command."""
    group = p.add_argument_group(
        "launch shortcut (instead of python -m torch.distributed.run)",
        "--dist-timeout also bounds how long the nodes wait for each other to join.",
    )
    group.add_argument(
        "--nproc-per-node",
        "--nproc_per_node",
        dest="nproc_per_node",
        type=int,
        default=None,
        help="processes on this machine",
    )
    group.add_argument("--nnodes", type=int, default=1, help="number of machines")
    group.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0, help="this machine's rank")
    group.add_argument(
        "--master-addr", "--master_addr", dest="master_addr", default="127.0.0.1", help="address of machine 0"
    )
    group.add_argument(
        "--master-port",
        "--master_port",
        dest="master_port",
        type=int,
        default=None,
        help="port on machine 0 (default: a free port, single machine only)",
    )


LAUNCH_FLAGS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")


def strip_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` without the launch-shortcut flags, for the processes the launcher starts."""
    names = {f"--{n}" for n in LAUNCH_FLAGS} | {f"--{n.replace('_', '-')}" for n in LAUNCH_FLAGS}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in names:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = resolve_evolve(resolve_profile({k: v for k, v in vars(args).items() if k not in LAUNCH_FLAGS}))
    freeze = values.pop("freeze")
    cfg = TrainConfig(**values, freeze=tuple(freeze))
    if cfg.cfg and not cfg.resume:
        from yolodist.models.yolo import resolve_cfg

        resolve_cfg(cfg.cfg)  # a mistyped --cfg is said at once, not after the data is checked or generated
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)

    def body() -> int:
        from yolodist.distributed import launcher

        if args.nproc_per_node and not launcher.under_launcher():
            config_from_args(args).check_world(args.nproc_per_node * args.nnodes)  # fail before launching
            where = launcher.plan(
                args.nproc_per_node,
                args.nnodes,
                args.node_rank,
                args.master_addr,
                args.master_port,
                join_timeout_s=args.dist_timeout,
            )
            return launcher.launch(where, "yolodist.cli", ["train", *strip_launch_flags(argv)])
        cfg = config_from_args(args)
        from yolodist.engine.trainer import train  # heavy imports only after the flags are fine

        if cfg.evolve:
            from yolodist.evolve.loop import evolve

            return train(cfg, body=evolve)
        return train(cfg)

    return run_command("train", body)
