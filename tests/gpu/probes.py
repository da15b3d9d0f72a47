"""What the CUDA checks measure, kept device-agnostic so that the CPU suite runs the same code.

tests/gpu/test_cuda.py calls these on a GPU; tests/unit/test_gpu_probes.py calls them on the CPU
(float16 autocast exists there too), so a harness mistake shows up without a GPU, and the
tolerances below are backed by a measurement that anyone can repeat.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from yolodist.config.schema import Hyp, TrainConfig
from yolodist.distributed import syncbn
from yolodist.distributed.env import DistEnv
from yolodist.engine import build, precision
from yolodist.engine.epoch import ends_window, warmup_accumulation
from yolodist.engine.loss import YoloLoss
from yolodist.engine.optim import accumulate_steps
from yolodist.engine.step import StepContext, train_step

# AMP against float32 on one batch: YOLOv5n from scratch, 8 shapes images at 128 px. Measured with
# float16 autocast on a CPU (the same ops in float16 as on CUDA, though not cuDNN's kernels), over
# the eight initialisations (seeds 0, 1, 4-9) whose float16 gradients stayed finite at 2**16:
#   loss terms          max relative difference 2e-4 .. 1.4e-3 (float16 keeps 11 significant bits)
#   all gradients       relative error 0.10 .. 0.34, cosine 0.995 .. 0.939
#   worst parameter     cosine 0.986 .. 0.898 (always a BatchNorm weight or bias)
# That is far more than float16's 5e-4 because this network is badly conditioned, not because of
# AMP: in float32, merely rounding the input images to float16 moves the gradients by 0.03 .. 0.21.
# The next 8 images move them by 1.10 .. 1.35 (cosine about 0): the gap the check must be able to see.
# Tolerances sit outside the worst measured value; they catch what breaks AMP (gradients not or twice
# unscaled, a factor of 2, a parameter whose gradient is lost or garbled, another batch), not a
# small loss of precision. seed 0, the one the tests use, measured 4e-4, 0.10 (cosine 0.995), 0.986.
AMP_SEED = 0
AMP_LOSS_RTOL = 5e-3
AMP_GRAD_RTOL = 0.5
AMP_GRAD_COS = 0.9
AMP_PARAM_COS = 0.8
AMP_OTHER_BATCH_MIN = 0.9
# Seeds 2, 3 and 6 overflowed on the CPU: inf in the first convolution's weight gradient, whose true
# largest value (0.90 and 0.69 for seeds 2 and 3) is 59,000 and 45,000 after scaling by 2**16, near
# float16's largest, 65504 (the CPU kernel's float16 partial sums overflow first). The scaler would
# skip that first update. Seed 0's largest is 0.73 (47,700 scaled) and stayed finite on the CPU; on
# CUDA, whose convolutions accumulate in float32 and round once, it must too.


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 convolutions and matrix products without TF32, which rounds as coarsely as float16."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def shapes_batch(data_yaml: Path, split: str, start: int, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``start .. start + count`` of a shapes split resized to ``size`` square (0-1 RGB), and
    their labels as training targets ``[image, class, cx, cy, w, h]`` (normalised, so resizing keeps them)."""
    import cv2
    import numpy as np

    root = data_yaml.parent
    files = sorted((root / "images" / split).iterdir())[start : start + count]
    assert len(files) == count, f"{split} has fewer than {start + count} images"
    imgs = [cv2.resize(cv2.imread(str(f))[..., ::-1], (size, size)) for f in files]
    rows = []
    for i, f in enumerate(files):
        for line in (root / "labels" / split / f"{f.stem}.txt").read_text().splitlines():
            if line.strip():
                rows.append([float(i), *map(float, line.split())])
    batch = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    return batch, torch.tensor(rows, dtype=torch.float32).view(-1, 6)


@dataclass
class StepGradients:
    items: torch.Tensor  # the (box, obj, cls) loss terms the step reports, float64 on the CPU
    grads: list[torch.Tensor]  # every parameter's gradient, unscaled, float64 on the CPU


def step_gradients(
    model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor, autocast: torch.dtype | None
) -> StepGradients:
    """One micro-batch of the trainer's own step on a copy of ``model`` (on its device), no update.

    The GradScaler is the trainer's (enabled for float16, at its default initial scale 2**16), and
    the gradients are read after ``unscale_``, as the update would see them. Tensors are
    channels-last, as the trainer makes them by default (cuDNN picks other kernels for that layout).
    """
    layout = precision.memory_format(channels_last=True)
    net = copy.deepcopy(model).train().to(memory_format=layout)
    device = next(net.parameters()).device
    imgs = imgs.to(device).contiguous(memory_format=layout)
    loss = YoloLoss(net.detect.anchors, net.detect.nc, Hyp(), img_size=imgs.shape[-1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler(autocast))
    env = DistEnv(device=device, devices=(device,))
    ctx = StepContext(net, net, loss, optimizer, scaler, None, env, imgs.shape[0], autocast=autocast)
    items = train_step(ctx, imgs, targets.to(device), update=False).items
    scaler.unscale_(optimizer)
    grads = [torch.zeros(p.shape) if p.grad is None else p.grad for p in net.parameters()]
    return StepGradients(items.detach().double().cpu(), [g.detach().double().cpu() for g in grads])


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """``|got - want| / |want|`` over all parameters' gradients at once."""
    a, b = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    return ((a - b).norm() / b.norm()).item()


@dataclass
class AmpFigures:
    loss_rel: float  # max relative difference of the three loss terms
    grad_rel: float  # relative error of all gradients together
    grad_cos: float  # cosine similarity of all gradients together
    param_cos_min: float  # the worst parameter's cosine similarity
    worst_param: str
    rounding_rel: float  # float32 itself, images rounded to float16
    other_batch_rel: float  # float32 itself, other images
    finite: bool  # no inf/NaN in AMP's gradients at the initial scale: the scaler would not skip

    def as_dict(self) -> dict:
        return asdict(self)


Batch = tuple[torch.Tensor, torch.Tensor]


def amp_figures(model: nn.Module, batch: Batch, other_batch: Batch, dtype: torch.dtype = torch.float16) -> AmpFigures:
    """The trainer's step under ``dtype`` autocast against float32, on the same batch and weights."""
    imgs, targets = batch
    with full_float32():
        want = step_gradients(model, imgs, targets, None)
        rounded = step_gradients(model, imgs.to(dtype).float(), targets, None)
        other = step_gradients(model, *other_batch, None)
    got = step_gradients(model, imgs, targets, dtype)
    names = [name for name, _ in model.named_parameters()]
    cosines = {
        name: nn.functional.cosine_similarity(g.flatten(), w.flatten(), dim=0).item()
        for name, g, w in zip(names, got.grads, want.grads, strict=True)
        if w.norm() > 0
    }
    worst = min(cosines, key=cosines.__getitem__)
    flat_got, flat_want = torch.cat([g.flatten() for g in got.grads]), torch.cat([w.flatten() for w in want.grads])
    return AmpFigures(
        loss_rel=((got.items - want.items).abs() / want.items.abs()).max().item(),
        grad_rel=relative_error(got.grads, want.grads),
        grad_cos=nn.functional.cosine_similarity(flat_got, flat_want, dim=0).item(),
        param_cos_min=cosines[worst],
        worst_param=worst,
        rounding_rel=relative_error(rounded.grads, want.grads),
        other_batch_rel=relative_error(other.grads, want.grads),
        finite=bool(torch.isfinite(flat_got).all()),
    )


def check_amp(f: AmpFigures) -> None:
    """The tolerances above; each assertion names the figures."""
    assert f.finite, f  # an overflow at the initial scale would make the scaler skip the update
    assert f.other_batch_rel > AMP_OTHER_BATCH_MIN, f  # the comparison can tell gradients apart
    assert f.loss_rel < AMP_LOSS_RTOL, f
    assert f.grad_rel < AMP_GRAD_RTOL and f.grad_cos > AMP_GRAD_COS, f
    assert f.param_cos_min > AMP_PARAM_COS, f


def scheduled_updates(cfg: TrainConfig, hyp: Hyp, steps_per_epoch: int) -> int:
    """How many optimiser updates a run of ``cfg`` schedules, walking its batches as the trainer does.

    Warm-up accumulates fewer batches per update, and each epoch's last batch always updates
    (engine.epoch.ends_window), so the count is not simply batches / accumulate.
    """
    warmup_iters = build.warmup_iterations(cfg, hyp, steps_per_epoch)
    accumulate = accumulate_steps(cfg.batch_size, nbs=cfg.nbs)
    updates = 0
    for epoch in range(cfg.epochs):
        last_update = -1
        for i in range(steps_per_epoch):
            global_step = i + steps_per_epoch * epoch
            window = accumulate
            if global_step <= warmup_iters:  # as engine.epoch.apply_warmup
                window = warmup_accumulation(global_step, warmup_iters, accumulate)
            if ends_window(i, last_update, window, steps_per_epoch):
                updates, last_update = updates + 1, i
    return updates


EPOCH_LINE = re.compile(r"epoch \d+: (\d+) images in")


def steps_per_epoch(log: str, batch_size: int) -> int:
    """Batches per epoch, from the trainer's "epoch N: M images in ..." lines (M = batches x total batch)."""
    images = {int(n) for n in EPOCH_LINE.findall(log)}
    assert len(images) == 1, f"expected one image count per epoch in the log, found {sorted(images)}"
    return images.pop() // batch_size


def run_config(ckpt: dict) -> tuple[TrainConfig, Hyp]:
    """The configuration and hyperparameters a checkpoint was trained with."""
    opt = {**ckpt["opt"], "freeze": tuple(ckpt["opt"]["freeze"])}
    return TrainConfig(**opt), Hyp.from_dict(ckpt["hyp"])


def optimizer_steps(ckpt: dict) -> set[int]:
    """The step counts in a checkpoint's Adam/AdamW state, one per parameter (all equal when healthy).

    A fused Adam counts only the updates it applied: for one the GradScaler skipped it takes the
    increment back (found_inf), and a for-loop Adam is not called at all.
    """
    return {int(state["step"]) for state in ckpt["optimizer"]["state"].values()}


def update_counts(log: str, ckpt: dict) -> dict[str, int]:
    """What a finished run (its log and last checkpoint, AdamW) did with the updates it scheduled.

    ``scheduled``: the trainer's own walk over its batches; ``applied``: the optimiser's step count,
    which leaves out the updates the GradScaler skipped; ``skipped``: the difference; ``ema``: the
    EMA's update count, which leaves out the updates skipped for a non-finite loss.
    """
    cfg, hyp = run_config(ckpt)
    scheduled = scheduled_updates(cfg, hyp, steps_per_epoch(log, cfg.batch_size))
    steps = optimizer_steps(ckpt)
    assert len(steps) == 1, f"parameters took different numbers of steps: {sorted(steps)}"
    applied = steps.pop()
    return {"scheduled": scheduled, "applied": applied, "skipped": scheduled - applied, "ema": int(ckpt["updates"])}


# SyncBatchNorm, one process, simulated ranks. Shards of 1, 2 and 5 samples (4 channels, 6x6), each
# drawn around its own per-channel mean and spread, so that the global statistics differ from every
# shard's and from the plain (unweighted) mean of the shards' statistics. Errors are scaled: a mean
# by the channel's standard deviation, a variance relative to itself, so 1e-5 means "float32
# arithmetic" (6e-8 per operation, sums over at most 180 values per shard); the gap to the mistakes
# this must catch (a count ignored, one shard's statistics) is 0.1 or more.
SYNCBN_SIZES = (1, 2, 5)
SYNCBN_STATS_TOL = 1e-5
SYNCBN_OUTPUT_TOL = 1e-5  # outputs up to about 5 after the affine transform: 20 float32 ulps there
SYNCBN_EPS = 1e-5
SYNCBN_MOMENTUM = 0.1


def uneven_shards(sizes: tuple[int, ...] = SYNCBN_SIZES, channels: int = 4, seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shards = []
    for n in sizes:
        centre = torch.randn(1, channels, 1, 1, generator=generator) * 3
        spread = torch.rand(1, channels, 1, 1, generator=generator) * 3 + 0.5
        shards.append(torch.randn(n, channels, 6, 6, generator=generator) * spread + centre)
    return shards


def reference_stats(shards: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per channel of the concatenated batch, in float64."""
    var, mean = torch.var_mean(torch.cat(shards).double(), dim=(0, 2, 3), correction=0)
    return mean, var


def scaled_errors(
    mean: torch.Tensor, var: torch.Tensor, want: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    """(largest mean error in standard deviations, largest relative variance error)."""
    ref_mean, ref_var = want
    mean_err = ((mean.double().cpu() - ref_mean).abs() / ref_var.sqrt()).max().item()
    var_err = ((var.double().cpu() - ref_var).abs() / ref_var).max().item()
    return mean_err, var_err


def our_stats(shards: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """What every rank of our CpuSyncBatchNorm computes for these shards: each rank's row, then the
    combination of the all-reduced table (the all-reduce itself only moves the rows)."""
    rows = [syncbn.shard_stats(shard) for shard in shards]
    counts = torch.tensor([[float(count)] for count, _, _ in rows])
    return syncbn.combine_stats(counts, torch.stack([m for _, m, _ in rows]), torch.stack([v for _, _, v in rows]))


def unsynced_gap(shards: list[torch.Tensor]) -> float:
    """How far (in standard deviations) the mistakes the check must catch land from the global mean:
    the plain mean of the shard means (counts ignored) and the largest shard's own mean."""
    ref_mean, ref_var = reference_stats(shards)
    means = torch.stack([s.double().mean(dim=(0, 2, 3)) for s in shards])
    largest = means[max(range(len(shards)), key=lambda i: shards[i].shape[0])]
    gaps = [((m - ref_mean).abs() / ref_var.sqrt()).max().item() for m in (means.mean(0), largest)]
    return min(gaps)


# torch's CUDA kernels, called as torch's SyncBatchNorm calls them (torch/nn/modules/_functions.py),
# one shard at a time. They have no CPU kernel in torch 2.14.1; on the CPU they still check their
# arguments against the operator's schema before refusing the device.
def kernel_shard_stats(shard: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A shard's mean [C] and invstd [C] = 1 / sqrt(biased var + eps)."""
    return torch.batch_norm_stats(shard, eps)


def kernel_gather(
    full: torch.Tensor,
    means: torch.Tensor,
    invstds: torch.Tensor,
    counts: torch.Tensor,
    running: tuple[torch.Tensor, torch.Tensor],
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global mean [C] and invstd [C] from per-shard rows [R, C] and counts [R]; updates ``running``
    (mean, var) in place with the unbiased variance, as BatchNorm does."""
    return torch.batch_norm_gather_stats_with_counts(
        full, means, invstds, running[0], running[1], momentum, eps, counts
    )


def kernel_normalise(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, eps: float
) -> torch.Tensor:
    return torch.batch_norm_elemt(x, weight, bias, mean, invstd, eps)


def variance_from_invstd(invstd: torch.Tensor, eps: float) -> torch.Tensor:
    return invstd.double().pow(-2) - eps


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double().cpu() - b.double().cpu()).abs().max().item()
