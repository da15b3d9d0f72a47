"""Guards around the training loop: a watchdog for hung ranks, and an orderly stop on SIGINT/SIGTERM.

A rank that hangs (a deadlocked data worker, a stuck filesystem, a peer that never arrives) is not
cleaned up by torchrun when it sits on another node: the peers' collectives time out and their node
exits, but the hung rank's launcher waits forever (RELIABILITY.md finding 4). So every rank runs a
daemon thread that the training loop pets once per batch; after ``timeout_s`` without a pet it
dumps every thread's stack, says which rank it is and where it stopped, and ends the process with
``os._exit`` (the main thread may be stuck where no exception can reach it).

Validation and saving run as named phases under the same deadline: validation shows progress once
per batch, and a save has the whole ``timeout_s`` (the other ranks wait for it in a collective
bounded by the same timeout, so a longer save fails the job anyway). A rank hung there, or in its
validation loader, is ended and named like one hung in a training step.

The same threads publish each rank's position to the process group's store every few seconds, so
a rank that gives up can also say which peer is behind.

SIGINT and SIGTERM (torchrun forwards SIGTERM to its workers when it is stopped) only set a flag
here; the ranks agree on it at the next optimiser step (see ``engine.step``), so all of them stop
after the same update and rank 0 can write a checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import TypeVar

from yolodist.dist import collectives
from yolodist.dist.env import DistEnv
from yolodist.dist.session import Heartbeats, heartbeats

HEARTBEAT_S = 2.0  # how often each rank publishes its position
READ_PEERS_S = 3.0  # how long a rank that gives up waits for the store to tell where the others are
EXIT_HUNG = 1
T = TypeVar("T")
# SIGUSR1: SLURM's warning before a time limit or preemption (sbatch --signal=USR1@120).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequested(Exception):
    """Every rank agreed to stop on ``signum`` with ``batches_done`` batches of ``epoch`` trained."""

    def __init__(self, epoch: int, batches_done: int, signum: int, needs_save: bool = True) -> None:
        super().__init__(f"stop at epoch {epoch} step {batches_done}")
        self.epoch, self.batches_done, self.signum, self.needs_save = epoch, batches_done, signum, needs_save


def _say(text: str) -> None:
    """Write a line to stderr without the logging module, whose locks a stuck main thread may hold."""
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), (text.rstrip("\n") + "\n").encode())


TRAINING = "working"  # the heartbeat state of a rank in the training loop, outside any collective
WAITING = "waiting"  # in a collective, i.e. waiting for the others


def describe_laggards(notes: dict[int, str], world_size: int, me: int) -> str:
    """Which peers hold the job up, from the heartbeat notes ``{rank: "epoch step state node"}``; '' if unknown.

    ``state`` is "waiting" (in a collective), "working" (training) or a phase such as "validating".
    A rank behind the others' (epoch, step) is late; among ranks at the same step, one that is not
    waiting in a collective is the one the others wait for.
    """
    parsed = {}
    for rank, note in notes.items():
        with contextlib.suppress(ValueError):
            epoch, step, state, node = note.split()
            parsed[rank] = (int(epoch), int(step), state, int(node))
    missing = sorted(set(range(world_size)) - set(parsed) - {me})
    if not parsed:
        return f"no progress reported by rank(s) {', '.join(map(str, missing))}" if missing else ""
    front = max((epoch, step) for epoch, step, _, _ in parsed.values())
    late = sorted(r for r, (epoch, step, _, _) in parsed.items() if (epoch, step) < front and r != me)
    busy = sorted(r for r, (_, _, state, _) in parsed.items() if state != WAITING and r != me)
    parts = []
    for rank in late or busy:
        epoch, step, state, node = parsed[rank]
        if state in (TRAINING, WAITING):
            where = "outside any collective" if state == TRAINING else state
            parts.append(f"rank {rank} (node {node}) is at epoch {epoch} step {step}, {where}")
        else:
            parts.append(f"rank {rank} (node {node}) is {state} epoch {epoch}")
    if missing:
        parts.append(f"rank(s) {', '.join(map(str, missing))} never reported progress")
    return "; ".join(parts)


class Watchdog:
    """Ends this process when the training loop has not called :meth:`pet` for ``timeout_s`` seconds."""

    def __init__(self, env: DistEnv, timeout_s: float, board: Heartbeats | None = None) -> None:
        self.env, self.timeout_s, self.board = env, float(timeout_s), board
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._position = (0, 0)
        self._phase = TRAINING
        self._done = threading.Event()
        self._main = threading.main_thread().ident
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._done.clear()
        self._threads = [
            threading.Thread(target=self._watch, name="yolodist-watchdog", daemon=True),
            threading.Thread(target=self._beat, name="yolodist-heartbeat", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()

    def pet(self, epoch: int, step: int) -> None:
        with self._lock:
            self._last, self._position = time.monotonic(), (epoch, step)

    def progress(self) -> None:
        """A sign of life inside a phase (a validation batch): the deadline starts again."""
        with self._lock:
            self._last = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Validation, saving (``name`` is one word, "validating"): the same deadline, started on entry and
        restarted by :meth:`progress`; the heartbeat notes say ``name`` instead of the training step."""
        with self._lock:
            previous, self._phase, self._last = self._phase, name, time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._phase, self._last = previous, time.monotonic()

    def _watch(self) -> None:
        check_s = min(1.0, self.timeout_s / 20)
        while not self._done.wait(check_s):
            with self._lock:
                idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self._expire(idle)

    def _note(self) -> str:
        with self._lock:
            (epoch, step), phase = self._position, self._phase
        frame: FrameType | None = sys._current_frames().get(self._main)
        state = WAITING if collectives.waiting_for_peers(frame) else phase
        return f"{epoch} {step} {state} {self.env.node_rank}"

    def _beat(self) -> None:
        if self.board is None:
            return
        while not self._done.is_set():
            try:
                self.board.publish(self._note())
            except Exception:  # the store lives in node 0's launcher; once it is gone there is no one to tell
                return
            self._done.wait(HEARTBEAT_S)

    def peers(self) -> str:
        """The laggard description, or '' when the store does not answer within READ_PEERS_S."""
        if self.board is None:
            return ""
        found: list[str] = []

        def read() -> None:
            with contextlib.suppress(Exception):
                found.append(describe_laggards(self.board.read(), self.env.world_size, self.env.rank))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(READ_PEERS_S)
        return found[0] if found else ""

    def _expire(self, idle: float) -> None:
        with self._lock:
            (epoch, step), phase = self._position, self._phase
        env = self.env
        where = f"at epoch {epoch} step {step}" if phase == TRAINING else f"while {phase} epoch {epoch}"
        _say(
            f"rank {env.rank} (node {env.node_rank}) made no progress for {self.timeout_s:g} s {where} "
            f"(--dist-timeout); ending the job. Stacks of this process ({idle:.1f} s idle):"
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        peers = self.peers()
        if peers:
            _say(f"rank {env.rank}: waiting for: {peers}")
        os._exit(EXIT_HUNG)


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
            _say(f"{name} received: stopping after the current optimiser step (Ctrl-C again to stop at once)")


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
