"""The process group's lifetime: initialise it for DDP, turn launch failures into user errors, tear it down."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator

import torch.distributed as dist

from yolodist.distributed.env import DistEnv
from yolodist.errors import DistFailure, PortBusy, UserError

LOGGER = logging.getLogger(__name__)


ROUND_ENTRY = "yolodist/round"  # rank 0's "round port nonce" for the ranks of its round
ROUNDS = "yolodist/rounds"  # the latest round rank 0 opened


def _round_store(env: DistEnv, timeout: datetime.timedelta) -> tuple[dist.Store, int]:
    """The agent's store seen through a prefix that every rank of this round agrees on, and the
    number of earlier rounds of this launch (RELIABILITY.md finding 2).

    torchrun keeps one store for every round of a launch, so a restarted rank could read the previous
    round's gloo addresses; a per-round prefix keeps the rounds apart. The round cannot be taken from
    TORCHELASTIC_RESTART_COUNT: each launcher counts only the restarts it caused, so after a rank dies
    under c10d rendezvous the other launcher, restarted for a membership change, still says 0 and its
    ranks would wait under another prefix for ever. Rank 0 opens the round instead: it publishes the
    round's number with the port of a small store of its own and a nonce read from it. A rank takes an
    entry only when that store answers with the nonce (a stale entry names a rank 0 that is gone), and
    only when it is newer than its own launcher's count (under static rendezvous the previous round's
    rank 0 may still be alive while this launcher has already restarted).
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        raise DistFailure("MASTER_ADDR/MASTER_PORT are not set; launch with python -m torch.distributed.run")
    base = dist.TCPStore(addr, int(port), env.world_size, is_master=False, timeout=timeout)
    if env.is_main:
        latest = int(base.get(ROUNDS)) if base.check([ROUNDS]) else 0
        round_ = max(latest + 1, env.restart_count + 1)
        witness = dist.TCPStore(addr, 0, env.world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        nonce = secrets.token_hex(8)
        witness.set(NONCE, nonce)
        _WITNESSES.append(witness)  # answers the other ranks until the session ends
        base.set(ROUNDS, str(round_))
        base.set(ROUND_ENTRY, f"{round_} {witness.port} {nonce}")
    else:
        round_ = _joined_round(base, addr, env, timeout.total_seconds())
    if round_ > 1:
        LOGGER.info("round %d of this launch: rendezvous keys kept under round%d/", round_, round_)
    return dist.PrefixStore(f"round{round_}", base), round_ - 1


NONCE = "yolodist/nonce"
_WITNESSES: list[dist.Store] = []


def _joined_round(base: dist.Store, addr: str, env: DistEnv, timeout_s: float) -> int:
    """The round that rank 0 opened for this launch's current processes (see _round_store)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if base.check([ROUND_ENTRY]):
            round_, port, nonce = base.get(ROUND_ENTRY).decode().split()
            if int(round_) > env.restart_count and _answers(addr, int(port), nonce, env.world_size):
                return int(round_)
        time.sleep(0.2)
    raise DistFailure(
        f"rank {env.rank}: rank 0 of this round did not open it within {timeout_s:g} s (--dist-timeout); "
        "its process did not start or failed first: see the launcher's log"
    )


def _answers(addr: str, port: int, nonce: str, world_size: int) -> bool:
    # A plain connect first: a refused TCPStore client would log a screen of C++ errors for every try.
    try:
        socket.create_connection((addr, port), timeout=2).close()
    except OSError:
        return False
    try:
        probe = dist.TCPStore(addr, port, world_size, is_master=False, timeout=datetime.timedelta(seconds=2))
        return probe.get(NONCE).decode() == nonce
    except (RuntimeError, ValueError):  # refused or reset: the rank 0 of an earlier round, now gone
        return False


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


def _init(env: DistEnv, timeout_s: float) -> int:
    """Initialise the process group; the number of earlier rounds of this launch, as every rank agrees."""
    # Imported after the group exists, torch._dynamo (torchvision imports it) holds references to the
    # default group that destroy_process_group cannot drop; the group then outlives session() and its
    # gloo threads are torn down during interpreter finalisation, which sometimes aborts the rank
    # ("terminate called without an active exception"). Imported before, it holds none.
    import torch._dynamo

    timeout = datetime.timedelta(seconds=timeout_s)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    device_id = env.device if env.backend == "nccl" else None
    restarts = env.restart_count
    try:
        if env.agent_store:
            store, restarts = _round_store(env, timeout)
        elif env.master_addr:  # srun without torchrun: no MASTER_* variables, the address comes from SLURM
            store = _joined_store(env, timeout_s)
        else:
            store = None  # torch's env:// rendezvous, rank 0 hosts a new store for each round
        dist.init_process_group(
            env.backend, store=store, rank=env.rank if store else -1, world_size=env.world_size if store else -1,
            timeout=timeout, device_id=device_id,
        )  # fmt: skip
    except (RuntimeError, ValueError) as error:
        friendly = _user_error(error, env, timeout_s)
        if friendly is None:
            raise
        raise friendly from error
    # Launchers that do not share their store still count their restarts apart: any rank's count says
    # that this is a restarted round.
    agreed = torch.tensor([restarts], device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return int(agreed.item())


@contextlib.contextmanager
def session(env: DistEnv, timeout_s: float = 1800.0) -> Iterator[DistEnv]:
    """Run the body inside an initialised process group (DDP) or as is (single, DataParallel).

    Yields ``env`` with the restart round every rank agrees on. ``timeout_s`` bounds every collective
    and the join; the group is destroyed on exit, also when the body raises, so a failing rank releases
    its sockets at once.
    """
    if not env.is_distributed:
        yield env
        return
    restarts = _init(env, timeout_s)
    try:
        yield dataclasses.replace(env, restart_count=restarts)
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        _WITNESSES.clear()
