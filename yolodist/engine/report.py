"""Console and file reporting. Rank 0 gets a MainReporter; every other rank a NullReporter.

The main rank shows progress (a bar on a terminal, plain lines in a log: engine/progress.py), the
metrics table, and writes results.csv and, when tensorboard is installed, the same scalars as
TensorBoard events (engine/tensorboard_log.py).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from yolodist.engine.progress import EpochBar, EpochLines, StepProgress
from yolodist.engine.tensorboard_log import TensorBoardLog
from yolodist.eval.validator import ValResult, format_table
from yolodist.utils.console import progress_mode

LOGGER = logging.getLogger(__name__)

# results.csv's columns, as upstream's (also the TensorBoard tags and, for validation, evolve.csv's).
TRAIN_LOSS_COLUMNS = ("train/box_loss", "train/obj_loss", "train/cls_loss")
VAL_COLUMNS = (
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
)
LR_COLUMNS = ("x/lr0", "x/lr1", "x/lr2")
RESULTS_COLUMNS = ("epoch", *TRAIN_LOSS_COLUMNS, *VAL_COLUMNS, *LR_COLUMNS)


def memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.memory_reserved(device) / 1e9:.3g}G"
    try:
        import resource

        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.3g}G"  # peak RSS (KiB on Linux)
    except ImportError:  # pragma: no cover - non-POSIX
        return "-"


class NullReporter:
    """Every call is a no-op: ranks other than 0 report nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class MainReporter:
    """Progress, the metrics table, results.csv and TensorBoard for the main rank."""

    def __init__(
        self,
        save_dir: Path,
        epochs: int,
        device: torch.device,
        batch_size: int,
        tensorboard: TensorBoardLog | None = None,
    ) -> None:
        self.save_dir = save_dir
        self.device = device
        self.csv_path = save_dir / "results.csv"
        self.progress = EpochBar(epochs) if progress_mode() == "bar" else EpochLines(epochs, batch_size)
        self.tensorboard = tensorboard

    def epoch_start(self, epoch: int, steps: int, start: int = 0) -> None:
        """Epoch ``epoch`` of ``steps`` batches begins at batch ``start`` (after a resume mid-epoch)."""
        self.progress.epoch_start(epoch, steps, start)

    def step(self, mean_losses: torch.Tensor, instances: int, size: int, done: int, advance: int) -> None:
        """At a loss sync: ``done`` batches of the epoch trained, ``advance`` of them since the last sync."""
        memory = memory_text(self.device)
        self.progress.step(StepProgress(done, advance, mean_losses.tolist(), instances, size, memory))

    def epoch_end(self) -> None:
        self.progress.epoch_end()

    def validation(self, result: ValResult, per_class: bool) -> None:
        LOGGER.info(format_table(result, per_class))

    def results_row(self, epoch: int, train_losses: list[float], result: ValResult, lrs: list[float]) -> None:
        """Append one epoch to results.csv, with upstream's column names."""
        row = [
            epoch,
            *train_losses,
            result.precision,
            result.recall,
            result.map50,
            result.map,
            *result.losses,
            *lrs,
        ]
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow([f"{c:>20s}" for c in RESULTS_COLUMNS])
            writer.writerow([f"{v:>20.5g}" if isinstance(v, float) else f"{v:>20d}" for v in row])
            f.flush()
        if self.tensorboard is not None:
            self.tensorboard.epoch(dict(zip(RESULTS_COLUMNS[1:], row[1:], strict=True)), epoch)

    def close(self) -> None:
        """The end of training, finished or not: close what is open."""
        self.progress.epoch_end()
        if self.tensorboard is not None:
            self.tensorboard.close()
