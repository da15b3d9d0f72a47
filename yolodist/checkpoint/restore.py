"""Where a run starts (from scratch, from --weights, or continuing a run with --resume) and what a resume restores.

A resume is applied in two steps because the run is built in between from the saved options:
``resumed_settings`` gives the options and hyperparameters to build it from, then ``restore`` puts
the saved state into the model, EMA and optimiser just built and says where training picks up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from yolodist.checkpoint.files import PickledCheckpoint, load_latest_good
from yolodist.checkpoint.state import TrainingState
from yolodist.checkpoint.weights import load_weights, resolve_weights, transfer_start_weights
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.errors import BadCheckpoint, BadFlag

LOGGER = logging.getLogger(__name__)

# Settings of the new invocation that a resumed run keeps: they describe this launch, not the run.
RUNTIME_KEYS = ("device", "workers", "local_rank", "dist_timeout")


class AveragedModel(Protocol):
    """The EMA of the model's weights (``engine.ema.ModelEMA``)."""

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int | None = None) -> None: ...


class OptimizerParts(Protocol):
    """What steps the weights (``engine.build.OptimParts``)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


@dataclass
class Start:
    """The checkpoint a run starts from (None: from scratch) and, when resuming, the run directory it continues."""

    state: TrainingState | None = None
    run_dir: Path | None = None


@dataclass
class Progress:
    """Where training picks up; a new run starts at epoch 0 with nothing to skip."""

    start_epoch: int = 0
    best_fitness: float = 0.0
    start_batch: int = 0  # batches of start_epoch trained before an interruption
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per-class mAP that --image-weights draws by


def find_latest_last(search_dir: Path = Path("runs")) -> Path:
    """The most recently written last.pt under ``search_dir`` (a bare ``--resume``)."""
    candidates = sorted(search_dir.glob("**/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise BadFlag(
            f"--resume found no last.pt under {search_dir}/; pass the path: --resume runs/train/exp/weights/last.pt"
        )
    return candidates[-1]


def _load_resumable(path: Path) -> tuple[TrainingState, Path]:
    try:
        ckpt, used = load_latest_good(path)
    except PickledCheckpoint:
        raise BadCheckpoint(
            f"--resume {path}: not a yolodist checkpoint (it holds pickled objects, as upstream YOLOv5 files "
            f"do), so it was not loaded; --resume continues yolodist runs only: start a new run"
            f" with --weights {path}"
        ) from None
    state = TrainingState.from_dict(ckpt, used)
    if not state.resumable:
        raise BadCheckpoint(f"{used} cannot be resumed (it holds no optimizer state); use it with --weights instead")
    LOGGER.info(f"Resuming training from {used}")
    # A damaged last.pt falls back to last.prev.pt: the run directory is the one of the file actually used.
    return state, used.parent.parent


def load_start(cfg: TrainConfig) -> Start:
    """The checkpoint to start from and, when resuming, the run directory to continue."""
    if cfg.resume:
        path = find_latest_last() if cfg.resume is True else Path(str(cfg.resume))
        if not path.is_file():
            raise BadFlag(f"--resume {path}: no such checkpoint")
        return Start(*_load_resumable(path))
    if cfg.weights:
        path = resolve_weights(cfg.weights)
        return Start(TrainingState.from_dict(load_weights(path), path))
    return Start()


def resumed_settings(cfg: TrainConfig, state: TrainingState) -> tuple[TrainConfig, Hyp]:
    """The resumed run's own options (with this launch's runtime settings) and hyperparameters."""
    saved = dict(state.opt)
    saved["freeze"] = tuple(saved.get("freeze", (0,)))
    for key in RUNTIME_KEYS:
        saved[key] = getattr(cfg, key)
    saved["resume"] = cfg.resume if cfg.resume is not True else str(find_latest_last())
    known = set(TrainConfig.__dataclass_fields__)
    restored = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    if int(state.epoch) + 1 >= restored.epochs:
        raise BadFlag(
            f"the run in {restored.resume} already finished all {restored.epochs} epochs; nothing to resume. "
            f"Start a new run with --weights {restored.resume} to train further."
        )
    return restored, Hyp.from_dict(state.hyp)


def keep_implementation(optimizer: torch.optim.Optimizer) -> None:
    """Undo what ``load_state_dict`` does to the kernel choice: saved groups (e.g. from a checkpoint
    written by a for-loop optimiser) replace the current groups' ``fused``/``foreach`` flags."""
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            group[key] = optimizer.defaults.get(key)
        if not group["fused"]:
            continue
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if torch.is_tensor(state.get("step")):  # fused kernels read the step count on the parameter's device
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


def _restore_optimizer(state: TrainingState, optim: OptimizerParts) -> int:
    """Optimiser, AMP scaler and scheduler as saved; returns the epoch to start."""
    optim.optimizer.load_state_dict(state.optimizer)
    keep_implementation(optim.optimizer)
    if state.scaler:
        optim.scaler.load_state_dict(state.scaler)
    start_epoch = int(state.epoch) + 1
    # The saved groups hold the lr in force when the checkpoint was written: the next epoch's after an
    # epoch end (the scheduler stepped before the save), and mid-epoch whatever warm-up or the
    # scheduler had set, which the scheduler's own value would get wrong in the epoch warm-up ends in.
    optim.scheduler.last_epoch = start_epoch  # the value it holds after start_epoch steps
    return start_epoch


def _saved_maps(state: TrainingState, nc: int) -> np.ndarray:
    """Per-class mAP of the last validation (zeros from a checkpoint older than the field)."""
    if state.maps is None or len(state.maps) != nc:
        return np.zeros(nc)
    return np.asarray(state.maps, dtype=np.float64)


def restore(
    state: TrainingState | None,
    cfg: TrainConfig,
    *,
    model: nn.Module,
    ema: AveragedModel,
    optim: OptimizerParts,
    nc: int,
) -> Progress:
    """Everything a resume puts back into the run built from ``resumed_settings``; a new run gets a fresh start.

    In order: the model's weights (all of them, anchors included); the EMA's weights and update count
    (without saved ones the average starts from the restored weights, as a new EMA would); the
    optimiser's state, keeping this run's kernels; the AMP scaler; the scheduler's epoch; and where
    training picks up: the next epoch, the best fitness so far, the batches of that epoch already
    trained, and the per-class mAP of the last validation. A --weights file's weights went into the
    model when it was built, before AutoAnchor, so nothing of it is restored here.
    """
    if state is None or not cfg.resume:
        return Progress(maps=np.zeros(nc))
    transfer_start_weights(model, state, cfg.weights)
    if state.ema:
        ema.load_state_dict(state.ema, updates=int(state.updates or 0))
    else:
        ema.load_state_dict(model.state_dict())
    start_epoch = _restore_optimizer(state, optim)
    LOGGER.info(f"Resuming training from epoch {start_epoch} to {cfg.epochs} total epochs")
    start_batch = int(state.batches_done or 0)
    if start_batch:
        LOGGER.info(f"Resuming epoch {start_epoch} after its first {start_batch} batches")
    best_fitness = 0.0 if state.best_fitness is None else float(state.best_fitness)
    return Progress(start_epoch, best_fitness, start_batch, _saved_maps(state, nc))
