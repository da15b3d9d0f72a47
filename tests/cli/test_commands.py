"""The console command and what every script does with the simplest mistakes."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_script


def test_console_command_dispatches(tmp_path):
    proc = run_script(["-m", "yolodist.cli", "train", "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "--sync-bn" in proc.stdout
    proc = run_script(["-m", "yolodist.cli", "bogus"], cwd=tmp_path)
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def test_installed_entry_point(tmp_path):
    entry = Path(sys.executable).parent / "yolodist"
    if not entry.exists():
        pytest.skip("yolodist is not pip-installed in this environment")
    proc = subprocess.run([str(entry), "train", "--help"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "--batch-size" in proc.stdout


@pytest.mark.parametrize("command", ["train", "val", "detect", "export"])
def test_every_command_has_help(tmp_path, command):
    proc = run_script(["-m", "yolodist.cli", command, "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "--weights" in proc.stdout


@pytest.mark.parametrize("script", ["val.py", "detect.py", "export.py"])
def test_missing_weights_is_one_line(tmp_path, script):
    extra = []
    if script == "detect.py":
        import cv2
        import numpy as np

        cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
        extra = ["--source", str(tmp_path / "a.jpg")]
    proc = run_script([str(ROOT / script), "--weights", "x.pt", *extra], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "x.pt" in proc.stderr, proc.stderr
