"""The console command and the scripts whose features have not landed yet."""

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


@pytest.mark.parametrize("script", ["val.py", "detect.py", "export.py"])
def test_unfinished_scripts_say_so_in_one_line(tmp_path, script):
    proc = run_script([str(ROOT / script), "--weights", "x.pt"], cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "not available" in proc.stderr
    assert proc.stdout == ""
