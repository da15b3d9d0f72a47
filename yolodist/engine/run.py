"""Building a training run: the run directory, model, data, optimiser and step context, in order.

Elastic restarts: a launch that torchrun restarts (--max-restarts), or a SLURM job that is requeued,
continues its own run. torchrun restarts every worker of a launch with the same command line after
one of them fails. Without help, the new round would start a new run directory from scratch. Rank 0
of a launch that may restart notes its run directory in a small file named after the launch (the
master's address and port, which stay the same across rounds and no other live launch shares); a
restarted round resumes from that run's last.pt. The note is removed when training finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolodist.checkpoint import restore
from yolodist.config.io import dump_yaml
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.distributed import collectives
from yolodist.distributed.env import DistEnv
from yolodist.distributed.lifecycle import StopSignals
from yolodist.distributed.scope import main_first
from yolodist.engine import build, precision
from yolodist.engine.ema import ModelEMA
from yolodist.engine.report import MainReporter, NullReporter
from yolodist.engine.step import StepContext
from yolodist.engine.tensorboard_log import open_tensorboard
from yolodist.models import Model
from yolodist.utils.io import atomic_write_text, cleanup_stale_tmp
from yolodist.utils.log import colorstr
from yolodist.utils.paths import increment_path
from yolodist.utils.seed import seed_everything

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """What :func:`setup` builds once for a training run: its settings, its parts, where it starts."""

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
    signals: StopSignals  # the step's stop source; its handlers are installed while the epochs run
    stride: int
    warmup_iters: int
    # Where training picks up (checkpoint.restore.Progress): epoch 0 with nothing done for a new run.
    start_epoch: int = 0
    start_batch: int = 0  # batches of start_epoch trained before an interruption


@dataclass
class RunProgress:
    """What changes as the run goes (the fitness and mAP are saved in its checkpoints)."""

    best_fitness: float = 0.0
    # mAP@0.5:0.95 per class at the last validation, on every rank (--image-weights draws by it)
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    skipped_in_a_row: int = 0  # updates every rank skipped (non-finite values) since the last one made

    def count_update(self, skipped: bool) -> int:
        """Note an update every rank made or skipped; returns how many in a row were skipped."""
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        return self.skipped_in_a_row


def prepare_run_dir(cfg: TrainConfig, env: DistEnv, resume_dir: Path | None) -> Path:
    """Rank 0 picks (and creates) the run directory; every rank learns it."""
    path = None
    if env.is_main:
        path = resume_dir or increment_path(Path(cfg.project) / cfg.name, exist_ok=cfg.exist_ok, mkdir=True)
        (path / "weights").mkdir(parents=True, exist_ok=True)
        cleanup_stale_tmp(path / "weights")
    return build.broadcast_run_dir(path, env)


def settle(cfg: TrainConfig, env: DistEnv, hyp: Hyp | None) -> tuple[TrainConfig, Hyp, restore.Start, Path]:
    """The options and hyperparameters the run trains with, the checkpoint it starts from, its directory.

    A restarted launch or a --resume takes the saved options; otherwise ``hyp`` (hyperparameter
    evolution's values), when given, replaces the --hyp file.
    """
    cfg = continue_after_restart(cfg, env)
    # A --weights URL or release name is fetched once per node, not once per rank.
    with main_first(env, local=True, name="weights"):
        start = restore.load_start(cfg)
    if cfg.resume:
        cfg, hyp = restore.resumed_settings(cfg, start.state)
    elif hyp is None:
        hyp = build.load_hyp_for(cfg)
    save_dir = prepare_run_dir(cfg, env, start.run_dir)
    remember_run(cfg, env, save_dir)
    if env.is_main:
        atomic_write_text(save_dir / "hyp.yaml", dump_yaml(hyp.to_dict()))
        atomic_write_text(save_dir / "opt.yaml", dump_yaml(cfg.to_dict()))
        LOGGER.info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in hyp.to_dict().items()))
    return cfg, hyp, start, save_dir


def setup(cfg: TrainConfig, env: DistEnv, hyp: Hyp | None = None) -> tuple[Run, RunProgress]:
    """Build the run and say where it stands; ``hyp`` replaces the --hyp file when given."""
    seed_everything(cfg.seed, cfg.deterministic)
    cfg, hyp, start, save_dir = settle(cfg, env, hyp)
    # The data pipeline needs the model's grid size, and the model the dataset's classes.
    spec, names = build.load_spec(cfg, env)
    model = build.build_model(cfg, hyp, len(names), names, start.state)
    stride = max(int(model.stride.max()), 32)
    data = build.build_data(cfg, env, hyp, stride, spec, names)
    if not cfg.noautoanchor and not cfg.resume:
        build.check_anchors(model, data.train_set, hyp, cfg)
    model.info(imgsz=cfg.imgsz)
    build.freeze_layers(model, cfg.freeze)
    autocast = precision.autocast_dtype(cfg.amp, env.device, cfg.deterministic)
    model.to(env.device, memory_format=precision.memory_format(cfg.channels_last))
    LOGGER.info(precision.describe(autocast, cfg.channels_last))
    optim = build.build_optim(model, cfg, hyp, env.device, autocast)
    ema = ModelEMA(model)
    restored = restore.restore(start.state, cfg, model=model, ema=ema, optim=optim, nc=len(names))
    net = build.wrap_model(model, env, cfg)
    loss_fn = build.LossFn(model, len(names), hyp, cfg)
    signals = StopSignals(announce=env.is_main)
    ctx = StepContext(
        net, model, loss_fn, optim.optimizer, optim.scaler, ema, env, cfg.batch_size, autocast=autocast, stop=signals
    )
    reporter: MainReporter | NullReporter = NullReporter()
    if env.is_main:
        reporter = MainReporter(save_dir, cfg.epochs, env.device, cfg.batch_size, open_tensorboard(save_dir))
    warmup_iters = build.warmup_iterations(cfg, hyp, len(data.train_loader))
    parts = (model, ema, optim, data, ctx, reporter, signals, stride, warmup_iters)
    run = Run(cfg, env, hyp, save_dir, *parts, start_epoch=restored.start_epoch, start_batch=restored.start_batch)
    return run, RunProgress(restored.best_fitness, restored.maps)


def note_path(cfg: TrainConfig, env: DistEnv) -> Path:
    # The run's name too: one SLURM job (one key) may run several trainings one after the other.
    return Path(cfg.project) / f".restart-{env.job_key}-{cfg.name}"


def continue_after_restart(cfg: TrainConfig, env: DistEnv) -> TrainConfig:
    """On a restart round (torchrun) or a requeued SLURM job, ``cfg`` resuming this launch's last.pt
    (unchanged when there is none yet)."""
    if (env.restart_count == 0 and env.requeues == 0) or cfg.resume:
        return cfg
    round_ = f"restart {env.restart_count}" if env.restart_count else f"requeue {env.requeues} of SLURM job"
    last = None
    if env.is_main:
        with contextlib.suppress(OSError):
            candidate = Path(note_path(cfg, env).read_text(encoding="utf-8").strip()) / "weights" / "last.pt"
            last = str(candidate) if candidate.is_file() else None
    last = collectives.broadcast_object(last, env)  # only node 0 can read the note
    if last is None:
        LOGGER.info(f"{round_}: this launch saved no checkpoint yet; training from the start")
        return cfg
    LOGGER.info(f"{round_}: continuing this launch's run from {last}")
    return dataclasses.replace(cfg, resume=last)


def remember_run(cfg: TrainConfig, env: DistEnv, save_dir: Path) -> None:
    """Rank 0 of a launch that may be restarted notes its run directory for the next round."""
    if env.is_main and env.max_restarts > 0:
        atomic_write_text(note_path(cfg, env), str(save_dir.resolve()))


def forget_run(cfg: TrainConfig, env: DistEnv) -> None:
    """Training finished: a later launch on the same address and port must not continue this run."""
    if env.is_main and env.max_restarts > 0:
        note_path(cfg, env).unlink(missing_ok=True)
