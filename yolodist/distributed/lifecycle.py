"""A training run's life under a launcher: stop signals that every rank agrees on, and the guard
that keeps the hang watchdog and the signal handlers in place while the epochs run.

SIGINT and SIGTERM (torchrun forwards SIGTERM to its workers when it is stopped), and SIGUSR1
(SLURM's warning before a time limit or preemption), only set a flag here; the ranks agree on it at
the next optimiser step (``engine.step`` reads the flag as its stop source), so all of them stop
after the same update and rank 0 can write a checkpoint to resume from. The watchdog and the
heartbeats are in ``distributed.watchdog``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import TypeVar

from yolodist.distributed.env import DistEnv
from yolodist.distributed.watchdog import Watchdog, heartbeats, say

T = TypeVar("T")
# SIGUSR1: SLURM's warning before a time limit or preemption (sbatch --signal=USR1@120).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequested(Exception):
    """Every rank agreed to stop on ``signum`` with ``batches_done`` batches of ``epoch`` trained."""

    def __init__(self, epoch: int, batches_done: int, signum: int, needs_save: bool = True) -> None:
        super().__init__(f"stop at epoch {epoch} step {batches_done}")
        self.epoch, self.batches_done, self.signum, self.needs_save = epoch, batches_done, signum, needs_save


class StopSignals:
    """SIGINT/SIGTERM/SIGUSR1 set a flag (the first time); a second Ctrl-C interrupts at once.

    The training step reads the flag through :meth:`pending` (it is the step's stop source); the
    handlers are in place only between :meth:`install` and :meth:`restore`.
    """

    watched = STOP_SIGNALS

    def __init__(self, announce: bool) -> None:
        self.signum = 0
        self.announce = announce
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._pid = os.getpid()
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def pending(self) -> int:
        return self.signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked data worker: Ctrl-C reaches it too, but the trainer decides when to stop
        if self.signum:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if self.announce:
            name = signal.Signals(signum).name
            say(f"{name} received: stopping after the current optimiser step (Ctrl-C again to stop at once)")


class Guard:
    """The watchdog (DDP only) and the stop ``signals``' handlers, for the length of a ``with`` block."""

    def __init__(self, env: DistEnv, timeout_s: float, signals: StopSignals) -> None:
        self.env, self.timeout_s = env, timeout_s
        self.watchdog = Watchdog(env, timeout_s, heartbeats(env)) if env.is_distributed else None
        self.signals = signals

    def __enter__(self) -> Guard:
        self.signals.install()
        if self.watchdog is not None:
            self.watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.signals.restore()

    def pet(self, epoch: int, step: int) -> None:
        if self.watchdog is not None:
            self.watchdog.pet(epoch, step)

    def progress(self) -> None:
        if self.watchdog is not None:
            self.watchdog.progress()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Validation or saving, under the watchdog's deadline (see :meth:`Watchdog.phase`)."""
        if self.watchdog is None:
            yield
            return
        with self.watchdog.phase(name):
            yield

    def watched(self, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, showing progress at each one: a rank stuck fetching or using a batch is ended."""
        for batch in batches:
            self.progress()
            yield batch

    def peers(self) -> str:
        """Which peers hold the job up, as far as the heartbeats tell ('' when unknown)."""
        return self.watchdog.peers() if self.watchdog is not None else ""

    def failure_message(self, kind: str) -> str:
        """This rank's one line when a collective failed because of a peer (``kind`` from ``peer_failure``)."""
        who = f"rank {self.env.rank} (node {self.env.node_rank})"
        if kind == "lost":
            return f"{who}: stopping because another rank failed; its error is in its own node's output"
        laggards = self.peers()
        waiting_for = f" ({laggards})" if laggards else ""
        timeout = f"--dist-timeout {self.timeout_s:g} s"
        return f"{who}: a collective waited {timeout} for another rank{waiting_for}; ending the job"
