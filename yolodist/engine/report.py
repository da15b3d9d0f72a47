"""Console and file reporting. Rank 0 gets a MainReporter; every other rank a NullReporter."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from yolodist.eval.validator import ValResult, format_table

LOGGER = logging.getLogger(__name__)

RESULTS_COLUMNS = (
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "x/lr0",
    "x/lr1",
    "x/lr2",
)
BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"


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
    """Progress bars, the metrics table and results.csv for the main rank."""

    def __init__(self, save_dir: Path, epochs: int, device: torch.device) -> None:
        self.save_dir = save_dir
        self.epochs = epochs
        self.device = device
        self.csv_path = save_dir / "results.csv"
        self.bar: tqdm | None = None

    def epoch_start(self, epoch: int, steps: int) -> None:
        LOGGER.info(("\n" + "%11s" * 7) % ("Epoch", "Mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size"))
        self.bar = tqdm(total=steps, bar_format=BAR_FORMAT, leave=True, mininterval=1.0, dynamic_ncols=False)
        self.epoch = epoch

    def step(self, mean_losses: torch.Tensor, instances: int, size: int, advance: int) -> None:
        if self.bar is None:
            return
        desc = ("%11s" * 2 + "%11.4g" * 5) % (
            f"{self.epoch}/{self.epochs - 1}",
            memory_text(self.device),
            *mean_losses.tolist(),
            instances,
            size,
        )
        self.bar.set_description_str(desc, refresh=False)
        self.bar.update(advance)

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

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
