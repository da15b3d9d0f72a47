"""Flags -> TrainConfig: profiles, validation, hyperparameter files."""

import pytest

from yolodist.cli.train import build_parser, config_from_args
from yolodist.config.io import load_hyp, resolve_hyp
from yolodist.config.presets import DEMO, UPSTREAM
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.errors import BadConfig, BadFlag


def parse(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_no_flags_is_the_builtin_demo():
    cfg = parse()
    assert cfg.data == "shapes.yaml"
    assert (cfg.cfg, cfg.weights, cfg.imgsz, cfg.epochs, cfg.nbs) == (
        DEMO["cfg"],
        DEMO["weights"],
        DEMO["imgsz"],
        DEMO["epochs"],
        DEMO["nbs"],
    )


def test_named_dataset_gets_upstream_defaults():
    cfg = parse("--data", "coco.yaml", "--cfg", "yolov5s.yaml")
    assert (cfg.imgsz, cfg.epochs, cfg.batch_size, cfg.nbs, cfg.hyp) == (
        UPSTREAM["imgsz"],
        UPSTREAM["epochs"],
        UPSTREAM["batch_size"],
        64,
        "hyp.scratch-low.yaml",
    )
    assert cfg.weights == ""  # --cfg alone trains from scratch
    assert parse("--data", "coco.yaml").weights == "yolov5s.pt"


def test_upstream_aliases():
    cfg = parse("--batch", "64", "--img", "320", "--local_rank", "1", "--data", "x.yaml", "--weights", "a.pt")
    assert (cfg.batch_size, cfg.imgsz, cfg.local_rank) == (64, 320, 1)
    assert parse("--local-rank=0").local_rank == 0
    assert parse("--img-size", "128").imgsz == 128


def test_explicit_flags_win_over_the_demo():
    cfg = parse("--epochs", "3", "--img", "128", "--cfg", "yolov5s.yaml")
    assert (cfg.epochs, cfg.imgsz, cfg.cfg) == (3, 128, "yolov5s.yaml")


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch", "0"],
        ["--epochs", "0"],
        ["--img", "8"],
        ["--workers", "-1"],
        ["--cache", "gpu"],
        ["--dist-timeout", "0"],
    ],
)
def test_bad_values_are_user_errors(argv):
    with pytest.raises(BadFlag):
        parse(*argv)


def test_image_weights_and_rect_exclude_each_other():
    assert parse("--image-weights").image_weights and parse("--image_weights").image_weights
    with pytest.raises(BadFlag, match="--image-weights draws images at random and --rect"):
        parse("--image-weights", "--rect")


def test_batch_must_divide_world():
    cfg = parse("--batch", "6")
    cfg.check_world(2)
    with pytest.raises(BadFlag, match="multiple of 4"):
        cfg.check_world(4)


def test_nothing_to_train():
    with pytest.raises(BadFlag, match="nothing to train"):
        parse("--data", "x.yaml", "--weights", "")


def test_hyp_files():
    assert resolve_hyp("hyp.scratch-low.yaml").is_file()
    hyp = load_hyp("hyp.scratch-low.yaml")
    assert hyp == Hyp()  # the shipped file and the dataclass defaults agree
    assert load_hyp("hyp.shapes-demo.yaml").warmup_epochs == 1.0
    with pytest.raises(BadConfig, match="not found"):
        resolve_hyp("nope.yaml")


def test_hyp_unknown_key_and_bad_value(tmp_path):
    bad = tmp_path / "h.yaml"
    bad.write_text("lr0: 0.01\nlr_zero: 3\n")
    with pytest.raises(BadConfig, match="lr_zero"):
        load_hyp(bad)
    bad.write_text("mosaic: 2.0\n")
    with pytest.raises(BadConfig, match="probability"):
        load_hyp(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(BadConfig, match="mapping"):
        load_hyp(bad)
