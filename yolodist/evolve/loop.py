"""``train.py --evolve N``: N trainings in all, each with hyperparameters bred from the best before it.

One process group serves every generation: under torchrun each generation is a full distributed
training. Rank 0 alone reads evolve.csv, breeds the next values and writes the files; the values
reach the other ranks by broadcast, and after training every rank reports what it trained with, so
a generation whose ranks disagreed is an error instead of a silently wrong row.

Between generations nothing of the previous one is reused except what is meant to be: the image
cache (same images, same key) and the process group. Each training seeds itself from --seed as a
plain run does, builds its own loaders, watchdog and signal handlers (inside ``fit``), and trains
in a fresh directory ``gen<i>``. Elastic restarts resume the evolution, not a generation's
checkpoint: the unfinished generation is trained again from its start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import shutil
from pathlib import Path

import numpy as np

from yolodist.config.io import load_hyp
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.distributed import collectives
from yolodist.distributed.env import DistEnv
from yolodist.engine.trainer import FitResult, fit
from yolodist.errors import DistFailure, Interrupted
from yolodist.eval.plots import safe_plot
from yolodist.evolve import record, space
from yolodist.evolve.plot import plot_evolve
from yolodist.utils.io import atomic_write_text
from yolodist.utils.log import colorstr
from yolodist.utils.paths import increment_path

LOGGER = logging.getLogger(__name__)
PREFIX = colorstr("evolve: ")


def generation_dir_name(generation: int) -> str:
    return f"gen{generation:03d}"


def evolve(cfg: TrainConfig, env: DistEnv) -> None:
    """Run the generations of ``cfg.evolve`` not yet in evolve.csv; rank 0 writes the results after each."""
    total = int(cfg.evolve or 0)
    evolve_dir = evolve_directory(cfg, env)
    csv_path = evolve_dir / "evolve.csv"
    base = load_hyp(cfg.hyp)
    history = record.read_history(csv_path) if env.is_main else None
    done = int(collectives.broadcast_object(len(history) if history is not None else 0, env))
    if done >= total:
        LOGGER.info(f"{PREFIX}{csv_path} already holds {done} generation(s) of {total}; raise --evolve to run more")
        return
    LOGGER.info(f"{PREFIX}generations {done}..{total - 1} of {total} in {colorstr(str(evolve_dir), 'bold')}")
    # Generations are not resumed from their own checkpoints: a restarted launch trains the
    # unfinished one again (the evolution itself continues from evolve.csv).
    generation_env = dataclasses.replace(env, restart_count=0, requeues=0)
    for generation in range(done, total):
        genes = next_genes(base, history, cfg.seed, generation, env)
        hyp = base.replace(**genes)
        result = train_generation(cfg, generation_env, evolve_dir, generation, hyp)
        check_same_hyp(result, generation, env)
        if env.is_main:
            history = finish_generation(evolve_dir, history, result, base, total)
        gc.collect()  # the last generation's loaders (and their worker processes) go before the next start
    forget_evolution(cfg, env)


def evolve_directory(cfg: TrainConfig, env: DistEnv) -> Path:
    """project/name (numbered unless --exist-ok), or the directory a restarted launch was evolving in."""
    path = None
    if env.is_main:
        path = remembered_evolution(cfg, env) or increment_path(
            Path(cfg.project) / cfg.name, exist_ok=cfg.exist_ok, mkdir=True
        )
        path.mkdir(parents=True, exist_ok=True)
        if env.max_restarts > 0:
            atomic_write_text(note_path(cfg, env), str(path.resolve()))
    return Path(str(collectives.broadcast_object(str(path) if path else None, env)))


def note_path(cfg: TrainConfig, env: DistEnv) -> Path:
    """Where rank 0 of a launch that torchrun may restart (or SLURM requeue) notes its evolution."""
    return Path(cfg.project) / f".evolve-{env.job_key}"


def remembered_evolution(cfg: TrainConfig, env: DistEnv) -> Path | None:
    if (env.restart_count == 0 and env.requeues == 0) or env.max_restarts == 0:
        return None  # neither a torchrun restart round nor a requeued SLURM job
    with contextlib.suppress(OSError):
        path = Path(note_path(cfg, env).read_text(encoding="utf-8").strip())
        if path.is_dir():
            LOGGER.info(f"{PREFIX}restarted launch: continuing the evolution in {path}")
            return path
    return None


def forget_evolution(cfg: TrainConfig, env: DistEnv) -> None:
    if env.is_main and env.max_restarts > 0:
        note_path(cfg, env).unlink(missing_ok=True)


def next_genes(base: Hyp, history: np.ndarray | None, seed: int, generation: int, env: DistEnv) -> dict[str, float]:
    """Rank 0's genes for ``generation`` (the starting values first, then bred), the same on every rank."""
    genes = None
    if env.is_main:
        if history is None or not len(history):
            genes = space.constrain(base.to_dict())
        else:
            genes = space.breed(history, space.generation_rng(seed, generation))
    return dict(collectives.broadcast_object(genes, env))


def generation_config(cfg: TrainConfig, evolve_dir: Path, generation: int) -> TrainConfig:
    """A generation trains as upstream's do: only the final epoch validated and saved, no plots."""
    return cfg.replace(
        project=str(evolve_dir),
        name=generation_dir_name(generation),
        exist_ok=True,
        resume=False,
        noval=True,
        nosave=True,
        noplots=True,
    )


def train_generation(cfg: TrainConfig, env: DistEnv, evolve_dir: Path, generation: int, hyp: Hyp) -> FitResult:
    """One full training; an interruption says how to continue the evolution, not the generation."""
    total = int(cfg.evolve or 0)
    LOGGER.info(f"\n{PREFIX}generation {generation} of {total} (counted from 0)")
    if env.is_main:  # a generation interrupted earlier left a partial directory: start it afresh
        shutil.rmtree(evolve_dir / generation_dir_name(generation), ignore_errors=True)
    try:
        return fit(generation_config(cfg, evolve_dir, generation), env, hyp)
    except Interrupted as stop:
        if not env.is_main:
            raise
        again = "the same command" if cfg.exist_ok else "the same command with --exist-ok"
        raise Interrupted(
            f"Interrupted in generation {generation}; {evolve_dir / 'evolve.csv'} holds the {generation} finished "
            f"one(s). Continue the evolution with {again} (same --project/--name: {evolve_dir})",
            stop.exit_code - 128,
        ) from None


def check_same_hyp(result: FitResult, generation: int, env: DistEnv) -> None:
    """Every rank must have trained rank 0's values; one that did not would make the row a lie."""
    trained = collectives.all_gather_object(result.hyp.to_dict() if result.hyp else None, env)
    differ = [rank for rank, values in enumerate(trained) if values != trained[0]]
    if differ:
        raise DistFailure(
            f"generation {generation}: rank(s) {', '.join(map(str, differ))} trained other hyperparameters than rank 0"
        )
    if env.is_distributed:
        LOGGER.info(f"{PREFIX}generation {generation}: all {len(trained)} ranks trained the same hyperparameters")


def finish_generation(evolve_dir: Path, history: np.ndarray, result: FitResult, base: Hyp, total: int) -> np.ndarray:
    """Rank 0: the row, hyp_evolve.yaml, evolve.png, one summary line; only the best generation keeps weights."""
    final, trained = result.final, result.hyp or base
    results = [final.precision, final.recall, final.map50, final.map, *final.losses]
    genes = {name: getattr(trained, name) for name in space.NAMES}
    history = record.append_generation(evolve_dir / "evolve.csv", results, genes)
    record.write_best_hyp(evolve_dir / "hyp_evolve.yaml", history, base.to_dict())
    safe_plot(plot_evolve, history, evolve_dir / "evolve.png")
    keep_best_weights(evolve_dir, record.best_generation(history))
    LOGGER.info(record.summary(history, total))
    return history


def keep_best_weights(evolve_dir: Path, best: int) -> None:
    """Remove every generation's checkpoints but the best one's: 300 generations would fill a disk."""
    for weights in evolve_dir.glob("gen*/weights"):
        if weights.parent.name != generation_dir_name(best):
            shutil.rmtree(weights, ignore_errors=True)
