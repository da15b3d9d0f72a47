"""TensorBoard event files: what TensorBoard reads back, a writer that fails, tensorboard not installed."""

from __future__ import annotations

import logging
import sys

import pytest

pytest.importorskip("tensorboard")

from tests.conftest import tensorboard_scalars
from yolodist.engine import tensorboard_log
from yolodist.engine.tensorboard_log import TensorBoardLog, open_tensorboard


def test_tensorboard_reads_back_each_epoch(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="yolodist")
    log = open_tensorboard(tmp_path)
    assert log is not None
    assert [r.getMessage() for r in caplog.records] == [
        f"TensorBoard: Start with 'tensorboard --logdir {tmp_path.parent}', view at http://localhost:6006/"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing on disk before the first epoch
    log.epoch({"train/box_loss": 0.25, "x/lr0": 0.01}, 0)
    log.epoch({"train/box_loss": 0.125, "x/lr0": 0.005}, 1)
    log.close()
    scalars = tensorboard_scalars(tmp_path)
    assert sorted(scalars) == ["train/box_loss", "x/lr0"]
    assert [step for step, _ in scalars["x/lr0"]] == [0, 1]
    # float32 values, as SummaryWriter.add_scalar writes them
    assert [value for _, value in scalars["x/lr0"]] == pytest.approx([0.01, 0.005], rel=1e-7)
    assert scalars["train/box_loss"] == [(0, 0.25), (1, 0.125)]
    assert [p.name for p in tmp_path.iterdir()] == [log.path.name] and "tfevents" in log.path.name


def test_a_failing_writer_warns_once_and_stops(tmp_path, caplog):
    class BrokenRecords:
        writes = 0

        def __init__(self, file) -> None:
            pass

        def write(self, data: bytes) -> None:
            BrokenRecords.writes += 1
            raise OSError(28, "No space left on device")

    log = TensorBoardLog(tmp_path)
    log._record_writer = BrokenRecords
    for epoch in range(3):
        log.epoch({"train/box_loss": 0.25}, epoch)  # never raises
    log.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and str(log.path) in warnings[0]
    assert log.failed and BrokenRecords.writes == 1


def test_an_unwritable_directory_is_one_warning(tmp_path, caplog):
    log = TensorBoardLog(tmp_path / "gone")  # the folder was removed under the run
    log.epoch({"metrics/mAP_0.5": 0.5}, 0)
    log.epoch({"metrics/mAP_0.5": 0.6}, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No such file or directory" in warnings[0]


def test_not_installed_is_one_info_line(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="yolodist")
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert open_tensorboard(tmp_path) is None
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"{tensorboard_log.PREFIX}not installed; 'pip install tensorboard' to follow training there"]
    assert list(tmp_path.iterdir()) == []
