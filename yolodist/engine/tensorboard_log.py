"""TensorBoard event files: each epoch's results.csv scalars, under upstream's tags, into the run directory.

As upstream YOLOv5, the main rank writes one ``events.out.tfevents.<time>.<host>.<pid>.0`` file
directly into ``runs/train/exp*``, with the epoch as the step; a resumed run adds a file beside
the first one and its steps carry on, and TensorBoard shows the two as one run. Other ranks never
open one. Without the ``tensorboard`` package there is one info line and nothing else.

The records are written here, synchronously, with TensorBoard's own record format and protobufs
rather than through ``torch.utils.tensorboard.SummaryWriter``: SummaryWriter writes from a thread,
and when that thread fails (a full disk) it prints a traceback and raises again on every later
call. Written here, an error arises in the call that made it; it is logged once as a warning and
TensorBoard logging stops, while training and results.csv carry on. Each epoch is flushed to the
file before training goes on, so a killed job keeps every finished epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from yolodist.utils.log import colorstr

LOGGER = logging.getLogger(__name__)
PREFIX = "TensorBoard: "


class TensorBoardLog:
    """One event file in ``log_dir``, opened at the first epoch written; off for good after any error."""

    def __init__(self, log_dir: Path) -> None:
        # Imported here so that a run without tensorboard, and every rank but the main one, never loads it.
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary, self._record_writer = Event, Summary, RecordWriter
        self.path = log_dir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self.failed = False
        self._file: BinaryIO | None = None
        self._records = None

    def epoch(self, scalars: Mapping[str, float], epoch: int) -> None:
        """Append one scalar per tag at step ``epoch`` and flush; log and stop at the first error."""
        if self.failed:
            return
        try:
            if self._records is None:
                self._file = open(self.path, "wb")
                self._records = self._record_writer(self._file)
                self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
            wall_time = time.time()
            for tag, value in scalars.items():
                value_proto = self._summary.Value(tag=tag, simple_value=float(value))
                self._write(self._event(wall_time=wall_time, step=epoch, summary=self._summary(value=[value_proto])))
            self._records.flush()
        except Exception as error:  # a TensorBoard problem must never end a training
            self._fail(error)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception as error:
                self._fail(error)
            self._file = self._records = None

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def _fail(self, error: Exception) -> None:
        if not self.failed:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            LOGGER.warning(
                f"{PREFIX}could not write {self.path} ({reason or type(error).__name__}); no more TensorBoard "
                "logging in this run, training goes on and results.csv has every epoch"
            )
        self.failed = True
        if self._file is not None:
            file, self._file, self._records = self._file, None, None
            with contextlib.suppress(Exception):  # flushing the buffer may fail again: already reported
                file.close()


def open_tensorboard(save_dir: Path) -> TensorBoardLog | None:
    """The main rank's TensorBoard log for ``save_dir``, with upstream's hint; None when not installed."""
    try:
        log = TensorBoardLog(save_dir)
    except ImportError:
        LOGGER.info(f"{colorstr(PREFIX)}not installed; 'pip install tensorboard' to follow training there")
        return None
    except Exception as error:  # installed but broken, e.g. a protobuf it cannot work with
        LOGGER.warning(f"{PREFIX}cannot be used ({error}); no TensorBoard logging in this run")
        return None
    LOGGER.info(
        f"{colorstr(PREFIX)}Start with 'tensorboard --logdir {save_dir.parent}', view at http://localhost:6006/"
    )
    return log
