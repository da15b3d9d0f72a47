"""End-to-end: val.py run as a user runs it, on tiny generated data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_script


def val(tmp_path: Path, data: Path, weights: Path, *extra: str, name: str = "exp"):
    args = [str(ROOT / "val.py"), "--data", str(data), "--weights", str(weights), "--img", "64", "--batch", "4"]
    args += ["--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", name, *extra]
    return run_script(args, cwd=tmp_path)


def test_val_reports_metrics_speed_and_writes_outputs(tmp_path, tiny_shapes, tiny_checkpoint):
    proc = val(tmp_path, tiny_shapes, tiny_checkpoint, "--save-txt", "--save-conf", "--save-json", "--verbose")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"^\s+all\s+8\s+\d+", out, re.M), out[-2000:]
    assert re.search(
        r"Speed: [\d.]+ms pre-process, [\d.]+ms inference, [\d.]+ms NMS per image at shape \(4, 3, 64, 64\)", out
    )
    run = tmp_path / "runs" / "exp"
    labels = sorted((run / "labels").glob("*.txt"))
    assert len(labels) == 8
    rows = [line.split() for f in labels for line in f.read_text().splitlines()]
    assert rows and all(len(r) == 6 for r in rows)  # cls cx cy w h conf
    assert all(0 <= float(v) <= 1 for r in rows for v in r[1:5])
    predictions = json.loads((run / "tiny_predictions.json").read_text())
    assert len(predictions) == len(rows)
    assert {"image_id", "category_id", "bbox", "score"} <= set(predictions[0])
    assert "COCO evaluator: mAP@0.5:0.95" in out
    for plot in ("confusion_matrix.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        assert (run / plot).stat().st_size > 0, plot


def test_speed_task_saves_nothing(tmp_path, tiny_shapes, tiny_checkpoint):
    proc = val(tmp_path, tiny_shapes, tiny_checkpoint, "--task", "speed", "--save-json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Speed:" in proc.stdout + proc.stderr
    assert not list((tmp_path / "runs" / "exp").glob("*.json"))
    assert not list((tmp_path / "runs" / "exp").glob("*.png"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "study"], "--task 'study' is not one of"),
        (["--augment"], "test-time augmentation"),
        (["--conf-thres", "2"], "between 0 and 1"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, tiny_shapes, tiny_checkpoint, extra, message):
    proc = val(tmp_path, tiny_shapes, tiny_checkpoint, *extra)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_weights_and_class_mismatch(tmp_path, tiny_shapes, tiny_checkpoint):
    proc = val(tmp_path, tiny_shapes, tmp_path / "nope.pt")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nope.pt" in proc.stderr
    spec = yaml.safe_load(tiny_shapes.read_text())
    other = tmp_path / "two.yaml"
    other.write_text(
        yaml.safe_dump({"path": spec["path"], "train": spec["train"], "val": spec["val"], "names": ["a", "b"]})
    )
    proc = val(tmp_path, other, tiny_checkpoint)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "classes" in proc.stderr


def test_exported_models_validate_like_the_checkpoint_and_detect(tmp_path, tiny_shapes, tiny_checkpoint):
    """The .onnx and .torchscript files of a checkpoint give val.py the same table, and detect.py runs them.

    Exported with --dynamic, so validation uses the same rectangular batches as the checkpoint does.
    """
    weights = tmp_path / "tiny.pt"
    weights.write_bytes(tiny_checkpoint.read_bytes())
    export = run_script(
        [str(ROOT / "export.py"), "--weights", str(weights), "--include", "torchscript", "onnx", "--img", "64",
         "--batch", "4", "--device", "cpu", "--dynamic"],
        cwd=tmp_path,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    rows = {}
    for suffix in (".pt", ".onnx", ".torchscript"):
        proc = val(tmp_path, tiny_shapes, weights.with_suffix(suffix), "--noplots", name=suffix[1:])
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[suffix] = re.search(r"^\s+all\s.*$", proc.stdout + proc.stderr, re.M).group(0)
    assert rows[".onnx"] == rows[".pt"] == rows[".torchscript"]
    image = sorted((Path(yaml.safe_load(tiny_shapes.read_text())["path"]) / "images" / "val").iterdir())[0]
    for suffix in (".onnx", ".torchscript"):  # the boxes themselves: backend parity tests in tests/unit/test_export.py
        proc = run_script(
            [str(ROOT / "detect.py"), "--weights", str(weights.with_suffix(suffix)), "--source", str(image),
             "--img", "64", "--conf-thres", "0.001", "--save-txt", "--device", "cpu",
             "--project", str(tmp_path / "det"), "--name", suffix[1:]],
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / "det" / suffix[1:] / "labels" / f"{image.stem}.txt").read_text().strip()
        assert (tmp_path / "det" / suffix[1:] / image.name).stat().st_size > 0
