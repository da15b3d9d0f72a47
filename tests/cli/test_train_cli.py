"""End-to-end: train.py run as a user runs it, on tiny generated data."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_script, tensorboard_scalars

TINY = [
    "--cfg",
    "yolov5n.yaml",
    "--weights",
    "",
    "--img",
    "64",
    "--batch",
    "4",
    "--workers",
    "0",
    "--device",
    "cpu",
]


def train(tmp_path: Path, data: Path, *extra: str, name: str = "exp", plots: bool = False) -> tuple[Path, str]:
    """A tiny training run; without ``plots`` it draws none (3 s of each run), as --noplots."""
    proc = run_script(
        [
            str(ROOT / "train.py"),
            "--data",
            str(data),
            *TINY,
            "--project",
            str(tmp_path / "runs"),
            "--name",
            name,
            *extra,
            *([] if plots or "--noplots" in extra else ["--noplots"]),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "runs" / name, proc.stdout + proc.stderr


def test_help_lists_the_flags(tmp_path):
    proc = run_script([str(ROOT / "train.py"), "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for flag in (
        "--weights",
        "--cfg",
        "--data",
        "--batch-size",
        "--img",
        "--sync-bn",
        "--resume",
        "--device",
    ):
        assert flag in proc.stdout


def test_two_epochs_write_the_run(tmp_path, tiny_shapes):
    run, out = train(tmp_path, tiny_shapes, "--epochs", "2", plots=True)
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "hyp.yaml", "opt.yaml"):
        assert (run / f).is_file(), f
    rows = list(csv.reader(open(run / "results.csv")))
    header = [c.strip() for c in rows[0]]
    assert header[:4] == ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss"]
    assert "metrics/mAP_0.5:0.95" in header and header[-3:] == ["x/lr0", "x/lr1", "x/lr2"]
    assert len(rows) == 3
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)  # plain state dicts, no pickled code
    assert {"model", "ema", "optimizer", "epoch", "best_fitness", "opt", "yaml", "names"} <= set(ckpt)
    assert ckpt["epoch"] == 1
    # best.pt ends as upstream's: the EMA weights in half precision, no optimizer; last.pt keeps everything.
    best = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert best["optimizer"] is None and best["ema"] is None and best["epoch"] == -1
    assert best["model"]["model.0.conv.weight"].dtype == torch.float16
    assert ckpt["model"]["model.0.conv.weight"].dtype == torch.float32 and ckpt["optimizer"] is not None
    assert f"Optimizer stripped from {run / 'weights' / 'best.pt'}" in out
    assert "summary:" in out and "parameters" in out and "GFLOPs" in out
    for plot in ("labels.jpg", "train_batch0.jpg", "results.png", "confusion_matrix.png", "val_batch0_pred.jpg"):
        assert (run / plot).stat().st_size > 0, plot


def test_weights_transfer_reports_count(tmp_path, tiny_shapes):
    first, _ = train(tmp_path, tiny_shapes, "--epochs", "1", name="a")
    _, out = train(
        tmp_path,
        tiny_shapes,
        "--epochs",
        "1",
        "--weights",
        str(first / "weights" / "best.pt"),
        "--cfg",
        "",
        name="b",
    )
    ckpt = torch.load(first / "weights" / "best.pt", weights_only=True)
    n = len(ckpt["model"])
    assert f"Transferred {n}/{n} items" in out


@pytest.mark.parametrize(
    "extra", [[], ["--image-weights"], ["--amp", "bf16"]], ids=["plain", "image-weights", "bfloat16"]
)
def test_resume_matches_uninterrupted(tmp_path, tiny_shapes, extra):
    """Resuming from the end of epoch 0 ends with the same weights as the run that never stopped.

    Also in bfloat16 autocast (--amp auto's choice on CPUs with AMX or AVX512-BF16; named here, since
    --deterministic alone keeps float32): its rounding is as repeatable as float32's."""
    run = ("--epochs", "3", "--save-period", "1", "--deterministic", *extra)
    full, out = train(tmp_path, tiny_shapes, *run, name="full")
    assert ("step: bfloat16 autocast" in out) == ("bf16" in extra)
    interrupted = tmp_path / "runs" / "cut"
    (interrupted / "weights").mkdir(parents=True)
    shutil.copy(full / "weights" / "epoch0.pt", interrupted / "weights" / "last.pt")
    proc = run_script([str(ROOT / "train.py"), "--resume", str(interrupted / "weights" / "last.pt")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = torch.load(full / "weights" / "last.pt", weights_only=True)
    b = torch.load(interrupted / "weights" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:  # bitwise: CPU, --deterministic, all randomness keyed by (seed, epoch, index)
        assert torch.equal(b["model"][key], a["model"][key]), key
        assert torch.equal(b["ema"][key], a["ema"][key]), key
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    # A finished run cannot be resumed again; the message says what to do instead.
    proc = run_script([str(ROOT / "train.py"), "--resume", str(interrupted / "weights" / "last.pt")], cwd=tmp_path)
    assert proc.returncode != 0 and "already finished" in proc.stderr and "Traceback" not in proc.stderr
    if importlib.util.find_spec("tensorboard") is not None:
        # The resumed run's TensorBoard steps carry on from its first epoch, in the run's own directory.
        assert len(list(interrupted.glob("events.out.tfevents.*"))) == 1
        resumed, uninterrupted = tensorboard_scalars(interrupted), tensorboard_scalars(full)
        assert sorted(resumed) == sorted(uninterrupted)
        for tag, series in uninterrupted.items():
            assert [step for step, _ in series] == [0, 1, 2]
            assert resumed[tag] == series[1:], tag  # bitwise the same training, so the same values


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "missing.yaml", "--cfg", "yolov5n.yaml"], "missing.yaml"),
        (["--cfg", "yolov5q.yaml"], "yolov5q"),
        (["--weights", "nothere.pt"], "nothere.pt"),
        # Our messages, not argparse's (which would name the flag too, in "unrecognized arguments").
        (["--batch", "0"], "--batch-size must be at least 1, got 0"),
        (["--sync-bn"], "--sync-bn needs DDP: launch with python -m torch.distributed.run --nproc_per_node N"),
    ],
)
def test_user_errors_are_one_line(tmp_path, argv, message):
    proc = run_script([str(ROOT / "train.py"), *argv], cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line
    assert proc.stderr.startswith("yolodist train: error: ") and message in proc.stderr, proc.stderr
    assert "unrecognized arguments" not in proc.stderr and "Traceback" not in proc.stderr


def test_training_flags_work_together(tmp_path, tiny_shapes):
    """--rect --cache --multi-scale --single-cls --freeze --cos-lr --label-smoothing --noval --nosave --optimizer."""
    run, out = train(
        tmp_path,
        tiny_shapes,
        "--epochs",
        "2",
        "--rect",
        "--cache",
        "ram",
        "--multi-scale",
        "--single-cls",
        "--freeze",
        "3",
        "--cos-lr",
        "--label-smoothing",
        "0.1",
        "--noval",
        "--nosave",
        "--optimizer",
        "Adam",
        "--noautoanchor",
        "--seed",
        "5",
        "--noplots",
    )
    assert not list(run.glob("*.jpg")) and not list(run.glob("*.png"))  # --noplots
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert ckpt["names"] == ["item"] and ckpt["nc"] == 1
    assert ckpt["opt"]["rect"] and ckpt["opt"]["optimizer"] == "Adam" and ckpt["opt"]["freeze"] == [3]
    assert "Freezing layers [0, 1, 2]" in out
    # Frozen layers keep their initial values; later layers trained.
    from yolodist.models import Model
    from yolodist.utils.seed import seed_everything

    seed_everything(5)
    initial = Model("yolov5n.yaml", nc=1).state_dict()
    assert torch.equal(ckpt["model"]["model.0.conv.weight"], initial["model.0.conv.weight"])
    assert torch.equal(ckpt["model"]["model.2.cv1.conv.weight"], initial["model.2.cv1.conv.weight"])
    assert not torch.equal(ckpt["model"]["model.24.m.0.weight"], initial["model.24.m.0.weight"])
    rows = list(csv.reader(open(run / "results.csv")))
    assert len(rows) == 3
    assert float(rows[1][6]) == 0.0 and float(rows[2][6]) >= 0.0  # --noval: only the final epoch validated


# Every flag of upstream YOLOv5 v7.0's train.py, with a value where it takes one.
UPSTREAM_TRAIN_FLAGS = [
    ["--weights", "x.pt"], ["--cfg", "yolov5n.yaml"], ["--data", "d.yaml"], ["--hyp", "h.yaml"], ["--epochs", "3"],
    ["--batch-size", "8"], ["--imgsz", "320"], ["--img", "320"], ["--img-size", "320"], ["--rect"], ["--resume"],
    ["--nosave"], ["--noval"], ["--noautoanchor"], ["--noplots"], ["--evolve"], ["--evolve", "10"],
    ["--bucket", "b"], ["--cache"], ["--cache", "disk"], ["--image-weights"], ["--device", "cpu"], ["--multi-scale"],
    ["--single-cls"], ["--optimizer", "Adam"], ["--sync-bn"], ["--workers", "2"], ["--project", "p"], ["--name", "n"],
    ["--exist-ok"], ["--quad"], ["--cos-lr"], ["--label-smoothing", "0.1"], ["--patience", "5"], ["--freeze", "10"],
    ["--save-period", "2"], ["--seed", "1"], ["--local_rank", "0"], ["--entity", "me"], ["--upload_dataset"],
    ["--upload_dataset", "val"], ["--bbox_interval", "2"], ["--artifact_alias", "latest"],
]  # fmt: skip


@pytest.mark.parametrize("flag", UPSTREAM_TRAIN_FLAGS, ids=lambda f: " ".join(f))
def test_every_upstream_flag_works_or_is_refused_in_one_line(flag, capsys):
    from yolodist.cli.train import build_parser

    try:
        args = build_parser().parse_args(flag)
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"train.py: error: {flag[0]} ") and "unrecognized arguments" not in err, err
        assert " instead" in err or "without it" in err or "results.csv" in err or "--data" in err, err
    else:
        assert not any(k.startswith("refused_") for k in vars(args))


def test_evolve_is_offered_now_with_upstreams_default():
    from yolodist.cli.train import REFUSED, build_parser

    assert not any("--evolve" in flags for flags in REFUSED)
    assert build_parser().parse_args(["--evolve"]).evolve == 300
    assert build_parser().parse_args(["--evolve", "10"]).evolve == 10
    assert build_parser().parse_args([]).evolve is None


def test_a_refused_upstream_flag_is_one_line_from_the_command(tmp_path):
    proc = run_script([str(ROOT / "train.py"), "--quad", "--epochs", "1"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "train.py: error: --quad (upstream's 4-images-per-tile collate) is not implemented in yolodist; "
        "train without it (see train.py --help)"
    ]
