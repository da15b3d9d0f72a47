"""The training recipe: build, then for each epoch train, validate, save, report; and its entry,
``train``, which runs it inside the launch's process group."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yolodist.checkpoint.files import load_checkpoint
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.data.dataset import YoloDataset
from yolodist.data.image_weights import epoch_image_weights
from yolodist.distributed import collectives
from yolodist.distributed import env as dist_env
from yolodist.distributed.env import DistEnv
from yolodist.distributed.lifecycle import Guard, StopRequested
from yolodist.distributed.parallel import check_sync_bn
from yolodist.distributed.session import session
from yolodist.engine.build import DataParts
from yolodist.engine.epoch import train_one_epoch
from yolodist.engine.run import Run, RunProgress, forget_run, setup
from yolodist.engine.saving import interrupted, release_best, skipping, try_save_epoch
from yolodist.errors import BadCheckpoint, CannotSave, DistFailure
from yolodist.eval import plots
from yolodist.eval.pipeline import run_val
from yolodist.eval.validator import ValResult
from yolodist.utils.log import colorstr, setup_logging

LOGGER = logging.getLogger(__name__)


@dataclass
class FitResult:
    save_dir: Path
    epochs_run: int
    best_fitness: float
    final: ValResult
    hyp: Hyp | None = None  # the hyperparameters this process trained with


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


def fit(cfg: TrainConfig, env: DistEnv, hyp: Hyp | None = None) -> FitResult:
    """Train for the configured epochs: train, validate the EMA, save, report; stop early when told.

    ``hyp`` replaces the --hyp file (hyperparameter evolution trains the values it bred).
    """
    run, progress = setup(cfg, env, hyp)
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
    try:
        with Guard(env, cfg.dist_timeout, run.signals) as guard:
            epoch, result = guarded_epochs(run, progress, guard)
    finally:
        run.reporter.close()
    forget_run(cfg, env)
    if env.is_main:
        LOGGER.info(f"\n{epoch - run.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        release_best(run)
    if validates_best(run):
        result = validate_best(run) or result
    if plotting and (run.save_dir / "results.csv").is_file():
        plots.safe_plot(plots.plot_results, run.save_dir / "results.csv")
    if env.is_main:
        LOGGER.info(f"Results saved to {colorstr(str(run.save_dir), 'bold')}")
    return FitResult(run.save_dir, epoch - run.start_epoch + 1, progress.best_fitness, result, run.hyp)


def train(cfg: TrainConfig, body: Callable[[TrainConfig, DistEnv], object] = fit) -> int:
    """Run ``body`` (one training, or an evolution of many) inside this launch's process group."""
    env = dist_env.detect(cfg.device, cfg.local_rank)
    setup_logging(env.rank)
    cfg.check_world(env.world_size)
    check_sync_bn(env, cfg.sync_bn)
    with session(env, cfg.dist_timeout) as joined:
        body(cfg, joined)
    return 0


def guarded_epochs(run: Run, progress: RunProgress, guard: Guard) -> tuple[int, ValResult]:
    """The epochs, with an agreed stop turned into a checkpoint and a peer's failure into one line per rank."""
    try:
        return run_epochs(run, progress, guard)
    except StopRequested as stop:
        with guard.phase("saving"):
            raise interrupted(run, progress, stop) from None
    except Exception as error:
        kind = collectives.peer_failure(error)
        if kind is None or not run.env.is_distributed:
            raise
        raise DistFailure(guard.failure_message(kind)) from error


def run_epochs(run: Run, progress: RunProgress, guard: Guard) -> tuple[int, ValResult]:
    """Train, validate, save and report each epoch; returns the last epoch and its validation result."""
    cfg = run.cfg
    stopper = EarlyStopping(cfg.patience)
    result = ValResult()
    epoch = run.start_epoch - 1
    broken: set[str] = set()
    for epoch in range(run.start_epoch, cfg.epochs):
        start = run.start_batch if epoch == run.start_epoch else 0
        if cfg.image_weights:
            draw_by_image_weights(run.data, progress.maps)
        train_losses = train_one_epoch(run, progress, epoch, guard, start)
        report_broken_images(run.data.train_set, run.env, epoch, broken)
        lrs = [group["lr"] for group in run.optim.optimizer.param_groups]
        run.optim.scheduler.step()
        final_epoch = epoch + 1 == cfg.epochs
        # Validation and saving run under the watchdog too: a rank hung there is ended and named.
        with guard.phase("validating"):
            validated = validate_epoch(run, final_epoch, guard)
            if validated is not None and validated.maps is not None:  # rank 0 holds the metrics
                progress.maps = validated.maps
            result = validated or result
            progress.best_fitness = max(progress.best_fitness, result.fitness)
            run.reporter.results_row(epoch, train_losses, result, lrs)
        with guard.phase("saving"):
            if save_and_decide(run, progress, stopper, epoch, result):
                break
            # A signal that arrived during validation or saving stops here rather than an epoch later.
            signum = collectives.all_reduce(torch.tensor([float(run.signals.pending())]), run.env, op="max").item()
        if signum:
            raise StopRequested(epoch + 1, 0, int(signum), needs_save=cfg.nosave)
    return epoch, result


def save_and_decide(run: Run, progress: RunProgress, stopper: EarlyStopping, epoch: int, result: ValResult) -> bool:
    """Rank 0 saves the epoch and decides whether to stop early; returns, on every rank, whether training ends."""
    cfg, env = run.cfg, run.env
    final_epoch = epoch + 1 == cfg.epochs
    stop, failed = False, None
    if env.is_main:
        stop = stopper(epoch, result.fitness)
        if (not cfg.nosave or final_epoch or stop) and not skipping(progress.skipped_in_a_row, epoch):
            failed = try_save_epoch(run, progress, epoch, result)
    # One broadcast carries all three: every rank stops together, also when rank 0 could not save,
    # and every rank draws the next epoch's images by the same per-class mAP.
    stop, failed, maps = collectives.broadcast_object((stop, failed, progress.maps) if env.is_main else None, env)
    progress.maps = np.asarray(maps, dtype=np.float64)
    if failed:
        raise CannotSave(failed if env.is_main else f"rank {env.rank}: stopped with rank 0, which {failed}")
    return stop or final_epoch


def report_broken_images(train_set: YoloDataset, env: DistEnv, epoch: int, reported: set[str]) -> None:
    """Rank 0 names the training images that broke after the scan on any rank (the loaders used others)."""
    mine = train_set.broken_after_scan()
    new = sorted({f for files in collectives.all_gather_object(mine, env) for f in files} - reported)
    reported.update(new)
    if new and env.is_main:
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        LOGGER.warning(
            f"epoch {epoch}: {len(new)} training image(s) could not be loaded any more and were replaced by "
            f"others ({len(reported)} in this run so far): {shown}"
        )


def draw_by_image_weights(data: DataParts, maps: np.ndarray) -> None:
    """--image-weights: the epoch's images (and mosaic partners) are drawn by class rarity and last mAP."""
    weights = epoch_image_weights(data.train_set.labels, len(data.names), maps)
    data.train_sampler.set_weights(weights)
    data.train_set.set_draw_weights(weights)


def validate_epoch(run: Run, final_epoch: bool, guard: Guard | None = None) -> ValResult | None:
    """Validate the EMA when this epoch is validated (every epoch, or only the last with --noval).

    The plots are drawn after the last epoch only. With a ``guard``, each validation batch shows the
    watchdog that this rank is not stuck.
    """
    cfg = run.cfg
    if run.data.val_loader is None or (cfg.noval and not final_epoch):
        return None
    # The per-class table and the plots come with the last validation: best.pt's when there is one.
    detailed = final_epoch and not validates_best(run)
    val_cfg = dataclasses.replace(cfg.val_config(), noplots=cfg.noplots or not detailed)
    # Without --sync-bn each rank's EMA has its own BatchNorm statistics; every rank validates rank 0's.
    collectives.broadcast_buffers(run.ema.ema, run.env)
    batches = run.data.val_loader if guard is None else guard.watched(run.data.val_loader)
    return run_val(
        val_cfg,
        run.env,
        run.ema.ema,
        batches,
        run.data.names,
        run.save_dir,
        loss_fn=run.ctx.loss_fn.items,
        report=lambda result: run.reporter.validation(result, per_class=detailed),
    )


def validates_best(run: Run) -> bool:
    """Whether training ends as upstream's does, validating best.pt (a validation set, and best.pt saved)."""
    return run.data.val_loader is not None and not run.cfg.nosave


def validate_best(run: Run) -> ValResult | None:
    """Upstream's last step: validate best.pt as released (its float16 weights), per class, with the plots.

    Every rank takes part (each validates its shard), with the weights rank 0 read from the file. None,
    with one warning, when best.pt cannot be read: the last epoch's validation then stands.
    """
    best = run.save_dir / "weights" / "best.pt"
    model = run.ema.ema  # training is over: the EMA model holds best.pt's weights from here on
    loaded = False
    if run.env.is_main and best.is_file():
        try:
            ckpt = load_checkpoint(best)
            model.load_state_dict(ckpt.get("ema") or ckpt["model"])  # float16 values into float32 tensors
            loaded = True
        except (BadCheckpoint, KeyError, RuntimeError) as e:
            LOGGER.warning(f"cannot validate {best} ({e}); the last epoch's validation stands")
    if not collectives.broadcast_object(loaded, run.env):
        return None
    if run.env.is_main:
        LOGGER.info(f"\nValidating {best}...")
    collectives.broadcast_state(model, run.env)
    val_cfg = dataclasses.replace(run.cfg.val_config(), noplots=run.cfg.noplots)
    return run_val(
        val_cfg,
        run.env,
        model,
        run.data.val_loader,
        run.data.names,
        run.save_dir,
        loss_fn=run.ctx.loss_fn.items,
        report=lambda result: run.reporter.validation(result, per_class=True),
    )
