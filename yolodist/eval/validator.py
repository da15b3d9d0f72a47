"""Validation: run the model on this rank's shard, gather per-image statistics, compute metrics.

Every rank validates its own shard of the validation set; the per-image statistics are gathered to
rank 0, de-duplicated by image (the last batch is padded by repeating images) and turned into
metrics there. With one process this is ordinary validation. The result is identical either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from yolodist.distributed import collectives
from yolodist.distributed.env import DistEnv
from yolodist.eval.metrics import APResult, Metrics, ap_per_class, fitness, match_predictions
from yolodist.ops.boxes import scale_boxes, xywh2xyxy
from yolodist.ops.nms import non_max_suppression

LOGGER = logging.getLogger(__name__)
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)


@dataclass
class ImageRecord:
    """One validation image in its original pixels: what was predicted and what was labelled."""

    shape: tuple[int, int]  # (h0, w0)
    pred: torch.Tensor  # [n, 6] xyxy, conf, cls
    labels: torch.Tensor  # [m, 5] cls, xyxy
    correct: torch.Tensor  # [n, 10] bool, true positive at each IoU threshold


@dataclass
class ValResult:
    """Overall and per-class validation metrics (P, R, mAP@0.5, mAP@0.5:0.95) and mean losses."""

    precision: float = 0.0
    recall: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    losses: tuple[float, float, float] = (0.0, 0.0, 0.0)
    images: int = 0
    instances: int = 0
    per_class: list[dict] = field(default_factory=list)
    maps: np.ndarray | None = None  # mAP@0.5:0.95 per class index (overall mAP for absent classes)
    speed_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # pre-process, inference, NMS per image
    records: dict[str, ImageRecord] = field(default_factory=dict)  # by image path (rank 0 only)
    ap: APResult | None = None  # curves for the plots

    @property
    def fitness(self) -> float:
        return float(fitness(np.array([self.precision, self.recall, self.map50, self.map])))


@dataclass(frozen=True)
class ValSettings:
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    single_cls: bool = False
    half: bool = False


def _image_record(
    pred: torch.Tensor, labels: torch.Tensor, img_shape: tuple[int, int], shape_info: tuple
) -> ImageRecord:
    """Predictions and labels of one image in its original pixels, with the true-positive flags.

    ``pred`` is [n, 6] in network-input pixels; ``labels`` [m, 5] (cls, cx, cy, w, h) normalised to
    the network input of ``img_shape`` (h, w).
    """
    (h0, w0), ratio_pad = shape_info
    height, width = img_shape
    pred_native = pred.clone()
    scale_boxes((height, width), pred_native[:, :4], (h0, w0), ratio_pad)
    boxes = xywh2xyxy(labels[:, 1:5]) * torch.tensor([width, height, width, height], dtype=labels.dtype)
    scale_boxes((height, width), boxes, (h0, w0), ratio_pad)
    native_labels = torch.cat([labels[:, :1], boxes], 1)
    correct = match_predictions(pred_native, native_labels, IOU_THRESHOLDS)
    return ImageRecord((int(h0), int(w0)), pred_native, native_labels, correct)


def _forward(
    model: Callable[[torch.Tensor], object], imgs: torch.Tensor, want_raw: bool
) -> tuple[torch.Tensor, list | None]:
    """(decoded, raw maps or None): a module returns both in eval mode, a backend only decoded."""
    out = model(imgs)
    if isinstance(out, tuple):
        return out[0], (out[1] if want_raw else None)
    return out, None


def _memory_format(model: nn.Module) -> torch.memory_format:
    """The layout of the model's first convolution: a channels-last model gets channels-last batches."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    if weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@dataclass
class _Shard:
    """What one rank's validation gathered: its images' records, summed losses, batch count, timings."""

    records: dict[str, ImageRecord]
    loss_sum: torch.Tensor
    batches: int = 0
    times: np.ndarray = field(default_factory=lambda: np.zeros(3))  # pre-process, inference, NMS seconds


@torch.no_grad()
def validate(
    model: Callable[[torch.Tensor], object],
    loader: Iterable,
    env: DistEnv,
    names: list[str],
    settings: ValSettings = ValSettings(),
    loss_fn: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor, list[str], list[torch.Tensor]], None] | None = None,
    device: torch.device | None = None,
) -> ValResult:
    """Validate ``model`` on this rank's shard of ``loader``.

    ``model`` is an ``nn.Module`` returning ``(decoded, raw)`` in eval mode, or any callable returning
    decoded predictions (an exported-model backend; then give ``device``). ``loss_fn(raw_maps,
    targets) -> Tensor[3]`` (box, obj, cls), when given, adds validation losses. ``on_batch(i, imgs,
    targets, paths, preds)`` sees each batch after NMS (for plots). Every rank must call this (it
    gathers); only rank 0's result holds the metrics.
    """
    is_module = isinstance(model, nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
        device = next(model.parameters()).device
    shard = _validate_shard(model, loader, device or torch.device("cpu"), settings, loss_fn, on_batch)
    if is_module:
        model.train(was_training)
    return _merge(shard, env, names)


def _validate_shard(
    model: Callable[[torch.Tensor], object],
    loader: Iterable,
    device: torch.device,
    settings: ValSettings,
    loss_fn: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor] | None,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor, list[str], list[torch.Tensor]], None] | None,
) -> _Shard:
    """Run the model over this rank's batches and record each image; nothing is gathered yet."""
    is_module = isinstance(model, nn.Module)
    dtype = torch.float16 if settings.half and device.type == "cuda" and is_module else torch.float32
    layout = _memory_format(model) if is_module else torch.contiguous_format
    shard = _Shard(records={}, loss_sum=torch.zeros(3, device=device))
    for batch_index, (imgs, targets, paths, shapes, _) in enumerate(loader):
        t0 = time.perf_counter()
        imgs = (imgs.to(device, non_blocking=True).to(dtype) / 255).contiguous(memory_format=layout)
        targets = targets.to(device)
        t1 = time.perf_counter()
        decoded, raw = _forward(model, imgs, loss_fn is not None)
        t2 = time.perf_counter()
        if loss_fn is not None and raw is not None:
            shard.loss_sum += loss_fn([r.float() for r in raw], targets)
        shard.batches += 1
        preds = non_max_suppression(
            decoded.float(),
            settings.conf_thres,
            settings.iou_thres,
            multi_label=True,
            agnostic=settings.single_cls,
            max_det=settings.max_det,
        )
        t3 = time.perf_counter()
        shard.times += (t1 - t0, t2 - t1, t3 - t2)
        targets = targets.cpu()
        for i, pred in enumerate(preds):
            if settings.single_cls:
                pred[:, 5] = 0
            labels = targets[targets[:, 0] == i, 1:]
            shard.records[paths[i]] = _image_record(pred.cpu(), labels, imgs.shape[2:], shapes[i])
        if on_batch is not None:
            on_batch(batch_index, imgs, targets, list(paths), preds)
    return shard


def _merge(shard: _Shard, env: DistEnv, names: list[str]) -> ValResult:
    """Gather every rank's shard to rank 0 and compute the metrics there; other ranks get an empty result."""
    gathered = collectives.all_gather_object((shard.records, shard.loss_sum.cpu(), shard.batches, shard.times), env)
    if not env.is_main:
        return ValResult()
    merged: dict[str, ImageRecord] = {}
    for rank_records, *_ in gathered:
        merged.update(rank_records)  # padded repeats of the same image collapse here
    total_batches = sum(g[2] for g in gathered)
    losses = sum(g[1] for g in gathered) / max(total_batches, 1)
    speed = sum(g[3] for g in gathered) / max(len(merged), 1) * 1e3
    result = metrics_from_records(merged, names)
    result.losses, result.speed_ms = tuple(losses.tolist()), tuple(speed.tolist())
    return result


def metrics_from_records(records: dict[str, ImageRecord], names: list[str]) -> ValResult:
    """P, R, mAP@0.5 and mAP@0.5:0.95, overall and per class, from per-image records."""
    nc = len(names)
    result = ValResult(images=len(records), maps=np.zeros(nc), records=records)
    if not records:
        return result
    values = list(records.values())
    correct = torch.cat([r.correct for r in values]).numpy()
    conf = torch.cat([r.pred[:, 4] for r in values]).numpy()
    pred_cls = torch.cat([r.pred[:, 5] for r in values]).numpy()
    target_cls = torch.cat([r.labels[:, 0] for r in values]).numpy()
    result.instances = int(target_cls.shape[0])
    if not correct.shape[0] or not correct.any():
        return result
    ap = ap_per_class(correct, conf, pred_cls, target_cls)
    result.ap = ap
    summary = Metrics(ap)
    result.precision, result.recall, result.map50, result.map = summary.mean_results()
    result.maps = summary.maps(nc)
    ap50, ap_all = ap.ap[:, 0], ap.ap.mean(1)
    counts = np.bincount(target_cls.astype(int), minlength=nc)
    for k, c in enumerate(ap.classes.astype(int)):
        result.per_class.append(
            {
                "name": names[c] if c < nc else str(c),
                "instances": int(counts[c]),
                "precision": float(ap.p[k]),
                "recall": float(ap.r[k]),
                "map50": float(ap50[k]),
                "map": float(ap_all[k]),
            }
        )
    return result


def format_table(result: ValResult, per_class: bool) -> str:
    """The metrics table as upstream prints it."""
    header = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    row = "%22s" + "%11i" * 2 + "%11.3g" * 4
    lines = [
        header,
        row % ("all", result.images, result.instances, result.precision, result.recall, result.map50, result.map),
    ]
    if per_class:
        for c in result.per_class:
            lines.append(
                row
                % (
                    c["name"],
                    result.images,
                    c["instances"],
                    c["precision"],
                    c["recall"],
                    c["map50"],
                    c["map"],
                )
            )
    return "\n".join(lines)
