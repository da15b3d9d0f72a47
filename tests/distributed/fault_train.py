"""Fault injection for the failure, hang, NaN and interruption tests: patch one thing, then run ``yolodist train``.

Started as a file (by torchrun once per rank, or by python for one process)::

    fault_train.py [--fault KIND] [--rank R] [--step N] [--seconds S] [--record DIR] -- TRAIN_ARGS...

Steps count ``train_step`` calls (micro-batches) from 0 over the whole run, on each rank. Kinds:

    raise       rank R raises RuntimeError at step N
    hang        rank R sleeps forever at step N (a hung rank, not a dead one)
    nan         rank R's loss is NaN at step N only
    nan-from    rank R's loss is NaN at every step from N on
    empty       rank R's batches have no labels at all (every step)
    slow        every rank sleeps S seconds after each step (time to send a signal mid-epoch)
    hang-in-val rank R sleeps forever fetching its first validation batch (a stuck validation loader)
    hang-in-save rank R sleeps forever inside its first checkpoint write (rank 0 saves; a stuck filesystem)
    sigkill     rank R sends itself SIGKILL at step N, after its forward pass and before the step's first
                collective (as the OOM killer would: no Python cleanup, no exit code of its own)
    sigkill-in-save
                rank R sends itself SIGKILL while writing last.pt for the (N+1)-th time (N counts writes
                from 0), once B bytes (``--bytes``) of it are in the temp file on disk

Faults fire in the launcher's first round only: a round restarted by ``--max-restarts``, or a SLURM
job requeued, runs clean. The round is the one the ranks agreed on (a c10d launcher restarted for a
membership change still reports restart count 0 in its environment).
Every rank prints ``fault_train: rank R finished step N`` after each step. With ``--record DIR``
each rank appends "step skipped" to DIR/updates-rank<R>.txt after every optimiser update.
The production code has no hooks for any of this: the patches live here.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
import time
from pathlib import Path

_ROUND = {"restarted": False}  # set from the trainer's agreed restart round at the first step


def _rank() -> int:
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0")  # torchrun, or srun


class _NanLoss:
    """The real loss with its sums made NaN, still in the autograd graph (as a real blow-up would be)."""

    def __init__(self, loss_fn) -> None:
        self.loss_fn = loss_fn

    def __call__(self, preds, targets):
        terms = self.loss_fn(preds, targets)
        return terms._replace(sums=terms.sums * float("nan"))

    def __getattr__(self, name):
        return getattr(self.loss_fn, name)


class _KillAfterLoss:
    """The real loss, after which the process SIGKILLs itself: its peers are left waiting in the step's
    first collective (the target counts' all-reduce), as they would be for a rank the kernel killed."""

    def __init__(self, loss_fn, note: str) -> None:
        self.loss_fn, self.note = loss_fn, note

    def __call__(self, preds, targets):
        self.loss_fn(preds, targets)
        _die(self.note)

    def __getattr__(self, name):
        return getattr(self.loss_fn, name)


def _die(note: str) -> None:
    print(f"fault_train: {note}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL is delivered before this returns; never go on with the real work


def _install_kill_in_save(args: argparse.Namespace) -> None:
    """Make the (``args.step``+1)-th write of last.pt die after ``args.bytes`` bytes reached the temp file.

    The patch is on the file wrapper that ``atomic_save`` writes through, so everything above it (the
    previous generation's hard link, the temp file's name, the rename that never comes) is the real code.
    """
    from yolodist.utils import io

    writes = 0

    class KillingWriter(io._RecordingWriter):
        def __init__(self, f) -> None:
            nonlocal writes
            super().__init__(f)
            self.written = 0
            self.armed = Path(f.name).name.startswith(".last.pt.") and writes == args.step and not _ROUND["restarted"]
            writes += Path(f.name).name.startswith(".last.pt.")

        def write(self, data) -> int:
            if self.armed and self.written + len(data) >= args.bytes:
                self.f.write(bytes(data[: args.bytes - self.written]))
                self.f.flush()  # the part written so far is in the file, as the kernel had it
                _die(f"rank {_rank()} SIGKILLs itself writing {os.path.abspath(self.f.name)} after {args.bytes} bytes")
            self.written += len(data)
            return super().write(data)

    io._RecordingWriter = KillingWriter


def _install(args: argparse.Namespace) -> None:
    from yolodist.engine import epoch

    original = epoch.train_step
    rank = _rank()
    calls = 0
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" or os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
        return
    if args.fault == "sigkill-in-save" and rank == args.rank:
        _install_kill_in_save(args)

    @functools.wraps(original)
    def faulty(ctx, imgs, targets, update):
        nonlocal calls
        step, calls = calls, calls + 1
        _ROUND["restarted"] = bool(ctx.env.restart_count or ctx.env.requeues)
        mine = rank == args.rank and not _ROUND["restarted"]
        hit = mine and step == args.step
        if hit and args.fault == "raise":
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        if hit and args.fault == "hang":
            print(f"fault_train: rank {rank} hangs at step {step}", flush=True)
            while True:
                time.sleep(3600)
        if mine and args.fault == "empty":
            targets = targets[:0]
        nan = mine and (hit if args.fault == "nan" else args.fault == "nan-from" and step >= args.step)
        # The context is frozen: this one step gets a copy with the faulty loss (sharing the window's news).
        if nan:
            ctx = dataclasses.replace(ctx, loss_fn=_NanLoss(ctx.loss_fn))
        if hit and args.fault == "sigkill":
            ctx = dataclasses.replace(
                ctx, loss_fn=_KillAfterLoss(ctx.loss_fn, f"rank {rank} SIGKILLs itself at step {step}")
            )
        outcome = original(ctx, imgs, targets, update)
        if update and args.record is not None:
            with (args.record / f"updates-rank{rank}.txt").open("a") as f:
                f.write(f"{step} {int(outcome.skipped)}\n")
        print(f"fault_train: rank {rank} finished step {step}", flush=True)
        if args.fault == "slow":
            time.sleep(args.seconds)
        return outcome

    epoch.train_step = faulty
    if rank == args.rank and args.fault == "hang-in-val":
        _hang_in_validation()
    if rank == args.rank and args.fault == "hang-in-save":
        _hang_in_checkpoint_write()


def _hang_forever(what: str) -> None:
    print(f"fault_train: rank {_rank()} hangs {what}", flush=True)
    while True:
        time.sleep(3600)


def _hang_in_validation() -> None:
    from yolodist.eval import pipeline

    original = pipeline.validate

    def stuck(batches):
        _hang_forever("fetching its first validation batch")
        yield from batches

    @functools.wraps(original)
    def validate(model, batches, *args, **kwargs):
        return original(model, stuck(batches), *args, **kwargs)

    pipeline.validate = validate


def _hang_in_checkpoint_write() -> None:
    import torch

    original = torch.save

    @functools.wraps(original)
    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "model" in obj:  # a checkpoint (its temp file is open by now)
            _hang_forever("writing a checkpoint")
        return original(obj, f, *args, **kwargs)

    torch.save = save


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    kinds = (
        "raise",
        "hang",
        "nan",
        "nan-from",
        "empty",
        "slow",
        "hang-in-val",
        "hang-in-save",
        "sigkill",
        "sigkill-in-save",
    )
    parser.add_argument("--fault", choices=kinds, default=None)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--step", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--bytes", type=int, default=100_000)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv[:split])
    _install(args)
    from yolodist.cli.train import main as train

    return train(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
