"""The training recipe: build, then for each epoch train, validate, save, report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from yolodist.config.io import dump_yaml
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.dist import collectives
from yolodist.dist.env import DistEnv
from yolodist.dist.scope import main_first
from yolodist.engine import build, resume
from yolodist.engine.checkpoint import build_checkpoint, save_checkpoint
from yolodist.engine.ema import ModelEMA
from yolodist.engine.optim import warmup
from yolodist.engine.report import MainReporter, NullReporter
from yolodist.engine.step import MAX_SKIPPED_UPDATES, StepContext, train_step
from yolodist.engine.watchdog import Guard, StopRequested
from yolodist.errors import DistFailure, Interrupted, NonFiniteLoss
from yolodist.eval import plots, visuals
from yolodist.eval.validator import ValResult, ValSettings, validate
from yolodist.models import Model
from yolodist.utils.io import atomic_write_text, cleanup_stale_tmp
from yolodist.utils.log import colorstr
from yolodist.utils.paths import increment_path
from yolodist.utils.seed import rng_for, seed_everything

LOGGER = logging.getLogger(__name__)
LOG_EVERY = 10  # steps between loss synchronisations (the only host-device syncs of an epoch)
PLOTTED_TRAIN_BATCHES = 3  # train_batch0..2.jpg, as upstream


@dataclass
class FitResult:
    save_dir: Path
    epochs_run: int
    best_fitness: float
    final: ValResult


class EarlyStopping:
    def __init__(self, patience: int) -> None:
        self.patience = patience or float("inf")
        self.best_fitness = -1.0
        self.best_epoch = 0

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = epoch - self.best_epoch >= self.patience
        if stop:
            LOGGER.info(
                f"Stopping training early: no improvement in the last {self.patience} epochs "
                f"(best epoch {self.best_epoch}); change --patience to train longer."
            )
        return stop


def prepare_run_dir(cfg: TrainConfig, env: DistEnv, resume_dir: Path | None) -> Path:
    """Rank 0 picks (and creates) the run directory; every rank learns it."""
    path = None
    if env.is_main:
        path = resume_dir or increment_path(Path(cfg.project) / cfg.name, exist_ok=cfg.exist_ok, mkdir=True)
        (path / "weights").mkdir(parents=True, exist_ok=True)
        cleanup_stale_tmp(path / "weights")
    return build.broadcast_run_dir(path, env)


def multi_scale_size(cfg: TrainConfig, epoch: int, step: int, stride: int) -> int:
    """The same random size on every rank in the same step: keyed by (seed, epoch, step), not by rank."""
    rng = rng_for(cfg.seed, epoch, 1_000_000_000 + step)
    size = rng.uniform(cfg.imgsz * 0.5, cfg.imgsz * 1.5 + stride)
    return max(int(size // stride * stride), stride)


@dataclass
class Run:
    """Everything one training run holds, built once by :func:`setup`."""

    cfg: TrainConfig
    env: DistEnv
    hyp: Hyp
    save_dir: Path
    model: Model
    ema: ModelEMA
    optim: build.OptimParts
    data: build.DataParts
    ctx: StepContext
    reporter: MainReporter | NullReporter
    stride: int
    warmup_iters: int
    start_epoch: int
    best_fitness: float
    start_batch: int = 0  # batches of start_epoch trained before an interruption


def setup(cfg: TrainConfig, env: DistEnv) -> Run:
    seed_everything(cfg.seed, cfg.deterministic)
    # A --weights URL or release name is fetched once per node, not once per rank.
    with main_first(env, local=True, name="weights"):
        ckpt, resume_dir = resume.load_start(cfg)
    if ckpt is not None and cfg.resume:
        cfg = resume.restore_config(cfg, ckpt)
    hyp = Hyp.from_dict(ckpt["hyp"]) if cfg.resume else build.load_hyp_for(cfg)
    save_dir = prepare_run_dir(cfg, env, resume_dir)
    if env.is_main:
        atomic_write_text(save_dir / "hyp.yaml", dump_yaml(hyp.to_dict()))
        atomic_write_text(save_dir / "opt.yaml", dump_yaml(cfg.to_dict()))
        LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in hyp.to_dict().items()))
    # The data pipeline needs the model's grid size, and the model the dataset's classes.
    spec, names = build.load_spec(cfg, env)
    model = build.build_model(cfg, hyp, len(names), names, ckpt)
    stride = max(int(model.stride.max()), 32)
    data = build.build_data(cfg, env, hyp, stride, spec, names)
    if not cfg.noautoanchor and not cfg.resume:
        build.check_anchors(model, data.train_set, hyp, cfg)
    model.info(imgsz=cfg.imgsz)
    build.freeze_layers(model, cfg.freeze)
    model.to(env.device)
    optim = build.build_optim(model, cfg, hyp, env.device)
    ema = build.make_ema(model, ckpt if cfg.resume else None)
    start_epoch, best_fitness = resume.restore_training(cfg, ckpt, optim, ema)
    net = build.wrap_model(model, env, cfg)
    loss_fn = build.LossFn(model, len(names), hyp, cfg)
    amp = env.device.type == "cuda"
    ctx = StepContext(net, model, loss_fn, optim.optimizer, optim.scaler, ema, env, cfg.batch_size, amp=amp)
    reporter = MainReporter(save_dir, cfg.epochs, env.device) if env.is_main else NullReporter()
    warmup_iters = build.warmup_iterations(cfg, hyp, len(data.train_loader))
    run = Run(
        cfg, env, hyp, save_dir, model, ema, optim, data, ctx, reporter, stride, warmup_iters, start_epoch, best_fitness
    )
    run.start_batch = resume.batches_done(cfg, ckpt)
    return run


def fit(cfg: TrainConfig, env: DistEnv) -> FitResult:
    """Train for the configured epochs: train, validate the EMA, save, report; stop early when told."""
    run = setup(cfg, env)
    cfg = run.cfg
    LOGGER.info(
        f"Image sizes {cfg.imgsz} train, {cfg.imgsz} val; {env.world_size} process(es) x "
        f"{cfg.batch_size // env.world_size} images; accumulating {run.optim.accumulate} batch(es) per step\n"
        f"Logging results to {colorstr(str(run.save_dir), 'bold')}\nStarting training for {cfg.epochs} epochs..."
    )
    plotting = env.is_main and not cfg.noplots
    if plotting and not cfg.resume:
        labels = np.concatenate([lb for lb in run.data.train_set.labels if len(lb)] or [np.zeros((0, 5))])
        plots.safe_plot(plots.plot_labels, labels, run.data.names, run.save_dir / "labels.jpg")
    t0 = time.time()
    with Guard(env, cfg.dist_timeout) as guard:
        run.ctx.pending_signal = guard.pending_signal
        epoch, result = guarded_epochs(run, guard)
    if plotting and (run.save_dir / "results.csv").is_file():
        plots.safe_plot(plots.plot_results, run.save_dir / "results.csv")
    if env.is_main:
        hours = (time.time() - t0) / 3600
        LOGGER.info(
            f"\n{epoch - run.start_epoch + 1} epochs completed in {hours:.3f} hours.\n"
            f"Results saved to {colorstr(str(run.save_dir), 'bold')}"
        )
    return FitResult(run.save_dir, epoch - run.start_epoch + 1, run.best_fitness, result)


def guarded_epochs(run: Run, guard: Guard) -> tuple[int, ValResult]:
    """The epochs, with an agreed stop turned into a checkpoint and a peer's failure into one line per rank."""
    try:
        return run_epochs(run, guard)
    except StopRequested as stop:
        with guard.paused():
            raise interrupted(run, stop) from None
    except Exception as error:
        kind = collectives.peer_failure(error)
        if kind is None or not run.env.is_distributed:
            raise
        raise DistFailure(guard.failure_message(kind)) from error


def run_epochs(run: Run, guard: Guard) -> tuple[int, ValResult]:
    """Train, validate, save and report each epoch; returns the last epoch and its validation result."""
    cfg, env = run.cfg, run.env
    stopper = EarlyStopping(cfg.patience)
    result = ValResult()
    epoch = run.start_epoch - 1
    for epoch in range(run.start_epoch, cfg.epochs):
        start = run.start_batch if epoch == run.start_epoch else 0
        train_losses = train_one_epoch(run, epoch, guard, start)
        lrs = [group["lr"] for group in run.optim.optimizer.param_groups]
        run.optim.scheduler.step()
        final_epoch = epoch + 1 == cfg.epochs
        with guard.paused():  # validation and saving have their own waits and timeouts
            result = validate_epoch(run, final_epoch) or result
            run.best_fitness = max(run.best_fitness, result.fitness)
            run.reporter.results_row(epoch, train_losses, result, lrs)
            stop = collectives.broadcast_object(stopper(epoch, result.fitness) if env.is_main else None, env)
            if env.is_main and (not cfg.nosave or final_epoch or stop) and not skipping(run, epoch):
                save_epoch(run, epoch, result)
            if stop or final_epoch:
                break
            # A signal that arrived during validation or saving stops here rather than an epoch later.
            signum = collectives.all_reduce(torch.tensor([float(guard.pending_signal())]), env, op="max").item()
        if signum:
            raise StopRequested(epoch + 1, 0, int(signum), needs_save=cfg.nosave)
    return epoch, result


def skipping(run: Run, epoch: int) -> bool:
    """Whether the epoch ended inside a run of skipped (non-finite) updates: then last.pt is left as it was."""
    skipped = run.ctx.skipped_in_a_row
    if skipped:
        LOGGER.warning(f"epoch {epoch}: not saving, the last {skipped} update(s) were skipped (non-finite values)")
    return skipped > 0


def validate_epoch(run: Run, final_epoch: bool) -> ValResult | None:
    """Validate the EMA when this epoch is validated (every epoch, or only the last with --noval)."""
    cfg = run.cfg
    if run.data.val_loader is None or (cfg.noval and not final_epoch):
        return None
    plotting = run.env.is_main and not cfg.noplots and final_epoch
    on_batch = visuals.batch_plotter(run.save_dir, run.data.names) if plotting else None
    settings = ValSettings(single_cls=cfg.single_cls)
    data = run.data
    # Without --sync-bn each rank's EMA has its own BatchNorm statistics; every rank validates rank 0's.
    collectives.broadcast_buffers(run.ema.ema, run.env)
    result = validate(
        run.ema.ema, data.val_loader, run.env, data.names, settings, loss_fn=run.ctx.loss_fn.items, on_batch=on_batch
    )
    run.reporter.validation(result, per_class=final_epoch)
    if plotting:
        visuals.plot_validation(result, run.data.names, run.save_dir)
    return result


def interrupted(run: Run, stop: StopRequested) -> Interrupted:
    """Rank 0 writes the checkpoint to resume from; every rank returns the error it exits with (128 + signal)."""
    env = run.env
    path = run.save_dir / "weights" / "last.pt"
    if env.is_main and stop.needs_save and not skipping(run, stop.epoch):
        save_interrupted(run, stop.epoch, stop.batches_done)
    try:
        collectives.barrier(env)  # the others leave only once the checkpoint is written
    except Exception as error:
        if collectives.peer_failure(error) is None:
            raise
        raise DistFailure(f"rank {env.rank}: rank 0 failed while writing {path}; see its error") from error
    where = f"epoch {stop.epoch} step {stop.batches_done}"
    if not env.is_main:
        return Interrupted(f"rank {env.rank}: interrupted at {where} together with rank 0", stop.signum)
    launcher = " (under the same launcher command)" if env.is_distributed else ""
    return Interrupted(f"Interrupted at {where}; resume with: python train.py --resume {path}{launcher}", stop.signum)


def train_one_epoch(run: Run, epoch: int, guard: Guard | None = None, start: int = 0) -> list[float]:
    """One pass over this rank's shard from batch ``start``; returns the mean (box, obj, cls) losses over all ranks."""
    ctx, data, cfg, reporter = run.ctx, run.data, run.cfg, run.reporter
    ctx.net.train()
    data.train_sampler.set_epoch(epoch)
    steps = len(data.train_loader)
    reporter.epoch_start(epoch, steps)
    started = time.perf_counter()
    loss_sum = torch.zeros(3, device=ctx.env.device)
    mean_losses = torch.zeros(3)
    # A resumed epoch starts right after an update, so its accumulation windows are the original's.
    last_update, logged = start - 1, start
    plot_batches = PLOTTED_TRAIN_BATCHES if ctx.env.is_main and not cfg.noplots and epoch == run.start_epoch else 0
    for i, (imgs, targets, paths, _shapes) in enumerate(resume.batches_from(data.train_loader, start), start):
        if guard is not None:
            guard.pet(epoch, i)
        if i < plot_batches:
            name = run.save_dir / f"train_batch{i}.jpg"
            plots.safe_plot(plots.plot_images, imgs, targets, list(paths), data.names, name)
        accumulate = apply_warmup(run, epoch, i + steps * epoch)
        imgs = network_input(run, imgs, epoch, i)
        # Accumulation windows end with the epoch, so an epoch-end checkpoint resumes exactly.
        update = i - last_update >= accumulate or i == steps - 1
        items = train_step(ctx, imgs, targets.to(ctx.env.device), update)
        loss_sum += torch.nan_to_num(items, nan=0.0, posinf=0.0, neginf=0.0)  # a skipped update's NaN stays out
        if update:
            last_update = i
            after_update(run, epoch, i)
        if (i + 1) % LOG_EVERY == 0 or i == steps - 1:
            mean_losses = collectives.all_reduce(loss_sum.clone(), ctx.env, op="sum").cpu() / (i + 1 - start)
            reporter.step(mean_losses, int(targets.shape[0]), imgs.shape[-1], advance=i + 1 - logged)
            logged = i + 1
    reporter.epoch_end()
    seconds = time.perf_counter() - started
    images = (steps - start) * cfg.batch_size
    # Throughput over all ranks, training only (validation excluded); bench/ reads this line.
    LOGGER.info(f"epoch {epoch}: {images} images in {seconds:.1f} s ({images / seconds:.1f} images/s)")
    return mean_losses.tolist()


def apply_warmup(run: Run, epoch: int, global_step: int) -> int:
    """Set the warm-up lr and momentum for ``global_step``; returns the accumulation length in force."""
    optim, hyp = run.optim, run.hyp
    if global_step > run.warmup_iters:
        return optim.accumulate
    warmup(
        optim.optimizer,
        global_step,
        run.warmup_iters,
        epoch,
        optim.lr_fn,
        hyp.warmup_bias_lr,
        hyp.momentum,
        hyp.warmup_momentum,
    )
    return max(1, int(np.interp(global_step, [0, run.warmup_iters], [1, optim.accumulate]).round()))


def network_input(run: Run, imgs: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
    """uint8 batch -> float in [0, 1] on the device, resized for --multi-scale."""
    cfg, stride = run.cfg, run.stride
    imgs = imgs.to(run.env.device, non_blocking=True).float() / 255
    if cfg.multi_scale:
        size = multi_scale_size(cfg, epoch, step, stride)
        if size != imgs.shape[-1]:
            scale = size / max(imgs.shape[2:])
            new_shape = [max(round(x * scale / stride) * stride, stride) for x in imgs.shape[2:]]
            imgs = F.interpolate(imgs, size=new_shape, mode="bilinear", align_corners=False)
    return imgs


def after_update(run: Run, epoch: int, step: int) -> None:
    """Report a skipped (non-finite) update, give up after too many in a row, stop when the ranks agreed to."""
    ctx, env = run.ctx, run.env
    if ctx.skipped:
        if ctx.skipped_in_a_row >= MAX_SKIPPED_UPDATES:
            if not env.is_main:
                raise NonFiniteLoss(f"rank {env.rank}: stopping together with rank 0 (non-finite loss)")
            raise NonFiniteLoss(
                f"loss is NaN/inf for {MAX_SKIPPED_UPDATES} steps in a row (last at epoch {epoch} step {step}): "
                "lower --hyp lr0 or check your data"
            )
        if env.is_main:
            LOGGER.warning(
                f"non-finite loss or gradients at epoch {epoch} step {step}: skipped this optimiser update on "
                f"every rank ({ctx.skipped_in_a_row} in a row)"
            )
    if ctx.stop_signal:
        raise StopRequested(epoch, step + 1, ctx.stop_signal)


def make_checkpoint(run: Run, epoch: int, fitness: float, batches_done: int = 0) -> dict:
    """The resumable checkpoint after ``epoch`` (and ``batches_done`` batches of the next one)."""
    optim = run.optim
    return build_checkpoint(
        model_state=run.model.state_dict(),
        ema_state=run.ema.ema.state_dict(),
        ema_updates=run.ema.updates,
        optimizer_state=optim.optimizer.state_dict(),
        epoch=epoch,
        best_fitness=run.best_fitness,
        opt=run.cfg.to_dict(),
        yaml=run.model.yaml,
        names=run.data.names,
        hyp=run.hyp.to_dict(),
        extra={"scaler": optim.scaler.state_dict(), "fitness": fitness, "batches_done": batches_done},
    )


def save_epoch(run: Run, epoch: int, result: ValResult) -> None:
    """last.pt every epoch (the previous one kept as last.prev.pt), best.pt on a new best, epochN.pt by period."""
    ckpt = make_checkpoint(run, epoch, result.fitness)
    weights = run.save_dir / "weights"
    save_checkpoint(ckpt, weights / "last.pt")
    if result.fitness >= run.best_fitness:
        save_checkpoint(ckpt, weights / "best.pt", keep_previous=False)
    if run.cfg.save_period > 0 and epoch % run.cfg.save_period == 0:
        save_checkpoint(ckpt, weights / f"epoch{epoch}.pt", keep_previous=False)


def save_interrupted(run: Run, epoch: int, batches_done: int) -> None:
    """last.pt for a run stopped after ``batches_done`` batches of ``epoch`` (always an optimiser-step boundary)."""
    ckpt = make_checkpoint(run, epoch - 1, run.best_fitness, batches_done)
    save_checkpoint(ckpt, run.save_dir / "weights" / "last.pt")
