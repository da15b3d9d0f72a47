"""Entry into a training run: read the launch topology, check the flags against it, run the recipe."""

from __future__ import annotations

from collections.abc import Callable

from yolodist.config.schema import TrainConfig
from yolodist.dist import env as dist_env
from yolodist.dist.env import DistEnv
from yolodist.dist.parallel import check_sync_bn
from yolodist.dist.session import session
from yolodist.engine.trainer import fit
from yolodist.utils.log import setup_logging


def train(cfg: TrainConfig, body: Callable[[TrainConfig, DistEnv], object] = fit) -> int:
    """Run ``body`` (one training, or an evolution of many) inside this launch's process group."""
    env = dist_env.detect(cfg.device, cfg.local_rank)
    setup_logging(env.rank)
    cfg.check_world(env.world_size)
    check_sync_bn(env, cfg.sync_bn)
    with session(env, cfg.dist_timeout) as joined:
        body(cfg, joined)
    return 0
