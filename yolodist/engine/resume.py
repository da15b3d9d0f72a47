"""Where a run starts: from scratch, from --weights, or continuing a run with --resume."""

from __future__ import annotations

import logging
from pathlib import Path

from yolodist.config.schema import TrainConfig
from yolodist.engine.checkpoint import load_latest_good
from yolodist.engine.weights import load_weights
from yolodist.errors import BadCheckpoint, BadFlag

LOGGER = logging.getLogger(__name__)

# Settings of the new invocation that a resumed run keeps: they describe this launch, not the run.
RUNTIME_KEYS = ("device", "workers", "local_rank", "dist_timeout")


def find_latest_last(search_dir: Path = Path("runs")) -> Path:
    candidates = sorted(search_dir.glob("**/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise BadFlag(
            f"--resume found no last.pt under {search_dir}/; pass the path: --resume runs/train/exp/weights/last.pt"
        )
    return candidates[-1]


def load_start(cfg: TrainConfig) -> tuple[dict | None, Path | None]:
    """The checkpoint to start from and, when resuming, the run directory to continue."""
    if cfg.resume:
        path = find_latest_last() if cfg.resume is True else Path(str(cfg.resume))
        if not path.is_file():
            raise BadFlag(f"--resume {path}: no such checkpoint")
        ckpt, used = load_latest_good(path)
        if ckpt.get("optimizer") is None or "opt" not in ckpt:
            raise BadCheckpoint(
                f"{used} cannot be resumed (it holds no optimizer state); use it with --weights instead"
            )
        LOGGER.info(f"Resuming training from {used}")
        return ckpt, used.parent.parent
    if cfg.weights:
        from yolodist.engine.build import resolve_weights

        return load_weights(resolve_weights(cfg.weights)), None
    return None, None


def restore_config(cfg: TrainConfig, ckpt: dict) -> TrainConfig:
    """The resumed run's own options, with this launch's runtime settings."""
    saved = dict(ckpt["opt"])
    saved["freeze"] = tuple(saved.get("freeze", (0,)))
    for key in RUNTIME_KEYS:
        saved[key] = getattr(cfg, key)
    saved["resume"] = cfg.resume if cfg.resume is not True else str(find_latest_last())
    known = set(TrainConfig.__dataclass_fields__)
    restored = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    epochs_done = int(ckpt["epoch"]) + 1
    if epochs_done >= restored.epochs:
        raise BadFlag(
            f"the run in {restored.resume} already finished all {restored.epochs} epochs; nothing to resume. "
            f"Start a new run with --weights {restored.resume} to train further."
        )
    return restored


def restore_training(cfg: TrainConfig, ckpt: dict | None, optim, ema) -> tuple[int, float]:
    """Optimiser, scheduler and counters for a resumed run; (0, 0.0) for a new one."""
    if ckpt is None or not cfg.resume:
        return 0, 0.0
    optim.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        optim.scaler.load_state_dict(ckpt["scaler"])
    start_epoch = int(ckpt["epoch"]) + 1
    optim.scheduler.last_epoch = start_epoch  # the value it holds after start_epoch steps
    for group, lr_scale in zip(optim.optimizer.param_groups, [optim.lr_fn(start_epoch)] * 3, strict=False):
        group["lr"] = group["initial_lr"] * lr_scale
    LOGGER.info(f"Resuming training from epoch {start_epoch} to {cfg.epochs} total epochs")
    return start_epoch, float(ckpt.get("best_fitness", 0.0))
