"""train.py fetching --weights: from an http URL (local server), and a release name while offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, run_script, write_checkpoint
from tests.unit.test_download import serve
from yolodist.data.synthetic import SHAPES_NAMES

ARGS = ["--epochs", "1", "--img", "64", "--batch", "4", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    """A yolov5n checkpoint for the 'shapes' classes, written by our checkpoint API."""
    site = tmp_path / "site"
    site.mkdir()
    return write_checkpoint(site / "tiny.pt", SHAPES_NAMES)


def test_weights_from_an_http_url(tmp_path, tiny_shapes, tiny_weights):
    work = tmp_path / "work"
    work.mkdir()
    with serve(tiny_weights.parent) as url:
        proc = run_script(
            [str(ROOT / "train.py"), "--weights", f"{url}/tiny.pt", "--data", str(tiny_shapes), *ARGS,
             "--project", str(tmp_path / "runs")],
            cwd=work,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert (work / "tiny.pt").read_bytes() == tiny_weights.read_bytes()  # kept under its own name in the cwd
    done = re.search(r"Transferred (\d+)/(\d+) items", out)
    assert done and done[1] == done[2] and int(done[1]) > 0, out[-3000:]


def test_a_release_name_offline_is_one_clear_line(tmp_path, tiny_shapes):
    base = f"http://127.0.0.1:{free_port()}/v7.0"  # nothing listens there: the offline case
    proc = run_script(
        [str(ROOT / "train.py"), "--weights", "yolov5s.pt", "--data", str(tiny_shapes), *ARGS,
         "--project", str(tmp_path / "runs")],
        cwd=tmp_path,
        env={"YOLODIST_RELEASE_URL": base},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"could not download {base}/yolov5s.pt (" in errors[0]
    assert f"put it at {tmp_path / 'yolov5s.pt'}" in errors[0]
    assert not list(tmp_path.glob("*yolov5s.pt*"))  # no partial or temp file left behind


def test_val_detect_export_fetch_release_weights(tmp_path, tiny_shapes, tiny_weights):
    """A missing release name is fetched (from a local mirror) by val.py, detect.py and export.py too."""
    site = tiny_weights.parent
    (site / "yolov5n.pt").write_bytes(tiny_weights.read_bytes())
    image = next((Path(tiny_shapes).parent / "images" / "val").iterdir())
    commands = {
        "val.py": ["--data", str(tiny_shapes), "--img", "64", "--batch", "4", "--workers", "0", "--noplots"],
        "detect.py": ["--source", str(image), "--img", "64", "--nosave"],
        "export.py": ["--include", "onnx", "--img", "64"],
    }
    with serve(site) as url:
        for script, extra in commands.items():
            work = tmp_path / script
            work.mkdir()
            proc = run_script(
                [str(ROOT / script), "--weights", "yolov5n.pt", "--device", "cpu", *extra,
                 "--project", str(tmp_path / "runs")] if script != "export.py"
                else [str(ROOT / script), "--weights", "yolov5n.pt", "--device", "cpu", *extra],
                cwd=work,
                env={"YOLODIST_RELEASE_URL": url},
            )  # fmt: skip
            assert proc.returncode == 0, script + proc.stderr[-3000:]
            assert (work / "yolov5n.pt").read_bytes() == tiny_weights.read_bytes(), script
    assert (tmp_path / "export.py" / "yolov5n.onnx").stat().st_size > 0
