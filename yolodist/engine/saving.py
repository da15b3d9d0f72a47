"""Checkpoints of a run: every epoch's last/best/periodic ones and the resumable one of an interruption."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from yolodist.checkpoint.files import save_checkpoint, strip_for_release
from yolodist.checkpoint.state import TrainingState
from yolodist.distributed import collectives, slurm
from yolodist.distributed.lifecycle import StopRequested
from yolodist.errors import BadCheckpoint, CannotSave, DistFailure, Interrupted
from yolodist.eval.validator import ValResult

if TYPE_CHECKING:
    from yolodist.engine.run import Run, RunProgress

LOGGER = logging.getLogger(__name__)


def make_checkpoint(
    run: Run, progress: RunProgress, epoch: int, fitness: float, batches_done: int = 0
) -> TrainingState:
    """The resumable checkpoint after ``epoch`` (and ``batches_done`` batches of the next one)."""
    optim = run.optim
    return TrainingState.new(
        model=run.model.state_dict(),
        ema=run.ema.ema.state_dict(),
        updates=run.ema.updates,
        optimizer=optim.optimizer.state_dict(),
        epoch=epoch,
        best_fitness=progress.best_fitness,
        opt=run.cfg.to_dict(),
        yaml=run.model.yaml,
        names=run.data.names,
        hyp=run.hyp.to_dict(),
        scaler=optim.scaler.state_dict(),
        fitness=fitness,
        batches_done=batches_done,
        maps=[float(v) for v in progress.maps],  # what --image-weights draws the next epoch by
    )


def save_epoch(run: Run, progress: RunProgress, epoch: int, result: ValResult) -> None:
    """last.pt every epoch (the previous one kept as last.prev.pt), best.pt on a new best, epochN.pt by period."""
    ckpt = make_checkpoint(run, progress, epoch, result.fitness).to_dict()
    weights = run.save_dir / "weights"
    save_checkpoint(ckpt, weights / "last.pt")
    if result.fitness >= progress.best_fitness:
        save_checkpoint(ckpt, weights / "best.pt", keep_previous=False)
    if run.cfg.save_period > 0 and epoch % run.cfg.save_period == 0:
        save_checkpoint(ckpt, weights / f"epoch{epoch}.pt", keep_previous=False)


def release_best(run: Run) -> None:
    """At the end of training, make best.pt what upstream's is: EMA weights in half precision, no optimizer.

    best.pt is the file users ship and deploy, so it becomes small; last.pt keeps everything (full
    precision, optimizer, EMA), so a finished run can still seed a longer one at full precision. A
    failed write (a full disk) leaves best.pt whole, as it was: one warning, not an error.
    """
    best = run.save_dir / "weights" / "best.pt"
    if not best.is_file():
        return
    try:
        strip_for_release(best)
    except (OSError, BadCheckpoint) as e:
        LOGGER.warning(f"{e}; {best.name} keeps its optimizer state and full precision, as saved")


def try_save_epoch(run: Run, progress: RunProgress, epoch: int, result: ValResult) -> str | None:
    """``save_epoch``; a write that fails (a full disk, ...) comes back as what to tell the user, not raised.

    Every file is written atomically, so after a failure ``last.pt`` (or ``last.prev.pt``) still holds
    the last epoch that was saved, and ``--resume`` continues from it once the cause is fixed.
    """
    try:
        save_epoch(run, progress, epoch, result)
    except OSError as e:
        last = run.save_dir / "weights" / "last.pt"
        kept = f"{last} still holds the last epoch saved" if last.is_file() else "no checkpoint was saved yet"
        resume = f"python train.py --resume {last}" if last.is_file() else "the same command"
        return f"{e.strerror or e}. Training stopped after epoch {epoch}; {kept}. Make room, then run: {resume}"
    return None


def save_interrupted(run: Run, progress: RunProgress, epoch: int, batches_done: int) -> None:
    """last.pt for a run stopped after ``batches_done`` batches of ``epoch`` (always an optimiser-step boundary)."""
    ckpt = make_checkpoint(run, progress, epoch - 1, progress.best_fitness, batches_done)
    save_checkpoint(ckpt, run.save_dir / "weights" / "last.pt")


def skipping(skipped: int, epoch: int) -> bool:
    """Whether the epoch ended inside a run of ``skipped`` (non-finite) updates: then last.pt is left as it was."""
    if skipped:
        LOGGER.warning(f"epoch {epoch}: not saving, the last {skipped} update(s) were skipped (non-finite values)")
    return skipped > 0


def interrupted(run: Run, progress: RunProgress, stop: StopRequested) -> Interrupted:
    """Rank 0 writes the checkpoint to resume from; every rank returns the error it exits with (128 + signal)."""
    env = run.env
    path = run.save_dir / "weights" / "last.pt"
    if env.is_main and stop.needs_save and not skipping(progress.skipped_in_a_row, stop.epoch):
        try:
            save_interrupted(run, progress, stop.epoch, stop.batches_done)
        except OSError as e:  # the others learn it from the barrier below, as a failed peer
            raise CannotSave(
                f"{e.strerror or e}: interrupted at epoch {stop.epoch} step {stop.batches_done} without a new "
                f"checkpoint; {path} holds the last one saved, if any"
            ) from e
    try:
        collectives.barrier(env)  # the others leave only once the checkpoint is written
    except Exception as error:
        if collectives.peer_failure(error) is None:
            raise
        raise DistFailure(f"rank {env.rank}: rank 0 failed while writing {path}; see its error") from error
    where = f"epoch {stop.epoch} step {stop.batches_done}"
    if not env.is_main:
        return Interrupted(f"rank {env.rank}: interrupted at {where} together with rank 0", stop.signum)
    if stop.signum == signal.SIGUSR1 and env.scheduler_job:  # SLURM's warning: time limit or preemption ahead
        return Interrupted(f"Interrupted at {where}; {slurm.requeue(env.scheduler_job)}", stop.signum)
    launcher = " (under the same launcher command)" if env.is_distributed else ""
    return Interrupted(f"Interrupted at {where}; resume with: python train.py --resume {path}{launcher}", stop.signum)
