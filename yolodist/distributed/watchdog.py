"""A watchdog for hung ranks, and the heartbeats that tell a rank which peer holds the job up.

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
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import torch.distributed as dist

from yolodist.distributed import collectives
from yolodist.distributed.env import DistEnv

HEARTBEAT_S = 2.0  # how often each rank publishes its position
READ_PEERS_S = 3.0  # how long a rank that gives up waits for the store to tell where the others are
EXIT_HUNG = 1


def say(text: str) -> None:
    """Write a line to stderr without the logging module, whose locks a stuck main thread may hold."""
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), (text.rstrip("\n") + "\n").encode())


class Heartbeats:
    """Each rank's latest progress note, kept in the process group's store so any rank can read all of them.

    A rank stuck in a collective cannot tell which peer holds it up; the notes (written every few
    seconds by a watchdog thread) can. Store errors are the caller's to handle: the store lives in
    node 0's launcher and disappears with it.
    """

    PREFIX = "yolodist/heartbeat/"

    def __init__(self, store: dist.Store, rank: int, world_size: int) -> None:
        self._store, self.rank, self.world_size = store, rank, world_size

    def publish(self, note: str) -> None:
        self._store.set(f"{self.PREFIX}{self.rank}", note)

    def read(self) -> dict[int, str]:
        """{rank: note} for every rank that has published one."""
        keys = {rank: f"{self.PREFIX}{rank}" for rank in range(self.world_size)}
        return {rank: self._store.get(key).decode() for rank, key in keys.items() if self._store.check([key])}


def heartbeats(env: DistEnv) -> Heartbeats | None:
    """The heartbeat board of this job's process group; None outside DDP."""
    if not env.is_distributed or not dist.is_initialized():
        return None
    from torch.distributed.distributed_c10d import _get_default_store

    return Heartbeats(_get_default_store(), env.rank, env.world_size)


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
        say(
            f"rank {env.rank} (node {env.node_rank}) made no progress for {self.timeout_s:g} s {where} "
            f"(--dist-timeout); ending the job. Stacks of this process ({idle:.1f} s idle):"
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        peers = self.peers()
        if peers:
            say(f"rank {env.rank}: waiting for: {peers}")
        os._exit(EXIT_HUNG)
