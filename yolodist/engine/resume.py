"""Where a run starts: from scratch, from --weights, or continuing a run with --resume."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import DataLoader, Sampler

from yolodist.checkpoint.files import PickledCheckpoint, load_latest_good
from yolodist.checkpoint.weights import load_weights, resolve_weights
from yolodist.config.schema import TrainConfig
from yolodist.engine.optim import keep_implementation
from yolodist.errors import BadCheckpoint, BadFlag

if TYPE_CHECKING:
    from yolodist.engine.build import OptimParts

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
        try:
            ckpt, used = load_latest_good(path)
        except PickledCheckpoint:
            raise BadCheckpoint(
                f"--resume {path}: not a yolodist checkpoint (it holds pickled objects, as upstream YOLOv5 files "
                f"do), so it was not loaded; --resume continues yolodist runs only: start a new run"
                f" with --weights {path}"
            ) from None
        if ckpt.get("optimizer") is None or "opt" not in ckpt:
            raise BadCheckpoint(
                f"{used} cannot be resumed (it holds no optimizer state); use it with --weights instead"
            )
        LOGGER.info(f"Resuming training from {used}")
        return ckpt, used.parent.parent
    if cfg.weights:
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


def restore_training(cfg: TrainConfig, ckpt: dict | None, optim: OptimParts) -> tuple[int, float]:
    """Optimiser, scheduler and counters for a resumed run; (0, 0.0) for a new one."""
    if ckpt is None or not cfg.resume:
        return 0, 0.0
    optim.optimizer.load_state_dict(ckpt["optimizer"])
    keep_implementation(optim.optimizer)
    if ckpt.get("scaler"):
        optim.scaler.load_state_dict(ckpt["scaler"])
    start_epoch = int(ckpt["epoch"]) + 1
    # The saved groups hold the lr in force when the checkpoint was written: the next epoch's after an
    # epoch end (the scheduler stepped before the save), and mid-epoch whatever warm-up or the
    # scheduler had set, which the scheduler's own value would get wrong in the epoch warm-up ends in.
    optim.scheduler.last_epoch = start_epoch  # the value it holds after start_epoch steps
    LOGGER.info(f"Resuming training from epoch {start_epoch} to {cfg.epochs} total epochs")
    return start_epoch, float(ckpt.get("best_fitness", 0.0))


def batches_done(cfg: TrainConfig, ckpt: dict | None) -> int:
    """Batches of the first resumed epoch trained before an interruption (0: start it from the beginning).

    Counted in global batches, which do not depend on the world size, so a run interrupted on two
    processes can resume on one.
    """
    if ckpt is None or not cfg.resume:
        return 0
    done = int(ckpt.get("batches_done") or 0)
    if done:
        LOGGER.info(f"Resuming epoch {int(ckpt['epoch']) + 1} after its first {done} batches")
    return done


def saved_maps(cfg: TrainConfig, ckpt: dict | None, nc: int) -> np.ndarray:
    """Per-class mAP of the resumed run's last validation (zeros for a new run or an older checkpoint)."""
    maps = (ckpt or {}).get("maps") if cfg.resume else None
    if maps is None or len(maps) != nc:
        return np.zeros(nc)
    return np.asarray(maps, dtype=np.float64)


class SkipBatches(Sampler):
    """A batch sampler's batches from number ``start`` on: the sampler is deterministic, so the rest is exact."""

    def __init__(self, sampler: Sampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.sampler), self.start, None)


def batches_from(loader: DataLoader, start: int) -> Iterable:
    """``loader``, or (for an epoch resumed mid-way) a loader like it without its first ``start`` batches.

    Only the batch indices are skipped, not loaded: every sample's augmentation depends on (seed,
    epoch, index) alone, so the remaining batches are exactly those of the uninterrupted epoch.
    """
    if start == 0:
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=SkipBatches(loader.batch_sampler, start),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        pin_memory=loader.pin_memory,
    )
