"""TrainingState: the dict round trip, the schema version, files older than the version key, and restore()."""

import dataclasses

import pytest
import torch
from torch import nn

from yolodist import __version__
from yolodist.checkpoint.files import load_checkpoint, save_checkpoint
from yolodist.checkpoint.restore import restore, resumed_settings
from yolodist.checkpoint.state import FORMAT, FORMAT_VERSION, TrainingState, build_checkpoint
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.engine.build import build_optim
from yolodist.engine.ema import ModelEMA
from yolodist.errors import BadCheckpoint, BadFlag

# The keys of the file training writes, in their order; upstream's names where upstream has them.
TRAINING_KEYS = [
    "format",
    "format_version",
    "version",
    "date",
    "epoch",
    "best_fitness",
    "model",
    "ema",
    "updates",
    "optimizer",
    "opt",
    "yaml",
    "names",
    "nc",
    "hyp",
    "scaler",
    "fitness",
    "batches_done",
    "maps",
]


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def trained(model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser training builds (its parameter groups), after one step: state with tensors."""
    opt = build_optim(model, TrainConfig(batch_size=16), Hyp(), torch.device("cpu")).optimizer
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    return opt


def training_state(net: nn.Module, averaged: nn.Module, **changes) -> TrainingState:
    state = TrainingState.new(
        model=net.state_dict(),
        ema=averaged.state_dict(),
        updates=7,
        optimizer=trained(net).state_dict(),
        epoch=2,
        best_fitness=0.25,
        opt={"epochs": 5, "batch_size": 16, "freeze": [0], "device": "cuda:3", "workers": 99},
        yaml={"nc": 2},
        names=["a", "b"],
        hyp={"lr0": 0.02},
        scaler={},
        fitness=0.125,
        batches_done=3,
        maps=[0.5, 0.75],
    )
    return dataclasses.replace(state, **changes)


def assert_same(a: object, b: object) -> None:
    """Equal values, tensors compared exactly, dict keys in the same order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_through_the_dict_and_the_file(tmp_path):
    state = training_state(tiny(), tiny(1))
    written = state.to_dict()
    assert list(written) == TRAINING_KEYS
    assert (written["format"], written["format_version"], written["version"]) == (FORMAT, FORMAT_VERSION, __version__)
    again = TrainingState.from_dict(written)
    for f in dataclasses.fields(TrainingState):
        assert_same(getattr(state, f.name), getattr(again, f.name))
    assert_same(again.to_dict(), written)
    save_checkpoint(state, tmp_path / "last.pt")
    assert_same(torch.load(tmp_path / "last.pt", weights_only=True), written)


def test_build_checkpoint_writes_the_same_layout():
    model = tiny()
    ckpt = build_checkpoint(
        model_state=model.state_dict(),
        ema_state=None,
        ema_updates=0,
        optimizer_state=None,
        epoch=-1,
        best_fitness=0.0,
        opt={},
        yaml={"nc": 2},
        names=["a", "b"],
        hyp={},
        extra={"stride": [8.0, 16.0, 32.0], "anything": "kept"},
    )
    assert list(ckpt) == [*TRAINING_KEYS[:15], "stride", "anything"]
    assert TrainingState.from_dict(ckpt).extra == {"anything": "kept"}
    assert TrainingState.from_dict(ckpt).stride == [8.0, 16.0, 32.0]


def test_a_newer_schema_is_refused_with_what_to_do(tmp_path):
    newer = {**training_state(tiny(), tiny()).to_dict(), "format_version": FORMAT_VERSION + 1}
    with pytest.raises(BadCheckpoint) as info:
        TrainingState.from_dict(newer, tmp_path / "last.pt")
    message = str(info.value)
    assert str(tmp_path / "last.pt") in message and f"format {FORMAT_VERSION + 1}" in message
    assert f"reads ({FORMAT_VERSION}); upgrade yolodist" in message
    with pytest.raises(BadCheckpoint, match="this checkpoint uses checkpoint format '2'"):
        TrainingState.from_dict({**newer, "format_version": "2"})  # not a version this yolodist wrote


def test_a_dict_older_than_the_version_key_still_loads(tmp_path):
    old = training_state(tiny(), tiny()).to_dict()
    del old["format"], old["format_version"]
    state = TrainingState.from_dict(old)
    assert (state.epoch, state.updates, state.names, state.extra) == (2, 7, ["a", "b"], {})
    assert state.to_dict()["format_version"] == FORMAT_VERSION  # written back in the current schema
    torch.save(old, tmp_path / "old.pt")
    assert TrainingState.from_dict(load_checkpoint(tmp_path / "old.pt")).batches_done == 3


def test_fields_a_file_lacks_are_left_out_when_written_back():
    """An older training file without the resume fields (or an upstream state dict) gains none of them."""
    state = TrainingState.from_dict({"model": tiny().state_dict(), "epoch": 4, "custom": 1})
    assert (state.scaler, state.batches_done, state.maps, state.best_fitness) == (None, None, None, None)
    assert list(state.to_dict())[-1] == "custom"
    assert not {"scaler", "fitness", "batches_done", "maps", "stride", "source"} & set(state.to_dict())
    assert not state.resumable


def test_restore_puts_back_everything_a_resume_needs():
    saved_model, saved_ema = tiny(1), tiny(2)
    state = training_state(saved_model, saved_ema)
    cfg, hyp = resumed_settings(TrainConfig(resume="last.pt", device="cpu", workers=1), state)
    assert (cfg.epochs, cfg.freeze, cfg.device, cfg.workers, hyp.lr0) == (5, (0,), "cpu", 1, 0.02)
    model = tiny(3)
    optim = build_optim(model, cfg, Hyp(), torch.device("cpu"))
    ema = ModelEMA(model)
    progress = restore(state, cfg, model=model, ema=ema, optim=optim, nc=2)
    assert (progress.start_epoch, progress.best_fitness, progress.start_batch) == (3, 0.25, 3)
    assert progress.maps.tolist() == [0.5, 0.75]
    assert_same(model.state_dict(), saved_model.state_dict())
    assert_same(ema.state_dict(), saved_ema.state_dict())
    assert ema.updates == 7 and optim.scheduler.last_epoch == 3
    assert state.optimizer["state"]  # momentum buffers
    assert_same(optim.optimizer.state_dict()["state"], state.optimizer["state"])


def test_restore_without_saved_ema_or_maps_starts_them_afresh():
    saved = tiny(1)
    state = training_state(saved, saved, ema=None, maps=[0.5], best_fitness=None, batches_done=None)
    cfg = TrainConfig(resume="last.pt", epochs=5, batch_size=16)
    model = tiny(3)
    ema = ModelEMA(model)
    progress = restore(
        state, cfg, model=model, ema=ema, optim=build_optim(model, cfg, Hyp(), torch.device("cpu")), nc=2
    )
    assert_same(ema.state_dict(), saved.state_dict())  # the average starts from the restored weights
    assert ema.updates == 0 and progress.maps.tolist() == [0.0, 0.0]  # maps of another class count: unusable
    assert (progress.best_fitness, progress.start_batch) == (0.0, 0)


def test_a_new_run_restores_nothing():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = training_state(tiny(1), tiny(2))
    cfg = TrainConfig(weights="w.pt", batch_size=16)
    optim = build_optim(model, cfg, Hyp(), torch.device("cpu"))
    for start in (None, state):  # from scratch, and from --weights (its weights went in at build time)
        progress = restore(start, cfg, model=model, ema=ModelEMA(model), optim=optim, nc=2)
        assert (progress.start_epoch, progress.best_fitness, progress.start_batch) == (0, 0.0, 0)
        assert progress.maps.tolist() == [0.0, 0.0]
    assert_same(model.state_dict(), before)


def test_a_finished_run_is_not_resumed():
    state = training_state(tiny(), tiny(), epoch=4)
    with pytest.raises(BadFlag, match="already finished all 5 epochs"):
        resumed_settings(TrainConfig(resume="runs/x/weights/last.pt"), state)
