"""``main_first``: one rank (per node, or overall) does some work before the others start it.

The others wait by polling a key in the process group's store, not in a collective: a slow first
rank (a large label cache, generating the built-in dataset) must never trip the process-group
timeout (RELIABILITY.md finding 4 and test F4; cf. yolov5#7481). If the first rank fails inside
the body it says so through the store, and the others raise instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from yolodist.distributed.env import DistEnv
from yolodist.errors import DistFailure

LOGGER = logging.getLogger(__name__)
POLL_S = 0.2
WAIT_LIMIT_S = 24 * 3600.0
# A file written by the first rank can take a while to show on a network filesystem's other clients.
PATH_GRACE_S = 60.0
DONE, FAILED = b"done", b"failed"
# Entries per (scope, name); every rank enters the same scopes in the same order, so the counts agree.
_entries: dict[str, int] = {}


def _store() -> dist.Store:
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def _wait_for(store: dist.Store, key: str, name: str) -> bytes:
    """Poll ``key`` until it is set; store errors (the master's launcher is gone) become DistFailure."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    try:
        while not store.check([key]):
            if time.monotonic() > deadline:
                raise DistFailure(f"gave up after {WAIT_LIMIT_S:g} s waiting for the main rank to finish {name!r}")
            time.sleep(POLL_S)
        return store.get(key)
    except (RuntimeError, OSError) as error:
        raise DistFailure(
            f"lost the main rank while it was preparing {name!r} ({error}); see its error above"
        ) from None


def _wait_for_path(path: Path, name: str) -> None:
    deadline = time.monotonic() + PATH_GRACE_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise DistFailure(
                f"the main rank finished {name!r} but {path} is not visible here after {PATH_GRACE_S:g} s; "
                "use a directory every node can read"
            )
        time.sleep(POLL_S)


@contextlib.contextmanager
def main_first(
    env: DistEnv, local: bool = True, *, name: str = "work", poll_path: Path | None = None
) -> Iterator[None]:
    """The local (or, with ``local=False``, global) main rank runs the body first; the others then run it.

    ``name`` labels the work in the store key and in messages. ``poll_path``, when given, is a file
    the body creates: the other ranks also wait until it is visible to them before starting.
    An identity when not distributed.
    """
    if not env.is_distributed:
        yield
        return
    scope = f"node{env.node_rank}" if local else "global"
    slot = f"{scope}/{name}"
    _entries[slot] = _entries.get(slot, 0) + 1
    key = f"yolodist/main_first/{slot}/{_entries[slot]}"
    first = env.is_local_main if local else env.is_main
    store = _store()
    if first:
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                store.set(key, FAILED)
            raise
        store.set(key, DONE)
        return
    LOGGER.debug("rank %d waits for %s main rank to finish %r", env.rank, "the local" if local else "the", name)
    if _wait_for(store, key, name) != DONE:
        raise DistFailure(f"the main rank failed while preparing {name!r}; see its error above")
    if poll_path is not None:
        _wait_for_path(Path(poll_path), name)
    yield
