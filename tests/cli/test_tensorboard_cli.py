"""TensorBoard on a disk that is full: one warning, and the training finishes with every epoch in results.csv.

The run directory is a tmpfs with room for exactly what training writes there without TensorBoard
(hyp.yaml, opt.yaml and results.csv, a page each; the event file is opened after results.csv's
first row); the weights folder inside it is a roomy tmpfs of its own. Mounting needs root (CI runs
as root); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import csv

import pytest

from tests.conftest import ROOT, run_script, tmpfs

PAGE = 4096


@pytest.mark.timeout(240)
def test_a_full_disk_turns_tensorboard_off_with_one_warning(tmp_path, tiny_shapes):
    pytest.importorskip("tensorboard")
    run = tmp_path / "runs" / "exp"
    with tmpfs(run, 3 * PAGE), tmpfs(run / "weights", "256m"):
        args = [str(ROOT / "train.py"), "--data", str(tiny_shapes), "--cfg", "yolov5n.yaml", "--weights", ""]
        args += ["--img", "64", "--batch", "4", "--epochs", "2", "--workers", "0", "--device", "cpu", "--noplots"]
        args += ["--project", str(tmp_path / "runs"), "--name", "exp", "--exist-ok"]
        proc = run_script(args, cwd=tmp_path)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-3000:]
        assert "Traceback" not in output
        warnings = [line for line in output.splitlines() if "TensorBoard: could not write" in line]
        assert len(warnings) == 1, output[-3000:]
        (events,) = run.glob("events.out.tfevents.*")
        assert f"could not write {events} (No space left on device)" in warnings[0]
        assert "results.csv has every epoch" in warnings[0]
        rows = list(csv.reader((run / "results.csv").open()))
        assert [int(row[0]) for row in rows[1:]] == [0, 1]
        assert (run / "weights" / "last.pt").is_file()
