"""The process group's lifetime: initialise it for DDP, turn launch failures into user errors, tear it down."""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist

from yolodist.dist.env import DistEnv
from yolodist.errors import DistFailure, PortBusy

LOGGER = logging.getLogger(__name__)


def _init(env: DistEnv, timeout_s: float) -> None:
    timeout = datetime.timedelta(seconds=timeout_s)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    try:
        dist.init_process_group(
            backend=env.backend,
            timeout=timeout,
            device_id=env.device if env.device.type == "cuda" else None,
        )
    except RuntimeError as e:
        text = str(e)
        if "EADDRINUSE" in text or "address already in use" in text.lower():
            raise PortBusy(
                "the master port is already in use (another training probably holds it); "
                "rerun with --master_port set to a free port"
            ) from None
        if "timed out" in text.lower() or "timeout" in text.lower():
            raise DistFailure(
                f"not all {env.world_size} processes joined within {timeout_s:.0f} s; check that every node "
                "was started with the same --nnodes, --master_addr and --master_port"
            ) from None
        raise


@contextlib.contextmanager
def session(env: DistEnv, timeout_s: float = 1800.0) -> Iterator[DistEnv]:
    """Run the body inside an initialised process group (DDP) or as is (single, DataParallel)."""
    if not env.is_distributed:
        yield env
        return
    _init(env, timeout_s)
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
