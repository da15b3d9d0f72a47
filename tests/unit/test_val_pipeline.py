"""The validation settings and pipeline training and val.py share, in one process (no launcher)."""

from __future__ import annotations

import pytest
import torch

from yolodist.config.schema import TrainConfig, ValConfig
from yolodist.data.spec import load_data_spec
from yolodist.distributed.env import DistEnv
from yolodist.errors import BadFlag
from yolodist.eval.pipeline import build_val_loader, rank_batch, run_val
from yolodist.utils.devices import local_accelerators, select_device


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "study"}, "speed/accuracy study is not supported"),
        ({"task": "train"}, "--task 'train' is not one of val, test, speed"),
        ({"weights": ("a.pt", "b.pt")}, "model ensembles are not supported"),
        ({"batch_size": 0}, "--batch-size and --img must be positive"),
        ({"imgsz": 0}, "--batch-size and --img must be positive"),
        ({"conf_thres": 1.5}, "between 0 and 1"),
        ({"iou_thres": -0.1}, "between 0 and 1"),
    ],
)
def test_val_config_refuses_bad_settings_in_one_line(changes, message):
    with pytest.raises(BadFlag, match=message) as info:
        ValConfig(**changes)
    assert "\n" not in str(info.value)


def test_val_config_checks_in_val_py_order():
    # A bad task is reported before an ensemble, as val.py always did.
    with pytest.raises(BadFlag, match="--task"):
        ValConfig(task="x", weights=("a.pt", "b.pt"))


def test_speed_task_times_at_deployment_thresholds_and_saves_nothing():
    cfg = ValConfig(task="speed", save_json=True, save_txt=True).for_task()
    assert (cfg.conf_thres, cfg.iou_thres, cfg.save_json, cfg.save_txt) == (0.25, 0.45, False, False)
    assert not cfg.plots
    assert ValConfig(save_json=True).for_task() == ValConfig(save_json=True)
    assert ValConfig().plots and not ValConfig(noplots=True).plots


def test_training_validates_at_twice_the_batch_with_val_py_thresholds():
    cfg = TrainConfig(batch_size=8, imgsz=96, workers=2, single_cls=True).val_config()
    assert (cfg.batch_size, cfg.imgsz, cfg.workers, cfg.single_cls) == (16, 96, 2, True)
    assert (cfg.conf_thres, cfg.iou_thres, cfg.max_det, cfg.task) == (0.001, 0.6, 300, "val")


@pytest.mark.parametrize(("batch", "world", "share"), [(4, 1, 4), (6, 2, 3), (3, 2, 2), (1, 4, 1)])
def test_every_rank_gets_the_same_share_rounded_up(batch, world, share):
    assert rank_batch(batch, world) == share


def test_the_loader_shards_the_split_like_val_py(tiny_shapes):
    spec = load_data_spec(tiny_shapes)
    # Rank 1 of 2 without a process group: main_first is an identity outside a launch.
    env = DistEnv(rank=1, local_rank=1, world_size=2, local_world_size=2)
    loader = build_val_loader(ValConfig(batch_size=3, imgsz=64, workers=0), env, spec.val, 32, spec.nc)
    assert loader.batch_sampler.batch_size == 4 and loader.batch_sampler.per_rank == 2
    assert loader.dataset.prefix == "val: " and not loader.dataset.augment
    imgs, _targets, paths, _shapes, _hsv = next(iter(loader))
    assert imgs.shape[0] == 2 and len(paths) == 2


def test_run_val_reports_before_it_plots(tiny_shapes, tmp_path):
    spec = load_data_spec(tiny_shapes)
    env = DistEnv()
    cfg = ValConfig(batch_size=4, imgsz=64, workers=0)
    loader = build_val_loader(cfg, env, spec.val, 32, spec.nc)

    def nothing_found(imgs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(imgs.shape[0], 10, 5 + spec.nc)

    seen = []

    def report(result):
        seen.append((result.images, (tmp_path / "confusion_matrix.png").exists()))

    result = run_val(cfg, env, nothing_found, loader, list(spec.names), tmp_path, report=report)
    assert seen == [(8, False)]
    assert result.images == 8 and result.map == 0.0
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    assert (tmp_path / "val_batch0_labels.jpg").stat().st_size > 0


def test_run_val_draws_nothing_with_noplots(tiny_shapes, tmp_path):
    spec = load_data_spec(tiny_shapes)
    cfg = ValConfig(batch_size=4, imgsz=64, workers=0, noplots=True)
    loader = build_val_loader(cfg, DistEnv(), spec.val, 32, spec.nc)
    model = lambda imgs: torch.zeros(imgs.shape[0], 10, 5 + spec.nc)  # noqa: E731
    run_val(cfg, DistEnv(), model, loader, list(spec.names), tmp_path)
    assert not list(tmp_path.iterdir())


def test_one_device_for_one_model_commands():
    assert select_device("cpu") == torch.device("cpu")
    cuda_count, mps = local_accelerators()
    assert select_device("") == (torch.device("cuda", 0) if cuda_count else torch.device("cpu"))
    assert isinstance(mps, bool)
    with pytest.raises(BadFlag, match="--device"):
        select_device(str(cuda_count))  # one past the last visible GPU
