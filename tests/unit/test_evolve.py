"""Hyperparameter evolution's pure parts: genes, parent choice, mutation, evolve.csv, hyp_evolve.yaml."""

from __future__ import annotations

import numpy as np
import pytest

from yolodist.config.io import load_hyp
from yolodist.config.presets import resolve_evolve
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.errors import BadConfig, BadFlag
from yolodist.evolve import record, space
from yolodist.evolve.space import GENES, NAMES, RESULTS

SCALE0 = [name for name, gene in GENES.items() if gene.scale == 0]


def history_of(*rows: tuple[list[float], dict[str, float]]) -> np.ndarray:
    return np.array([[*results, *(genes[n] for n in NAMES)] for results, genes in rows], dtype=float)


def start_genes() -> dict[str, float]:
    # Every gene away from 0 and from its bounds, so each one can move both ways.
    return space.constrain({n: (g.low + g.high) / 2 if g.high > g.low else g.low for n, g in GENES.items()})


def test_upstream_table_without_anchors():
    assert "anchors" not in GENES and len(GENES) == 28
    assert GENES["lr0"] == space.Gene(1, 1e-5, 1e-1) and GENES["momentum"] == space.Gene(0.3, 0.6, 0.98)
    assert set(SCALE0) == {"iou_t", "fl_gamma", "perspective", "fliplr"}
    assert set(NAMES) <= set(Hyp().to_dict())  # every gene is a hyperparameter training reads


def test_constrain_clips_and_rounds():
    values = {**Hyp().to_dict(), "lr0": 5.0, "momentum": 0.1, "hsv_h": 0.0123456789, "degrees": -3.0}
    out = space.constrain(values)
    assert list(out) == list(NAMES)
    assert out["lr0"] == 0.1 and out["momentum"] == 0.6 and out["degrees"] == 0.0
    assert out["hsv_h"] == 0.01235


def test_factors_spare_scale_zero_and_stay_in_range():
    scales = np.array([GENES[n].scale for n in NAMES])
    for generation in range(300):
        factors = space.mutation_factors(scales, space.generation_rng(0, generation))
        assert np.all(factors[scales == 0] == 1)
        assert np.all((factors >= 0.3) & (factors <= 3.0))
        assert np.any(factors != 1)
    assert np.all(space.mutation_factors(np.zeros(4), space.generation_rng(0, 1)) == 1)  # nothing to mutate


def test_breeding_respects_bounds_and_scales_and_always_changes_something():
    parent = start_genes()
    history = history_of(([0.5, 0.5, 0.5, 0.3, 0.1, 0.1, 0.1], parent))
    for generation in range(1, 200):
        child = space.breed(history, space.generation_rng(7, generation))
        assert child != parent
        for name, value in child.items():
            gene = GENES[name]
            assert gene.low <= value <= gene.high, (name, value)
            assert value == round(value, 5)
        assert all(child[name] == parent[name] for name in SCALE0)


def test_breeding_is_reproducible_from_seed_and_generation():
    history = history_of(([0, 0, 0.2, 0.1, 0, 0, 0], start_genes()), ([0, 0, 0.3, 0.2, 0, 0, 0], start_genes()))
    draw = lambda seed, gen: space.breed(history, space.generation_rng(seed, gen))  # noqa: E731
    assert draw(0, 2) == draw(0, 2)
    assert draw(0, 2) != draw(0, 3) and draw(0, 2) != draw(1, 2)
    assert draw(-1, 2) == draw(-1, 2)  # negative seeds are fine


def test_parent_is_one_of_the_fittest_five_weighted_by_fitness():
    genes = start_genes()
    # Fitness 0.1 mAP50 + 0.9 mAP50-95: generations 0..6 score 0.0, 0.1, ..., 0.6.
    history = history_of(
        *[([0, 0, f, f, 0, 0, 0], {**genes, "lr0": 0.001 * (i + 1)}) for i, f in enumerate(np.arange(7) / 10)]
    )
    rng = space.generation_rng(0, 0)
    picks = [round(space.select_parent(history, rng)[RESULTS] * 1000) - 1 for _ in range(20000)]
    counts = np.bincount(picks, minlength=7) / len(picks)
    assert counts[0] == counts[1] == 0  # outside the top five
    # Weights are fitness above the weakest candidate (0.2) plus 1e-6: 0.4, 0.3, 0.2, 0.1, ~0 (sum 1.0).
    assert counts[6] == pytest.approx(0.4, abs=0.02) and counts[5] == pytest.approx(0.3, abs=0.02)
    assert counts[4] == pytest.approx(0.2, abs=0.02) and counts[3] == pytest.approx(0.1, abs=0.02)
    assert counts[2] < 0.001


def test_equal_fitness_picks_evenly_among_the_first_five():
    history = history_of(*[([0] * 7, {**start_genes(), "lr0": 0.001 * (i + 1)}) for i in range(8)])
    rng = space.generation_rng(0, 0)
    picks = [round(space.select_parent(history, rng)[RESULTS] * 1000) - 1 for _ in range(5000)]
    assert set(picks) == {0, 1, 2, 3, 4}


def test_csv_round_trip_keeps_every_trained_value(tmp_path):
    path = tmp_path / "evolve.csv"
    assert record.read_history(path).shape == (0, RESULTS + len(NAMES))
    rows = []
    for generation in range(3):
        genes = space.breed(history_of(([0] * 7, start_genes())), space.generation_rng(3, generation))
        results = [0.123456789, 0.2, 0.3 + generation / 10, 0.25, 0.0812345, 0.0098765, 0.034]
        history = record.append_generation(path, results, genes)
        rows.append(genes)
    assert history.shape == (3, RESULTS + len(NAMES))
    for row, genes in zip(history, rows, strict=True):
        assert dict(zip(NAMES, row[RESULTS:], strict=True)) == genes  # exact: the next parent is what was trained
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and [c.strip() for c in lines[0].split(",")] == list(record.COLUMNS)
    assert all(len(cell) == 20 for line in lines for cell in line.split(","))  # right-aligned, fixed width
    assert history[0, 0] == pytest.approx(0.123456789, rel=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_keeps_the_previous_rows(tmp_path, monkeypatch):
    path = tmp_path / "evolve.csv"
    record.append_generation(path, [0.0] * 7, start_genes())
    before = path.read_text()

    def full_disk(f) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("yolodist.utils.io.os.fsync", lambda fd: full_disk(None))
    with pytest.raises(OSError):
        record.append_generation(path, [0.1] * 7, start_genes())
    assert path.read_text() == before and len(record.read_history(path)) == 1


def test_a_foreign_csv_is_one_clear_error(tmp_path):
    path = tmp_path / "evolve.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(BadConfig, match="columns"):
        record.read_history(path)
    path.write_text(record.header() + record.format_row([0.0] * 7 + [1.0] * (len(NAMES) - 1)))
    with pytest.raises(BadConfig, match="row"):
        record.read_history(path)


def test_best_generation_by_fitness_and_its_yaml(tmp_path):
    genes = [{**start_genes(), "lr0": lr} for lr in (0.01, 0.02, 0.03)]
    # mAP50 alone favours generation 0, fitness (0.9 weight on mAP50-95) generation 1.
    history = history_of(
        ([0.9, 0.9, 0.9, 0.1, 0, 0, 0], genes[0]), ([0, 0, 0.2, 0.2, 0, 0, 0], genes[1]), ([0] * 7, genes[2])
    )
    assert record.best_generation(history) == 1
    base = {**Hyp().to_dict(), "anchors": 3.0}
    record.write_best_hyp(tmp_path / "hyp_evolve.yaml", history, base)
    text = (tmp_path / "hyp_evolve.yaml").read_text()
    assert "Generations: 3; best: generation 1" in text
    hyp = load_hyp(tmp_path / "hyp_evolve.yaml")  # usable as --hyp as it is
    assert hyp.lr0 == 0.02 and hyp.anchors == 3.0
    assert "best: generation 1, fitness 0.2" in record.summary(history, 5)


def test_flags_under_evolve():
    values = {"evolve": 3, "project": "runs/train", "resume": True, "exist_ok": False}
    assert resolve_evolve(values) == {"evolve": 3, "project": "runs/evolve", "resume": False, "exist_ok": True}
    assert resolve_evolve({**values, "project": "mine"})["project"] == "mine"
    assert resolve_evolve({**values, "evolve": None}) == {**values, "evolve": None}  # a plain training: unchanged
    with pytest.raises(BadFlag, match="--exist-ok"):
        TrainConfig(evolve=3, resume="runs/train/exp/weights/last.pt")
    with pytest.raises(BadFlag, match="at least 1"):
        TrainConfig(evolve=0)


def test_a_parent_stuck_at_zeros_and_bounds_still_gets_a_different_child():
    # Genes at 0 cannot move (mutation multiplies) and genes at their upper bound only move down:
    # a child equal to its parent would just repeat a generation, so the draw repeats instead.
    stuck = {name: gene.high if gene.low > 0 else 0.0 for name, gene in GENES.items()}
    history = history_of(([0] * 7, space.constrain(stuck)))
    children = [space.breed(history, space.generation_rng(0, generation)) for generation in range(300)]
    assert all(child != space.constrain(stuck) for child in children)
