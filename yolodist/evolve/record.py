"""evolve.csv, hyp_evolve.yaml and the one-line summary: what an evolution has found so far.

evolve.csv is upstream's layout (its header, then one row per finished generation: the 7 results,
then every evolved hyperparameter), right-aligned in 20 characters like results.csv. Values carry 7
significant digits where results.csv has 5: every gene is rounded to 5 decimals and below 100, so
the row holds exactly the value that was trained, and the next generation breeds from that.

The file is only ever replaced whole (temp file, fsync, rename): a generation killed at any point
leaves the previous complete file, never half a row, and the rows present are the generations done.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from yolodist.config.io import dump_yaml
from yolodist.engine.report import VAL_COLUMNS
from yolodist.errors import BadConfig
from yolodist.eval.metrics import fitness
from yolodist.evolve.space import NAMES, RESULTS
from yolodist.utils.io import atomic_write_text

LOGGER = logging.getLogger(__name__)

RESULT_COLUMNS = VAL_COLUMNS  # the final validation of each generation
COLUMNS = (*RESULT_COLUMNS, *NAMES)
WIDTH = 20


def format_row(values: Sequence[float]) -> str:
    return ",".join(f"{float(v):>{WIDTH}.7g}" for v in values) + "\n"


def header() -> str:
    return ",".join(f"{name:>{WIDTH}s}" for name in COLUMNS) + "\n"


def read_history(path: Path) -> np.ndarray:
    """The finished generations ``[n, 7 + genes]`` in ``path`` (``[0, 7 + genes]`` when there is no file)."""
    if not path.is_file():
        return np.zeros((0, len(COLUMNS)))
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    names = tuple(cell.strip() for cell in rows[0]) if rows else ()
    if names != COLUMNS:
        raise BadConfig(
            f"{path} does not have the columns this version of yolodist writes ({len(names)} columns, "
            f"expected {len(COLUMNS)}); continue it with the version that started it, or start a new "
            "evolution (another --name)"
        )
    try:
        values = [[float(cell) for cell in row] for row in rows[1:]]
    except ValueError as e:
        raise BadConfig(f"{path} has a cell that is not a number ({e}); fix or remove that row") from None
    if any(len(row) != len(COLUMNS) for row in values):
        raise BadConfig(f"{path} has a row without {len(COLUMNS)} values; fix or remove that row")
    return np.array(values, dtype=float).reshape(-1, len(COLUMNS))


def append_generation(path: Path, results: Sequence[float], genes: Mapping[str, float]) -> np.ndarray:
    """Add one finished generation to ``path`` (atomically) and return the whole history."""
    if len(results) != RESULTS:
        raise ValueError(f"a generation has {RESULTS} results, got {len(results)}")
    old = path.read_text(encoding="utf-8") if path.is_file() else header()
    atomic_write_text(path, old + format_row([*results, *(genes[name] for name in NAMES)]))
    return read_history(path)


def best_generation(history: np.ndarray) -> int:
    """Index of the fittest generation (the first of equals)."""
    return int(np.argmax(fitness(history[:, :4])))


def write_best_hyp(path: Path, history: np.ndarray, base: Mapping[str, float]) -> None:
    """hyp_evolve.yaml: ``base`` (the starting hyperparameters) with the best generation's genes, ready for --hyp."""
    best = best_generation(history)
    row = history[best]
    lines = [
        "# yolodist hyperparameter evolution results",
        f"# Generations: {len(history)}; best: generation {best} (counted from 0), fitness {fitness(row[:4]):.5g}",
        "# " + ", ".join(f"{name:>20s}" for name in RESULT_COLUMNS),
        "# " + ", ".join(f"{v:>20.5g}" for v in row[:RESULTS]),
        "",
    ]
    values = {**base, **dict(zip(NAMES, (float(v) for v in row[RESULTS:]), strict=True))}
    atomic_write_text(path, "\n".join(lines) + "\n" + dump_yaml(values))


def summary(history: np.ndarray, total: int) -> str:
    """One line: how far the evolution is, the last generation's results and the best so far."""
    last, best = history[-1], best_generation(history)
    p, r, map50, map_ = last[:4]
    return (
        f"evolve: {len(history)}/{total} generations done; this one: P {p:.3g} R {r:.3g} mAP50 {map50:.3g} "
        f"mAP50-95 {map_:.3g} fitness {fitness(last[:4]):.4g}; best: generation {best}, "
        f"fitness {fitness(history[best, :4]):.4g}"
    )
