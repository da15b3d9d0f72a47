"""``python export.py`` as a user runs it: both formats written next to the weights, errors in one line."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, run_script
from tests.unit.conftest import make_checkpoint


def test_export_writes_torchscript_and_onnx(tmp_path):
    make_checkpoint(tmp_path / "best.pt")
    args = ["--weights", "best.pt", "--include", "torchscript", "onnx", "--img", "64", "--batch", "1"]
    proc = run_script([str(ROOT / "export.py"), *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "best.torchscript").stat().st_size > 0 and (tmp_path / "best.onnx").stat().st_size > 0
    out = proc.stdout
    for line in (
        "PyTorch: starting from best.pt with output shape (1, 252, 8) (",
        "TorchScript: starting export with torch ",
        "TorchScript: export success ✅ ",
        ", saved as best.torchscript (",
        "ONNX: starting export with onnx 1.",
        "ONNX: export success ✅ ",
        ", saved as best.onnx (",
        "Export complete (",
        f"Results saved to {tmp_path.resolve()}",
        "Detect:          python detect.py --weights best.onnx",
        "Validate:        python val.py --weights best.onnx",
    ):
        assert line in out, f"{line!r} missing from:\n{out}"
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--include", "tflite"], "--include tflite is not supported"),
        (["--half", "--device", "cpu"], "--half only compatible with GPU export"),
        (["--int8"], "--int8 quantisation is not supported"),
        (["--weights", "missing.pt", "--device", "cpu"], "weights file 'missing.pt' not found"),
    ],
)
def test_export_user_errors_are_one_line(tmp_path, args, message):
    proc = run_script([str(ROOT / "export.py"), *args], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("yolodist export: error: ") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
