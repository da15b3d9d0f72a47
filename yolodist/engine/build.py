"""Construct everything a training run needs from a TrainConfig and a DistEnv.

Builders build; the trainer only runs what they return. Rank-dependent work goes through the
``distributed`` helpers: files shared by a node (the built-in dataset, label caches) are made by the local
main rank first, while the other ranks wait without holding a collective open.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolodist.checkpoint.state import TrainingState
from yolodist.checkpoint.weights import transfer_start_weights
from yolodist.config.io import load_hyp
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.data.dataset import YoloDataset
from yolodist.data.loader import build_loader
from yolodist.data.sampler import ShardedBatchSampler
from yolodist.data.spec import DataSpec, load_data_spec
from yolodist.distributed import collectives, parallel
from yolodist.distributed.env import DistEnv
from yolodist.distributed.scope import main_first
from yolodist.engine import autoanchor
from yolodist.engine.inputs import hsv_on_device
from yolodist.engine.loss import LossTerms, YoloLoss, reduce_loss
from yolodist.engine.optim import (
    accumulate_steps,
    build_optimizer,
    epoch_factor,
    lr_lambda,
    scaled_weight_decay,
    warmup_steps,
)
from yolodist.engine.precision import needs_scaler
from yolodist.errors import BadCheckpoint
from yolodist.eval.pipeline import build_val_loader
from yolodist.models import Model

LOGGER = logging.getLogger(__name__)


@dataclass
class DataParts:
    spec: DataSpec
    names: list[str]
    train_set: YoloDataset
    train_sampler: ShardedBatchSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None


@dataclass
class OptimParts:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    lr_fn: object
    accumulate: int
    scaler: torch.amp.GradScaler


def build_model(cfg: TrainConfig, hyp: Hyp, nc: int, names: list[str], start: TrainingState | None) -> Model:
    """The model from --cfg or the checkpoint's own cfg, with a --weights file's matching tensors transferred.

    A resumed run's weights are put back by ``checkpoint.restore.restore``, with the rest of its state.
    """
    model_cfg = cfg.cfg or (start.yaml if start is not None else None)
    if not model_cfg:
        raise BadCheckpoint(f"{cfg.weights} holds no model description; give --cfg as well")
    anchors = round(hyp.anchors) if hyp.anchors else None
    model = Model(model_cfg, ch=3, nc=nc, anchors=anchors)
    model.names = list(names)
    if start is not None and not cfg.resume:
        # Anchors given by a new cfg or by the hyperparameters replace the file's.
        exclude = ["anchor"] if cfg.cfg or hyp.anchors else []
        transfer_start_weights(model, start, cfg.weights, exclude=exclude)
    return model


def freeze_layers(model: nn.Module, freeze: tuple[int, ...]) -> None:
    """``--freeze 10`` freezes layers 0..9; ``--freeze 0 1 2`` freezes exactly those layers."""
    indices = range(freeze[0]) if len(freeze) == 1 else freeze
    prefixes = tuple(f"model.{i}." for i in indices)
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(prefixes) if prefixes else True
    if prefixes:
        LOGGER.info(f"Freezing layers {list(indices)}")


def check_anchors(model: Model, dataset: YoloDataset, hyp: Hyp, cfg: TrainConfig) -> None:
    """AutoAnchor. Every rank computes the same result from the same seed, so no rank waits on another."""
    detect = model.detect
    new = autoanchor.check_anchors(
        dataset.labels,
        dataset.shapes,
        detect.anchors.clone(),
        detect.stride,
        thr=hyp.anchor_t,
        img_size=cfg.imgsz,
        rng=np.random.default_rng(cfg.seed),
    )
    if new is not None:
        detect.anchors[:] = new.to(detect.anchors)


def load_spec(cfg: TrainConfig, env: DistEnv) -> tuple[DataSpec, list[str]]:
    """The dataset description and the class names training uses (one class with --single-cls)."""
    with main_first(env, local=True, name="dataset-yaml"):
        spec = load_data_spec(cfg.data)
    names = ["item"] if cfg.single_cls and len(spec.names) != 1 else list(spec.names)
    return spec, names


def build_data(cfg: TrainConfig, env: DistEnv, hyp: Hyp, stride: int, spec: DataSpec, names: list[str]) -> DataParts:
    """The training loader and, when the dataset has a val split, the loader each epoch validates on."""
    with main_first(env, local=True, name="train-labels"):
        train_set = YoloDataset(
            spec.train,
            cfg.imgsz,
            augment=True,
            hyp=hyp,
            rect=cfg.rect,
            batch_size=cfg.batch_size,
            stride=stride,
            single_cls=cfg.single_cls,
            cache_images=cfg.cache,
            seed=cfg.seed,
            nc=spec.nc,
            prefix="train: ",
            workers=cfg.workers,
            image_weights=cfg.image_weights,
            scaled_decode=cfg.scaled_decode,
            defer_hsv=hsv_on_device(cfg.hsv_jitter, env.device),
        )
    # One process per node decodes every image into the shared cache; the others map what it made.
    with main_first(env, local=True, name="train-images"):
        train_set.prepare_cache(build=env.is_local_main)
    sampler = ShardedBatchSampler(
        len(train_set),
        cfg.batch_size,
        rank=env.rank,
        world=env.world_size,
        seed=cfg.seed,
        shuffle=not cfg.rect,
    )
    train_loader = build_loader(train_set, sampler, workers=cfg.workers)
    val_loader = None
    if spec.val:
        val_loader = build_val_loader(cfg.val_config(), env, spec.val, stride, spec.nc, cache=cfg.cache, seed=cfg.seed)
    return DataParts(spec, names, train_set, sampler, train_loader, val_loader)


def build_optim(
    model: nn.Module, cfg: TrainConfig, hyp: Hyp, device: torch.device, autocast: torch.dtype | None = None
) -> OptimParts:
    accumulate = accumulate_steps(cfg.batch_size, nbs=cfg.nbs)
    decay = scaled_weight_decay(hyp.weight_decay, cfg.batch_size, accumulate, nbs=cfg.nbs)
    optimizer = build_optimizer(model, cfg.optimizer, hyp.lr0, hyp.momentum, decay)
    lr_fn = lr_lambda(cfg.epochs, hyp.lrf, cfg.cos_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=epoch_factor(lr_fn))
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler(autocast))
    return OptimParts(optimizer, scheduler, lr_fn, accumulate, scaler)


class LossFn:
    """The YOLOv5 loss bound to a model's head, plus the validation-loss view of it."""

    def __init__(self, model: Model, nc: int, hyp: Hyp, cfg: TrainConfig) -> None:
        hyp = hyp.replace(label_smoothing=cfg.label_smoothing) if cfg.label_smoothing else hyp
        self.loss = YoloLoss(model.detect.anchors, nc, hyp, img_size=cfg.imgsz)

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> LossTerms:
        return self.loss(preds, targets)

    @property
    def weights(self) -> torch.Tensor:
        return self.loss.weights

    def items(self, preds: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Per-component (box, obj, cls) loss of one batch, normalised by its own counts."""
        terms = self.loss(preds, targets)
        return reduce_loss(terms, terms.counts, self.loss.weights, batch_size=1)[1]


def load_hyp_for(cfg: TrainConfig) -> Hyp:
    return load_hyp(cfg.hyp)


def wrap_model(model: nn.Module, env: DistEnv, cfg: TrainConfig) -> nn.Module:
    return parallel.wrap(model, env, sync_bn=cfg.sync_bn)


def warmup_iterations(cfg: TrainConfig, hyp: Hyp, steps_per_epoch: int) -> int:
    """Warm-up length as upstream: warmup_epochs, at least min_warmup_iters, at most half the run."""
    iters = warmup_steps(hyp.warmup_epochs, steps_per_epoch, minimum=cfg.min_warmup_iters)
    return int(min(iters, math.ceil(cfg.epochs * steps_per_epoch / 2)))


def broadcast_run_dir(path: Path | None, env: DistEnv) -> Path:
    return Path(collectives.broadcast_object(str(path) if path else None, env))
