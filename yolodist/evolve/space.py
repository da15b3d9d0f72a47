"""The evolved hyperparameters and how a generation's values are bred from the best earlier ones.

Pure NumPy: every random draw comes from the generator passed in, which the caller seeds from
``--seed`` and the generation index, so an evolution is reproducible from its ``evolve.csv``.

Breeding, as upstream YOLOv5 v7.0 does it: the (at most) five fittest generations so far are the
candidate parents; one is picked at random, weighted by how much fitter it is than the weakest of
them; each of its genes is multiplied by a random factor near 1, then clipped to the gene's bounds
and rounded to 5 decimals. A gene whose mutation scale is 0 keeps its starting value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from yolodist.eval.metrics import fitness

RESULTS = 7  # P, R, mAP@0.5, mAP@0.5:0.95 and the three validation losses lead every row
PARENTS = 5  # how many of the fittest generations may become the parent
MUTATION_PROBABILITY = 0.8  # chance that a gene is mutated at all
SIGMA = 0.2
FACTOR_RANGE = (0.3, 3.0)  # a gene is never scaled below 0.3x or above 3x in one generation
DECIMALS = 5
REDRAWS = 100  # a child identical to its parent would only repeat that generation: draw again


@dataclass(frozen=True)
class Gene:
    """How one hyperparameter may move: ``scale`` of the mutation (0 = fixed), and its bounds."""

    scale: float
    low: float
    high: float


# Upstream's table (its tutorial and train.py), in its order. Upstream also evolves 'anchors' (the
# anchors per level, which AutoAnchor then recomputes); yolodist keeps the model's anchors fixed.
GENES: dict[str, Gene] = {
    "lr0": Gene(1, 1e-5, 1e-1),
    "lrf": Gene(1, 0.01, 1.0),
    "momentum": Gene(0.3, 0.6, 0.98),
    "weight_decay": Gene(1, 0.0, 0.001),
    "warmup_epochs": Gene(1, 0.0, 5.0),
    "warmup_momentum": Gene(1, 0.0, 0.95),
    "warmup_bias_lr": Gene(1, 0.0, 0.2),
    "box": Gene(1, 0.02, 0.2),
    "cls": Gene(1, 0.2, 4.0),
    "cls_pw": Gene(1, 0.5, 2.0),
    "obj": Gene(1, 0.2, 4.0),
    "obj_pw": Gene(1, 0.5, 2.0),
    "iou_t": Gene(0, 0.1, 0.7),
    "anchor_t": Gene(1, 2.0, 8.0),
    "fl_gamma": Gene(0, 0.0, 2.0),
    "hsv_h": Gene(1, 0.0, 0.1),
    "hsv_s": Gene(1, 0.0, 0.9),
    "hsv_v": Gene(1, 0.0, 0.9),
    "degrees": Gene(1, 0.0, 45.0),
    "translate": Gene(1, 0.0, 0.9),
    "scale": Gene(1, 0.0, 0.9),
    "shear": Gene(1, 0.0, 10.0),
    "perspective": Gene(0, 0.0, 0.001),
    "flipud": Gene(1, 0.0, 1.0),
    "fliplr": Gene(0, 0.0, 1.0),
    "mosaic": Gene(1, 0.0, 1.0),
    "mixup": Gene(1, 0.0, 1.0),
    "copy_paste": Gene(1, 0.0, 1.0),
}
NAMES = tuple(GENES)


def generation_rng(seed: int, generation: int) -> np.random.Generator:
    """The generator for ``generation`` of an evolution started with ``--seed seed`` (negative seeds too)."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, generation]))


def constrain(values: Mapping[str, float]) -> dict[str, float]:
    """Every gene clipped to its bounds and rounded to 5 decimals, in :data:`NAMES` order."""
    out = {}
    for name in NAMES:
        gene = GENES[name]
        out[name] = round(min(max(float(values[name]), gene.low), gene.high), DECIMALS)
    return out


def select_parent(history: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One row of ``history`` ``[generations, 7 + genes]``, drawn from the fittest five by weight.

    The weight of a candidate is its fitness above the weakest candidate's (plus 1e-6, so equal
    fitnesses give equal chances). Ties in fitness keep the earlier generation first.
    """
    scores = fitness(history[:, :4])
    order = np.argsort(-scores, kind="stable")[:PARENTS]
    weights = scores[order] - scores[order].min() + 1e-6
    return history[order[rng.choice(len(order), p=weights / weights.sum())]]


def mutation_factors(scales: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One factor per gene ``[genes]``: 1 for an unmutated gene, else ``1 + scale * N(0, 1) * U(0, 1) * sigma``.

    One U(0, 1) is shared by all genes, so some children move a little everywhere and some a lot;
    the draw repeats until some factor differs from 1.
    """
    factors = np.ones(len(scales))
    if not np.any(scales):
        return factors
    while np.all(factors == 1):
        mutated = rng.random(len(scales)) < MUTATION_PROBABILITY
        factors = (scales * mutated * rng.standard_normal(len(scales)) * rng.random() * SIGMA + 1).clip(*FACTOR_RANGE)
    return factors


def breed(history: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """The next generation's genes from ``history`` ``[generations >= 1, 7 + genes]`` (columns in NAMES order)."""
    parent = dict(zip(NAMES, history_genes(select_parent(history, rng)), strict=True))
    scales = np.array([GENES[name].scale for name in NAMES])
    child = parent
    for _ in range(REDRAWS):
        factors = mutation_factors(scales, rng)
        child = constrain({name: parent[name] * factor for name, factor in zip(NAMES, factors, strict=True)})
        if child != parent:  # a gene at 0 or at a bound may not move even when its factor does
            break
    return child


def history_genes(row: np.ndarray) -> list[float]:
    return [float(v) for v in row[RESULTS:]]
