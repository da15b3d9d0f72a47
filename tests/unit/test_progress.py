"""Progress on a terminal (bars) and in batch-job logs (plain lines): the choice, the cadence, the line."""

from __future__ import annotations

import io
import re

import pytest

from yolodist.engine.progress import EpochLines, StepProgress, format_eta
from yolodist.utils.console import progress_mode

LINE = re.compile(
    r"^epoch (\d+)/(\d+)  (\d+)/(\d+) batches  box \d+\.\d{4} obj \d+\.\d{4} cls \d+\.\d{4}  mem \S+  "
    r"\d+\.\d img/s  ETA (\d+:\d\d:\d\d)$"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_unless_forced():
    assert progress_mode(Terminal(), environ={}) == "bar"
    assert progress_mode(io.StringIO(), environ={}) == "lines"
    assert progress_mode(io.StringIO(), environ={"YOLODIST_PROGRESS": "bar"}) == "bar"
    assert progress_mode(Terminal(), environ={"YOLODIST_PROGRESS": " Lines "}) == "lines"


def test_an_unknown_forced_mode_warns_and_chooses_by_the_terminal(caplog):
    assert progress_mode(Terminal(), environ={"YOLODIST_PROGRESS": "fancy"}) == "bar"
    assert progress_mode(io.StringIO(), environ={"YOLODIST_PROGRESS": "fancy"}) == "lines"
    warnings = [r.getMessage() for r in caplog.records if "YOLODIST_PROGRESS" in r.getMessage()]
    assert len(warnings) == 1 and "'fancy'" in warnings[0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_epoch(lines: EpochLines, clock: FakeClock, epoch: int, steps: int, seconds_per_batch: float, sync: int = 10):
    """Drive one epoch as the trainer does: a sync every ``sync`` batches and at the last one."""
    lines.epoch_start(epoch, steps, 0)
    logged = 0
    for done in range(1, steps + 1):
        clock.now += seconds_per_batch
        if done % sync == 0 or done == steps:
            lines.step(StepProgress(done, done - logged, [0.05, 0.03, 0.01], 7, 64, "1.2G"))
            logged = done
    lines.epoch_end()


def batches_logged(printed: list[str]) -> list[int]:
    return [int(LINE.match(line).group(3)) for line in printed]


@pytest.mark.parametrize(
    ("seconds_per_batch", "expected"),
    [
        (5.0, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]),  # a tenth takes 50 s: a line per tenth
        (1.0, [30, 60, 90, 100]),  # a tenth takes 10 s: not more than a line per 30 s, and the last batch
        (0.01, [100]),  # a one-second epoch: its last batch only
    ],
)
def test_a_line_per_tenth_of_an_epoch_at_most_every_30_s(seconds_per_batch, expected):
    printed: list[str] = []
    clock = FakeClock()
    run_epoch(EpochLines(3, 16, clock=clock, log=printed.append), clock, 0, 100, seconds_per_batch)
    assert all(LINE.match(line) for line in printed), printed
    assert batches_logged(printed) == expected


def test_a_long_tenth_still_gives_a_line_every_5_minutes():
    printed: list[str] = []
    clock = FakeClock()
    # 10 000 batches of 4 s: a tenth is 66 minutes; syncs every 10 batches (40 s).
    run_epoch(EpochLines(1, 16, clock=clock, log=printed.append), clock, 0, 10_000, 4.0)
    logged = batches_logged(printed)
    assert logged[:3] == [80, 160, 240] and logged[-1] == 10_000


def test_the_line_shows_throughput_of_all_ranks_and_the_eta_of_the_whole_run():
    printed: list[str] = []
    clock = FakeClock()
    lines = EpochLines(5, 32, clock=clock, log=printed.append)  # 32 images per batch over all ranks
    run_epoch(lines, clock, 0, 100, 0.5)  # 50 s of training
    clock.now += 20.0  # validation and saving
    run_epoch(lines, clock, 1, 100, 0.5)
    first_of_epoch_1 = next(line for line in printed if line.startswith("epoch 1/4  "))
    # 60 of 100 batches done in 30 s (1920 images): 20 s left in this epoch, then its validation (20 s)
    # and three more epochs of 50 + 20 s: 250 s.
    assert first_of_epoch_1 == (
        "epoch 1/4  60/100 batches  box 0.0500 obj 0.0300 cls 0.0100  mem 1.2G  64.0 img/s  ETA 0:04:10"
    )
    assert printed[-1].startswith("epoch 1/4  100/100 batches") and printed[-1].endswith("ETA 0:03:50")


def test_a_resumed_epoch_counts_from_where_it_restarted():
    printed: list[str] = []
    clock = FakeClock()
    lines = EpochLines(1, 8, clock=clock, log=printed.append)
    lines.epoch_start(0, 100, 60)
    clock.now += 40 * 2.0
    lines.step(StepProgress(100, 40, [0.1, 0.1, 0.1], 3, 64, "1G"))
    assert printed == ["epoch 0/0  100/100 batches  box 0.1000 obj 0.1000 cls 0.1000  mem 1G  4.0 img/s  ETA 0:00:00"]


def test_eta_format():
    assert format_eta(3733.4) == "1:02:13"
    assert format_eta(-3) == "0:00:00"
    assert format_eta(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2 days, 3:04:05"
