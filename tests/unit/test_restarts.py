"""A restarted launch finds its own run: the note rank 0 leaves, and what a restart round does with it."""

from __future__ import annotations

import dataclasses

from yolodist.config.schema import TrainConfig
from yolodist.distributed.env import DistEnv
from yolodist.engine.run import continue_after_restart, forget_run, remember_run


def launch(round_: int, max_restarts: int = 1) -> DistEnv:
    return DistEnv(restart_count=round_, max_restarts=max_restarts, job_key="127.0.0.1-29500-none")


def test_a_restart_round_resumes_the_noted_runs_last_checkpoint(tmp_path):
    cfg = TrainConfig(project=str(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "exp3"
    (run_dir / "weights").mkdir(parents=True)
    remember_run(cfg, launch(0), run_dir)
    assert continue_after_restart(cfg, launch(1)) == cfg  # noted, but nothing saved yet
    (run_dir / "weights" / "last.pt").write_bytes(b"checkpoint")
    resumed = continue_after_restart(cfg, launch(1))
    assert resumed == dataclasses.replace(cfg, resume=str(run_dir.resolve() / "weights" / "last.pt"))
    assert continue_after_restart(cfg, launch(0)) == cfg  # the first round never resumes
    forget_run(cfg, launch(1))
    assert continue_after_restart(cfg, launch(2)) == cfg  # a finished run is not continued
    assert not list((tmp_path / "runs").glob(".restart-*"))


def test_no_note_without_restarts_and_an_explicit_resume_wins(tmp_path):
    cfg = TrainConfig(project=str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    remember_run(cfg, launch(0, max_restarts=0), tmp_path / "runs" / "exp")
    assert not list((tmp_path / "runs").glob(".restart-*"))
    explicit = dataclasses.replace(cfg, resume="runs/train/exp/weights/last.pt")
    assert continue_after_restart(explicit, launch(1)) == explicit
