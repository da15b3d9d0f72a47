"""Training progress within an epoch: a tqdm bar on a terminal, plain periodic lines in a log.

The lines are for batch jobs (SLURM, nohup), whose logs are files read later or through
``tail -f``: one line per part of an epoch, never a carriage return, e.g.

    epoch 3/99  120/480 batches  box 0.0512 obj 0.0331 cls 0.0120  mem 2.1G  24.1 img/s  ETA 1:02:13

A line comes when a tenth of the epoch has passed since the last one, but at most one every
30 s (short epochs stay short in the log) and at least one every 5 minutes (long epochs still show
life); the epoch's last batch always has its line. Lines can only come when the trainer syncs its
losses (every few batches), so these times are approximate. ``img/s`` counts the images of all
ranks; ``ETA`` is for the rest of the run, later epochs and their validation included.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from tqdm import tqdm

LOGGER = logging.getLogger(__name__)

BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"
LINE_FRACTION = 0.1  # a line every tenth of an epoch ...
MIN_LINE_SECONDS = 30.0  # ... but not more often than this ...
MAX_LINE_SECONDS = 300.0  # ... and not less often than this


@dataclass(frozen=True)
class StepProgress:
    """Where an epoch stands at a loss sync: ``done`` of its batches trained (counting any before a resume),
    ``advance`` of them since the previous sync, the mean (box, obj, cls) losses so far."""

    done: int
    advance: int
    losses: list[float]
    instances: int
    size: int
    memory: str


class EpochBar:
    """Upstream's bar: a header, then one tqdm bar per epoch redrawn with the mean losses."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.bar: tqdm | None = None

    def epoch_start(self, epoch: int, steps: int, start: int) -> None:
        self.epoch = epoch
        LOGGER.info(("\n" + "%11s" * 7) % ("Epoch", "Mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size"))
        self.bar = tqdm(
            total=steps, initial=start, bar_format=BAR_FORMAT, leave=True, mininterval=1.0, dynamic_ncols=False
        )

    def step(self, progress: StepProgress) -> None:
        if self.bar is not None:
            description = ("%11s" * 2 + "%11.4g" * 5) % (
                f"{self.epoch}/{self.epochs - 1}",
                progress.memory,
                *progress.losses,
                progress.instances,
                progress.size,
            )
            self.bar.set_description_str(description, refresh=False)
            self.bar.update(progress.advance)

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLines:
    """Plain progress lines for logs; see the module docstring for when they come."""

    def __init__(
        self, epochs: int, images_per_batch: int, clock: Callable[[], float] = time.monotonic, log=LOGGER.info
    ) -> None:
        self.epochs = epochs
        self.images_per_batch = images_per_batch  # all ranks together
        self.clock = clock
        self.log = log
        self.between_epochs: float | None = None  # validation and saving after the last epoch, in seconds
        self.last_end: float | None = None

    def epoch_start(self, epoch: int, steps: int, start: int) -> None:
        now = self.clock()
        if self.last_end is not None:
            self.between_epochs = now - self.last_end
        self.epoch, self.steps, self.start = epoch, steps, start
        self.started = self.last_line_time = now
        self.last_line_batch = start

    def step(self, progress: StepProgress) -> None:
        now, done = self.clock(), progress.done
        since = now - self.last_line_time
        part = done - self.last_line_batch >= max(1, math.ceil(LINE_FRACTION * self.steps))
        if done < self.steps and not (part and since >= MIN_LINE_SECONDS) and since < MAX_LINE_SECONDS:
            return
        self.last_line_time, self.last_line_batch = now, done
        self.log(self.line(done, progress.losses, progress.memory, now - self.started))

    def line(self, done: int, losses: list[float], memory: str, seconds: float) -> str:
        trained = max(done - self.start, 1)
        per_batch = seconds / trained
        images_per_second = trained * self.images_per_batch / max(seconds, 1e-9)
        box, obj, cls = losses
        return (
            f"epoch {self.epoch}/{self.epochs - 1}  {done}/{self.steps} batches  "
            f"box {box:.4f} obj {obj:.4f} cls {cls:.4f}  mem {memory}  {images_per_second:.1f} img/s  "
            f"ETA {format_eta(self.eta(done, per_batch))}"
        )

    def eta(self, done: int, per_batch: float) -> float:
        """Seconds left in the run: this epoch's batches and validation, then each later epoch's."""
        later_epochs = self.epochs - 1 - self.epoch
        validation = self.between_epochs or 0.0  # unknown until the first epoch has been validated
        return (self.steps - done) * per_batch + validation + later_epochs * (self.steps * per_batch + validation)

    def epoch_end(self) -> None:
        self.last_end = self.clock()


def format_eta(seconds: float) -> str:
    """``1:02:13``; days spelled out as ``2 days, 3:04:05``."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))
