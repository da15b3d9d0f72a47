"""train.py --evolve under torchrun: every generation a 2-rank training with rank 0's values."""

from __future__ import annotations

import csv

import pytest
import yaml

from tests.conftest import ROOT
from tests.distributed.launch_helpers import tiny_train_args
from tests.distributed.test_ddp import torchrun
from yolodist.evolve.space import NAMES

pytestmark = pytest.mark.dist


@pytest.mark.timeout(300)
def test_two_ranks_evolve_two_generations(tmp_path, tiny_shapes):
    args = tiny_train_args(tiny_shapes, tmp_path / "runs", "evo", "--evolve", "2")
    proc = torchrun([str(ROOT / "train.py"), *args], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "evo"
    table = [row for row in csv.reader(open(run / "evolve.csv")) if row]
    assert len(table) == 3  # the header and one row per generation, written by rank 0 only
    assert out.count("evolve: 1/2 generations done") == 1 and out.count("evolve: 2/2 generations done") == 1
    # After each generation every rank reported the values it trained; rank 0 compared them.
    for generation in (0, 1):
        assert out.count(f"generation {generation}: all 2 ranks trained the same hyperparameters") == 1
    genes = [[float(c) for c in row[7:]] for row in table[1:]]
    assert genes[0] != genes[1]
    for generation, row in enumerate(genes):
        trained = yaml.safe_load((run / f"gen{generation:03d}" / "hyp.yaml").read_text())
        assert [trained[name] for name in NAMES] == row
    assert (run / "hyp_evolve.yaml").is_file() and (run / "evolve.png").is_file()
