"""train.py --evolve as a user runs it: generations, the files they leave, continuing an evolution."""

from __future__ import annotations

import csv
import signal
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli.test_train_cli import TINY
from tests.conftest import ROOT, run_script
from yolodist.evolve.space import NAMES

RESULTS = 7


def evolve(tmp_path: Path, data: Path, generations: int, *extra: str):
    return run_script(
        [
            str(ROOT / "train.py"),
            "--data",
            str(data),
            *TINY,
            "--epochs",
            "1",
            "--project",
            str(tmp_path / "runs"),
            "--name",
            "evo",
            "--evolve",
            str(generations),
            *extra,
        ],
        cwd=tmp_path,
    )


def rows(path: Path) -> list[list[str]]:
    return [row for row in csv.reader(open(path)) if row]


@pytest.mark.timeout(240)
def test_three_generations_then_a_fourth_continues(tmp_path, tiny_shapes):
    proc = evolve(tmp_path, tiny_shapes, 3)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "evo"
    table = rows(run / "evolve.csv")
    assert [c.strip() for c in table[0]] == [
        "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
        "val/box_loss", "val/obj_loss", "val/cls_loss", *NAMES,
    ]  # fmt: skip
    assert len(table) == 4
    genes = [[float(c) for c in row[RESULTS:]] for row in table[1:]]
    assert genes[0] != genes[1] and genes[1] != genes[2] and genes[0] != genes[2]
    assert all(float(c) > 0 for c in table[1][4:RESULTS])  # the final epoch was validated (its losses)
    # Each generation trained what its row says.
    for generation, row in enumerate(genes):
        trained = yaml.safe_load((run / f"gen{generation:03d}" / "hyp.yaml").read_text())
        assert [trained[name] for name in NAMES] == row
        opt = yaml.safe_load((run / f"gen{generation:03d}" / "opt.yaml").read_text())
        assert opt["noval"] and opt["nosave"] and opt["evolve"] == 3
    best = yaml.safe_load((run / "hyp_evolve.yaml").read_text())
    scores = [0.1 * float(row[2]) + 0.9 * float(row[3]) for row in table[1:]]
    assert [best[name] for name in NAMES] == genes[scores.index(max(scores))]
    assert (run / "evolve.png").stat().st_size > 0
    assert proc.stdout.count("evolve: 3/3 generations done") == 1
    assert len(list(run.glob("gen*/weights"))) == 1  # only the best generation keeps its checkpoints

    again = evolve(tmp_path, tiny_shapes, 4, "--exist-ok")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "generations 3..3 of 4" in again.stdout and again.stdout.count("Starting training") == 1
    table4 = rows(run / "evolve.csv")
    assert len(table4) == 5 and table4[:4] == table
    assert [float(c) for c in table4[4][RESULTS:]] not in genes
    assert not (tmp_path / "runs" / "evo2").exists()


def test_evolve_with_a_checkpoint_to_resume_is_one_line(capsys):
    from yolodist.cli.train import main

    assert main(["--evolve", "2", "--resume", "x/last.pt"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--evolve cannot resume a training" in lines[0] and "--exist-ok" in lines[0]


@pytest.mark.timeout(240)
def test_ctrl_c_in_a_generation_keeps_the_finished_ones_and_the_same_command_continues(tmp_path, tiny_shapes):
    from tests.distributed.test_faults import WRAPPER, Job, finish, launched

    common = [
        *("--data", str(tiny_shapes), *TINY, "--epochs", "1", "--project", str(tmp_path / "runs")),
        *("--name", "evo", "--exist-ok", "--evolve", "2"),
    ]
    slow = [sys.executable, WRAPPER, "--fault", "slow", "--seconds", "0.2", "--"]
    with launched() as marker:
        cut = Job([*slow, *common], tmp_path / "logs", "cut", marker, cwd=tmp_path)
        cut.wait_for_text("rank 0 finished step 5", timeout=180)  # steps 4..7 are generation 1's
        cut.proc.send_signal(signal.SIGINT)
        finish([cut], timeout=60)
    run = tmp_path / "runs" / "evo"
    assert cut.proc.returncode == 130, cut.output[-3000:]
    assert (
        f"Interrupted in generation 1; {run / 'evolve.csv'} holds the 1 finished one(s). "
        "Continue the evolution with the same command" in cut.output
    ), cut.output[-3000:]
    first = rows(run / "evolve.csv")
    assert len(first) == 2 and not list(run.glob(".*.tmp"))

    again = run_script([str(ROOT / "train.py"), *common], cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    table = rows(run / "evolve.csv")
    assert len(table) == 3 and table[:2] == first
    assert len(rows(run / "gen001" / "results.csv")) == 2  # generation 1 trained afresh: one epoch, one row
