"""``main_first``: one rank (per node, or overall) does some work before the others start it.

The others wait by polling the rendezvous store, not in a collective: a slow first rank (a large
label cache, generating the built-in dataset) must never trip the process-group timeout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from yolodist.dist.env import DistEnv
from yolodist.errors import DistFailure

POLL_S = 0.2
WAIT_LIMIT_S = 24 * 3600.0
_counters: dict[str, int] = {}


def _store():
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


@contextlib.contextmanager
def main_first(env: DistEnv, local: bool = True, name: str = "work") -> Iterator[None]:
    """The local (or global) main rank runs the body first; the other ranks then run it too."""
    if not env.is_distributed:
        yield
        return
    _counters[name] = _counters.get(name, 0) + 1
    scope = f"node{env.node_rank}" if local else "global"
    key = f"yolodist/main_first/{scope}/{name}/{_counters[name]}"
    first = env.is_local_main if local else env.is_main
    store = _store()
    if first:
        try:
            yield
        except BaseException:
            store.set(key, "failed")
            raise
        store.set(key, "done")
        return
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not store.check([key]):
        if time.monotonic() > deadline:
            raise DistFailure(f"gave up waiting for the main rank to finish {name!r}")
        time.sleep(POLL_S)
    if store.get(key) == b"failed":
        raise DistFailure(f"the main rank failed while preparing {name!r}; see its error above")
    yield
