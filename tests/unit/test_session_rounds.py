"""How the ranks of a restarted round agree on it without trusting the launchers' restart counts.

A real agent store (a TCPStore this test hosts) holds the entries; rank 0's witness store is opened,
closed and reopened as the processes of successive rounds would.
"""

from __future__ import annotations

import datetime
import threading

import pytest
import torch.distributed as dist

from yolodist.distributed import session
from yolodist.distributed.env import DistEnv
from yolodist.errors import DistFailure

TIMEOUT = datetime.timedelta(seconds=10)


@pytest.fixture
def agent_store(monkeypatch):
    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    yield store
    session._WITNESSES.clear()


def rank(r: int, launcher_count: int) -> DistEnv:
    return DistEnv(rank=r, world_size=2, mode="ddp", backend="gloo", restart_count=launcher_count, agent_store=True)


def open_round(launcher_count: int) -> tuple[dist.Store, int]:
    return session._round_store(rank(0, launcher_count), TIMEOUT)


def join_round(launcher_count: int, timeout: datetime.timedelta = TIMEOUT) -> tuple[dist.Store, int]:
    return session._round_store(rank(1, launcher_count), timeout)


def test_first_round_shares_one_prefix(agent_store):
    store0, restarts0 = open_round(0)
    store1, restarts1 = join_round(0)
    store0.set("k", "from rank 0")
    assert store1.get("k") == b"from rank 0" and restarts0 == restarts1 == 0
    assert not agent_store.check(["k"])  # kept under the round's prefix


def test_launchers_that_disagree_on_the_count_still_meet(agent_store):
    # Round 0, then rank 1's launcher counts the restart (1) while rank 0's, restarted for a membership
    # change, still says 0: both must land on round 2 (one earlier round), not on prefixes 0 and 1.
    open_round(0)
    join_round(0)
    session._WITNESSES.clear()  # round 0's rank 0 is gone, its witness with it
    store0, restarts0 = open_round(0)
    store1, restarts1 = join_round(1)
    assert restarts0 == restarts1 == 1
    store1.set("hello", "1")
    assert store0.get("hello") == b"1"


def test_a_stale_entry_is_not_taken(agent_store):
    # Rank 1 of a new round starts before the new rank 0: the entry still names the old rank 0's
    # witness, which is gone. It must wait for the new entry, not join the old prefix.
    open_round(0)
    session._WITNESSES.clear()
    joined: list = []
    waiter = threading.Thread(target=lambda: joined.append(join_round(0)))
    waiter.start()
    waiter.join(1.5)
    assert waiter.is_alive() and not joined  # the old entry was refused
    store0, restarts0 = open_round(0)
    waiter.join(10)
    store1, restarts1 = joined[0]
    assert restarts0 == restarts1 == 1
    store0.set("x", "y")
    assert store1.get("x") == b"y"


def test_an_entry_older_than_the_launchers_own_count_is_not_taken(agent_store):
    # Static rendezvous: this launcher restarted (count 1) while the old rank 0 still lives and answers.
    open_round(0)
    with pytest.raises(DistFailure, match="rank 0 of this round did not open it within 1 s"):
        join_round(1, datetime.timedelta(seconds=1))


def test_a_witness_that_answers_with_another_nonce_is_not_taken(agent_store):
    open_round(0)
    agent_store.set(session.ROUND_ENTRY, agent_store.get(session.ROUND_ENTRY).decode()[:-1] + "x")
    with pytest.raises(DistFailure):
        join_round(0, datetime.timedelta(seconds=1))
