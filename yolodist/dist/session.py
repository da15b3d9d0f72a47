"""The process group's lifetime: initialise it for DDP, turn launch failures into user errors, tear it down."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Iterator

import torch.distributed as dist

from yolodist.dist.env import DistEnv
from yolodist.errors import DistFailure, PortBusy, UserError

LOGGER = logging.getLogger(__name__)


def _restart_store(env: DistEnv, timeout: datetime.timedelta) -> dist.Store:
    """The agent's store seen through a per-restart prefix (RELIABILITY.md finding 2).

    Under static rendezvous torchrun reuses one TCPStore for every restart round, so a restarted
    rank can read the previous round's gloo addresses and hang or fail to connect. Prefixing every
    key with the round number keeps the rounds apart.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        raise DistFailure("MASTER_ADDR/MASTER_PORT are not set; launch with python -m torch.distributed.run")
    base = dist.TCPStore(addr, int(port), env.world_size, is_master=False, timeout=timeout)
    LOGGER.info("restart %d: rendezvous keys kept under attempt%d/", env.restart_count, env.restart_count)
    return dist.PrefixStore(f"attempt{env.restart_count}", base)


def _user_error(error: Exception, env: DistEnv, timeout_s: float) -> UserError | None:
    """The actionable message for a failed initialisation, or None when it is not a launch problem."""
    text = str(error).lower()
    if "eaddrinuse" in text or "address already in use" in text:
        return PortBusy(
            "the master port is already in use (another training probably holds it); "
            "rerun with --master_port set to a free port"
        )
    if "timed out" in text or "timeout" in text:
        return DistFailure(
            f"not all {env.world_size} processes joined within {timeout_s:g} s; check that every node was "
            "started with the same --nnodes, --master_addr and --master_port and can reach the master"
        )
    if "connection refused" in text or ("connect" in text and "failed" in text):
        return DistFailure(
            "could not reach the master's rendezvous store; check --master_addr/--master_port and that "
            "node 0 is running and reachable (firewall)"
        )
    if "environment variable" in text and "expected" in text:
        return DistFailure(f"{error}; launch with python -m torch.distributed.run")
    return None


JOINED = "yolodist/joined/"


def _joined_store(env: DistEnv, timeout_s: float) -> dist.Store:
    """The job's store (rank 0 hosts it) once every rank has checked in; otherwise which ranks did not.

    Without a launcher agent nobody else notices a task that died before joining: torch's own wait
    would only say how many ranks are missing, after its timeout. Here each rank checks in under its
    own key, so the ranks that did start can name the ones that never came.
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    where = f"{env.master_addr}:{env.master_port}"
    try:
        store = dist.TCPStore(
            env.master_addr, env.master_port, env.world_size, is_master=env.is_main, timeout=timeout,
            wait_for_workers=False,
        )  # fmt: skip
    except (RuntimeError, ValueError) as error:
        if env.is_main:
            raise
        raise DistFailure(
            f"rank {env.rank}: rank 0 never opened the job's store at {where} within {timeout_s:g} s; its task "
            "did not start or failed first (see the job's log), or the port is blocked between the nodes"
        ) from error
    store.set(f"{JOINED}{env.rank}", str(env.node_rank))
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [r for r in range(env.world_size) if not store.check([f"{JOINED}{r}"])]
        if not missing:
            return store
        if time.monotonic() > deadline:
            names = ", ".join(str(r) for r in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise DistFailure(
                f"rank {env.rank}: rank(s) {names} of {env.world_size} never joined within {timeout_s:g} s "
                "(--dist-timeout); their tasks did not start or failed first: see the job's log"
            )
        time.sleep(0.2)


def _init(env: DistEnv, timeout_s: float) -> None:
    # Imported after the group exists, torch._dynamo (torchvision imports it) holds references to the
    # default group that destroy_process_group cannot drop; the group then outlives session() and its
    # gloo threads are torn down during interpreter finalisation, which sometimes aborts the rank
    # ("terminate called without an active exception"). Imported before, it holds none.
    import torch._dynamo

    timeout = datetime.timedelta(seconds=timeout_s)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    device_id = env.device if env.backend == "nccl" else None
    try:
        if env.agent_store and env.restart_count > 0:
            store = _restart_store(env, timeout)
            dist.init_process_group(
                env.backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout, device_id=device_id
            )
        elif env.master_addr:  # srun without torchrun: no MASTER_* variables, the address comes from SLURM
            store = _joined_store(env, timeout_s)
            dist.init_process_group(
                env.backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout, device_id=device_id
            )
        else:
            dist.init_process_group(env.backend, timeout=timeout, device_id=device_id)
    except (RuntimeError, ValueError) as error:
        friendly = _user_error(error, env, timeout_s)
        if friendly is None:
            raise
        raise friendly from error


@contextlib.contextmanager
def session(env: DistEnv, timeout_s: float = 1800.0) -> Iterator[DistEnv]:
    """Run the body inside an initialised process group (DDP) or as is (single, DataParallel).

    ``timeout_s`` bounds every collective and the join; the group is destroyed on exit, also when
    the body raises, so a failing rank releases its sockets at once.
    """
    if not env.is_distributed:
        yield env
        return
    _init(env, timeout_s)
    try:
        yield env
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


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
