"""End-to-end: detect.py run as a user runs it, on a tiny checkpoint, two images and a video."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, run_script, write_checkpoint

NAMES = ["circle", "square", "triangle"]


def build_weights(path: Path) -> Path:
    """An untrained yolov5n checkpoint whose head is biased so every cell predicts a confident 'circle'.

    An untrained model finds nothing at --conf-thres 0.25, which would leave drawing, labels and crops
    untested; with objectness and class 0 logits at +6 every image yields detections.
    """

    def confident_circles(model) -> None:
        for conv in model.detect.m:
            bias = conv.bias.view(model.detect.na, -1)
            bias[:, 4] = 6.0
            bias[:, 5] = 6.0
            bias[:, 6:] = -6.0

    return write_checkpoint(path, NAMES, edit=confident_circles)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(weights, source folder holding a.jpg 48x64, b.png 64x40 and clip.avi of 3 frames 64x48)."""
    root = tmp_path_factory.mktemp("detect")
    weights = build_weights(root / "x.pt")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(src / "a.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert cv2.imwrite(str(src / "b.png"), rng.integers(0, 255, (64, 40, 3), dtype=np.uint8))
    writer = cv2.VideoWriter(str(src / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for _ in range(3):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return weights, src


def detect(cwd: Path, *args: str):
    return run_script([str(ROOT / "detect.py"), *args], cwd=cwd, timeout=120)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_detect_saves_images_video_labels_and_crops(setup, tmp_path):
    weights, src = setup
    proc = detect(
        tmp_path,
        *("--weights", str(weights), "--source", str(src), "--img", "64", "--device", "cpu"),
        *("--save-txt", "--save-conf", "--save-crop", "--save-csv", "--max-det", "2"),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    run = tmp_path / "runs" / "detect" / "exp"
    assert f"image 1/3 {src / 'a.jpg'}: 64x64 2 circles, " in proc.stdout
    assert f"video 3/3 (3/3) {src / 'clip.avi'}: 64x64 2 circles, " in proc.stdout
    assert "Speed: " in proc.stdout and "per image at shape (1, 3, 64, 64)" in proc.stdout
    assert f"Results saved to {Path('runs/detect/exp')}" in proc.stdout
    assert "5 labels saved to" in proc.stdout

    for name, shape in (("a.jpg", (48, 64, 3)), ("b.png", (64, 40, 3))):
        saved = cv2.imread(str(run / name))
        assert saved is not None and saved.shape == shape
    assert not np.array_equal(cv2.imread(str(run / "b.png")), cv2.imread(str(src / "b.png")))  # boxes drawn
    video = cv2.VideoCapture(str(run / "clip.mp4"))
    assert video.isOpened() and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    video.release()
    assert not list(run.glob(".*"))  # no temp files left behind

    labels = sorted(p.name for p in (run / "labels").iterdir())
    assert labels == ["a.txt", "b.txt", "clip_1.txt", "clip_2.txt", "clip_3.txt"]
    rows = [line.split() for line in (run / "labels" / "a.txt").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r) == 6 and r[0] == "0" for r in rows)  # cls x y w h conf
    assert all(0 <= float(v) <= 1 for r in rows for v in r[1:])

    crops = sorted(p.name for p in (run / "crops" / "circle").iterdir())
    assert crops[:2] == ["a.jpg", "a2.jpg"] and len(crops) == 2 * 5
    with open(run / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10 and table[0]["Image Name"] == "a.jpg" and table[0]["Prediction"] == "circle"


def common_args(weights: Path, project: Path) -> tuple[str, ...]:
    return ("--weights", str(weights), "--img", "64", "--device", "cpu", "--project", str(project))


def test_nosave_writes_only_labels(setup, tmp_path):
    weights, src = setup
    args = common_args(weights, tmp_path / "p")
    proc = detect(tmp_path, *args, "--source", str(src / "a.jpg"), "--nosave", "--save-txt", "--max-det", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "p" / "exp"
    assert sorted(p.name for p in run.iterdir()) == ["labels"]
    (row,) = (run / "labels" / "a.txt").read_text().splitlines()
    assert len(row.split()) == 5  # no confidence without --save-conf


def test_classes_filter_and_run_dir_increment(setup, tmp_path):
    weights, src = setup
    (tmp_path / "p" / "exp").mkdir(parents=True)
    # every detection is a circle, so keeping only squares leaves nothing to label
    args = common_args(weights, tmp_path / "p")
    proc = detect(tmp_path, *args, "--source", str(src / "a.jpg"), "--classes", "1", "--save-txt")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "64x64 (no detections), " in proc.stdout and "0 labels saved to" in proc.stdout
    assert (tmp_path / "p" / "exp2" / "a.jpg").is_file()


def test_missing_source_is_one_line(setup, tmp_path):
    weights, _ = setup
    err = one_line_error(detect(tmp_path, "--weights", str(weights), "--source", str(tmp_path / "nope")))
    assert "nope does not exist" in err
    assert not (tmp_path / "runs").exists()  # nothing is created for a run that cannot start


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "no --source given"),
        (("--source", "0"), "not supported in this version"),
        (("--source", "x.jpg", "--augment"), "--augment (test-time augmentation) is not supported"),
        (("--source", "x.jpg", "--weights", "a.pt", "b.pt"), "ensembles are not supported"),
    ],
)
def test_refused_before_any_work(tmp_path, args, expected):
    err = one_line_error(detect(tmp_path, "--weights", "x.pt", *args))
    assert expected in err


@pytest.mark.parametrize(("flag", "value"), [("--conf-thres", "1.5"), ("--iou-thres", "-0.1")])
def test_a_threshold_outside_0_1_is_one_line_naming_the_flag(setup, tmp_path, flag, value):
    weights, src = setup
    err = one_line_error(detect(tmp_path, "--weights", str(weights), "--source", str(src / "a.jpg"), flag, value))
    assert err == f"yolodist detect: error: {flag} must be between 0 and 1, got {float(value)}\n"
