"""A 2-rank training as a batch job runs it (torchrun, output into files): its log and its TensorBoard events.

One training serves both tests: rank 0 alone writes one event file into the run directory, whose
scalars are results.csv's, and the log holds every line once (rank 1 adds nothing) with no
carriage return.
"""

from __future__ import annotations

import collections
import csv
import re
import socket
from pathlib import Path

import pytest

from tests.conftest import tensorboard_scalars
from tests.distributed.conftest import ROOT, free_port
from tests.distributed.launch_helpers import Finished, run_one, tiny_train_args, torchrun_command
from yolodist.engine.report import RESULTS_COLUMNS

EPOCHS = 3  # not 2: a line printed by both ranks must not pass for one printed each epoch
TAGS = RESULTS_COLUMNS[1:]  # every column but the epoch, which is the step
TABLE_LINE = re.compile(r"^\s+(Class\s+Images\s+Instances\s+P\s+R\s+mAP50\s+mAP50-95|all(\s+\S+){6})$")
PROGRESS_LINE = re.compile(rf"^epoch (\d+)/{EPOCHS - 1}  \d+/\d+ batches  box .* img/s  ETA \d+:\d\d:\d\d$")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_shapes) -> tuple[Path, Path, Finished]:
    """(the folder it ran in, its run directory, its output) for a 2-rank training."""
    pytest.importorskip("tensorboard")
    where = tmp_path_factory.mktemp("two_ranks")
    args = tiny_train_args(tiny_shapes, where / "runs", "exp", "--epochs", str(EPOCHS))
    command = torchrun_command(
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(ROOT / "train.py"), *args,
    )  # fmt: skip
    finished = run_one(command, where / "logs", timeout=240, cwd=where)
    assert finished.returncode == 0, finished.output[-3000:]
    return where, where / "runs" / "exp", finished


def results_csv(path: Path) -> list[dict[str, float]]:
    rows = list(csv.reader(path.open()))
    header = [c.strip() for c in rows[0]]
    return [dict(zip(header, map(float, row), strict=True)) for row in rows[1:]]


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_rank_0_alone_writes_the_epoch_scalars_of_results_csv(two_rank_run):
    where, run, finished = two_rank_run
    events = sorted(where.rglob("*tfevents*"))
    # One file for the whole launch, in the run directory, named (as upstream's) with host and pid.
    assert [p.parent for p in events] == [run], events
    assert f".{socket.gethostname()}." in events[0].name
    assert finished.output.count("TensorBoard: Start with 'tensorboard --logdir") == 1
    scalars = tensorboard_scalars(run)
    rows = results_csv(run / "results.csv")
    assert sorted(scalars) == sorted(TAGS) and len(rows) == EPOCHS
    for tag in TAGS:
        assert [step for step, _ in scalars[tag]] == list(range(EPOCHS)), tag
        for (step, value), row in zip(scalars[tag], rows, strict=True):
            assert row["epoch"] == step
            # results.csv prints 5 significant digits; TensorBoard holds float32
            assert value == pytest.approx(row[tag], rel=1e-4, abs=1e-12), (tag, step)


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_the_log_holds_each_line_once_and_no_carriage_return(two_rank_run):
    _, _, finished = two_rank_run
    text = finished.output
    assert "\r" not in text and "Traceback" not in text and "[rank 1]" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    counts = collections.Counter(lines)
    # The validation table (its header, and an 'all' row that may repeat its values) is printed once per
    # epoch, and once more for best.pt at the end.
    table = {line: n for line, n in counts.items() if TABLE_LINE.match(line)}
    assert sum(n for line, n in table.items() if "Class" in line) == EPOCHS + 1
    assert sum(n for line, n in table.items() if "Class" not in line) == EPOCHS + 1
    assert {line: n for line, n in counts.items() if n > 1 and line not in table} == {}
    # Lines with times in them differ between ranks: digits aside, a line comes once or once per epoch
    # (the table's: once per validation). A line printed by both ranks would come 2 or 2 x EPOCHS times.
    shapes = collections.Counter(re.sub(r"\d+", "#", line) for line in lines)
    assert {shape: n for shape, n in shapes.items() if n not in (1, EPOCHS, EPOCHS + 1)} == {}
    assert [m.group(1) for m in map(PROGRESS_LINE.match, lines) if m] == [str(e) for e in range(EPOCHS)]
