"""Elastic restarts: a launch that torchrun restarts (--max-restarts), or a SLURM job that is requeued,
continues its own run.

torchrun restarts every worker of a launch with the same command line after one of them fails.
Without help, the new round would start a new run directory from scratch. Rank 0 of a launch that
may restart notes its run directory in a small file named after the launch (the master's address
and port, which stay the same across rounds and no other live launch shares); a restarted round
resumes from that run's last.pt. The note is removed when training finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

from yolodist.config.schema import TrainConfig
from yolodist.dist import collectives
from yolodist.dist.env import DistEnv
from yolodist.utils.io import atomic_write_text

LOGGER = logging.getLogger(__name__)


def note_path(cfg: TrainConfig, env: DistEnv) -> Path:
    # The run's name too: one SLURM job (one key) may run several trainings one after the other.
    return Path(cfg.project) / f".restart-{env.job_key}-{cfg.name}"


def continue_after_restart(cfg: TrainConfig, env: DistEnv) -> TrainConfig:
    """On a restart round (torchrun) or a requeued SLURM job, ``cfg`` resuming this launch's last.pt
    (unchanged when there is none yet)."""
    if (env.restart_count == 0 and env.requeues == 0) or cfg.resume:
        return cfg
    round_ = f"restart {env.restart_count}" if env.restart_count else f"requeue {env.requeues} of SLURM job"
    last = None
    if env.is_main:
        with contextlib.suppress(OSError):
            candidate = Path(note_path(cfg, env).read_text(encoding="utf-8").strip()) / "weights" / "last.pt"
            last = str(candidate) if candidate.is_file() else None
    last = collectives.broadcast_object(last, env)  # only node 0 can read the note
    if last is None:
        LOGGER.info(f"{round_}: this launch saved no checkpoint yet; training from the start")
        return cfg
    LOGGER.info(f"{round_}: continuing this launch's run from {last}")
    return dataclasses.replace(cfg, resume=last)


def remember_run(cfg: TrainConfig, env: DistEnv, save_dir: Path) -> None:
    """Rank 0 of a launch that may be restarted notes its run directory for the next round."""
    if env.is_main and env.max_restarts > 0:
        atomic_write_text(note_path(cfg, env), str(save_dir.resolve()))


def forget_run(cfg: TrainConfig, env: DistEnv) -> None:
    """Training finished: a later launch on the same address and port must not continue this run."""
    if env.is_main and env.max_restarts > 0:
        note_path(cfg, env).unlink(missing_ok=True)
