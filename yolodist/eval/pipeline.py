"""The validation pipeline training and val.py share: the sharded loader, then validating with plots.

Training validates its EMA model with ``run_val`` on ``build_val_loader``'s loader each epoch; val.py
validates a loaded checkpoint or exported model the same way, so both read the same batches, use the
same thresholds and draw the same plots. What each reports (results.csv, or the table, speed and saved
labels) stays with its caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from yolodist.config.schema import ValConfig
from yolodist.data.dataset import YoloDataset
from yolodist.data.loader import build_loader
from yolodist.data.sampler import ShardedBatchSampler
from yolodist.distributed.env import DistEnv
from yolodist.distributed.scope import main_first
from yolodist.eval import visuals
from yolodist.eval.validator import ValResult, ValSettings, validate


def rank_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of a validation batch, rounded up: every rank must get the same share."""
    return -(-batch_size // world_size)


def build_val_loader(
    cfg: ValConfig,
    env: DistEnv,
    split: list[Path],
    stride: int,
    nc: int,
    *,
    rect: bool = True,
    cache: str | None = None,
    seed: int = 0,
) -> DataLoader:
    """This rank's shard of ``split`` in letterboxed batches, sorted by aspect ratio unless not ``rect``.

    ``cache`` ('ram' or 'disk') keeps the decoded images, made by one process per node.
    """
    batch = rank_batch(cfg.batch_size, env.world_size) * env.world_size
    with main_first(env, local=True, name="val-labels"):
        dataset = YoloDataset(
            split,
            cfg.imgsz,
            augment=False,
            rect=rect,
            batch_size=batch,
            stride=stride,
            pad=0.5,
            single_cls=cfg.single_cls,
            cache_images=cache,
            seed=seed,
            nc=nc,
            prefix=f"{cfg.task}: ",
            workers=cfg.workers,
        )
    if cache is not None:  # without a cache there is nothing for the other ranks to wait for
        with main_first(env, local=True, name="val-images"):
            dataset.prepare_cache(build=env.is_local_main)
    sampler = ShardedBatchSampler(len(dataset), batch, rank=env.rank, world=env.world_size, seed=seed, shuffle=False)
    return build_loader(dataset, sampler, workers=cfg.workers)


def run_val(
    cfg: ValConfig,
    env: DistEnv,
    model: Callable[[torch.Tensor], object],
    batches: Iterable,
    names: list[str],
    save_dir: Path,
    loss_fn: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
    report: Callable[[ValResult], None] | None = None,
) -> ValResult:
    """Validate ``model`` on every rank (each its shard of ``batches``); rank 0 reports, then plots.

    ``model`` is a module or an exported-model backend (see ``validator.validate``). ``report`` sees
    rank 0's result before the plots are drawn, so the table is on screen while they are.
    """
    plots = cfg.plots and env.is_main
    settings = ValSettings(cfg.conf_thres, cfg.iou_thres, cfg.max_det, cfg.single_cls, cfg.half)
    on_batch = visuals.batch_plotter(save_dir, names) if plots else None
    result = validate(model, batches, env, names, settings, loss_fn=loss_fn, on_batch=on_batch, device=env.device)
    if env.is_main and report is not None:
        report(result)
    if plots:
        visuals.plot_validation(result, names, save_dir)
    return result
