"""Checkpoints: weights-only round trip, clear errors naming the file, previous-generation fallback,
weight transfer counts, release stripping."""

import errno
import logging
import os
import pickle
import random
import types
import zipfile

import pytest
import torch
from torch import nn

from yolodist import __version__
from yolodist.checkpoint.files import (
    PickledCheckpoint,
    load_checkpoint,
    load_latest_good,
    previous_path,
    save_checkpoint,
    strip_for_release,
)
from yolodist.checkpoint.state import FORMAT, FORMAT_VERSION, build_checkpoint
from yolodist.checkpoint.weights import transfer_weights
from yolodist.engine.saving import release_best
from yolodist.errors import BadCheckpoint, UserError
from yolodist.utils import io as io_utils


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def ckpt_of(model: nn.Module, epoch: int = 0, ema: nn.Module | None = None) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()  # momentum buffers: optimizer state with tensors
    return build_checkpoint(
        model_state=model.state_dict(),
        ema_state=(ema or model).state_dict(),
        ema_updates=3,
        optimizer_state=opt.state_dict(),
        epoch=epoch,
        best_fitness=0.5,
        opt={"epochs": 3, "imgsz": 64, "freeze": [0]},
        yaml={"nc": 2, "backbone": [[-1, 1, "Conv", [16, 3]]]},
        names=["a", "b"],
        hyp={"lr0": 0.01},
        extra={"stride": [8.0, 16.0, 32.0]},
    )


def test_layout_and_plain_weights_only_load(tmp_path):
    model = tiny()
    path = tmp_path / "last.pt"
    save_checkpoint(ckpt_of(model, epoch=4), path)
    plain = torch.load(path, weights_only=True)  # no allowlist: nothing but tensors and plain data
    assert plain["format"] == FORMAT and plain["format_version"] == FORMAT_VERSION
    assert plain["version"] == __version__ and plain["date"][:2] == "20"
    assert (plain["epoch"], plain["nc"], plain["names"], plain["updates"]) == (4, 2, ["a", "b"], 3)
    assert plain["stride"] == [8.0, 16.0, 32.0] and plain["opt"]["freeze"] == [0]
    loaded = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value), key
    fresh = tiny()
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(loaded["optimizer"])  # the optimizer state round-trips too
    assert list(tmp_path.iterdir()) == [path]  # first save: no .prev, no temp


def _write(path, content):
    path.write_bytes(content)
    return path


def test_missing_empty_directory(tmp_path):
    cases = [
        (tmp_path / "missing.pt", "does not exist"),
        (_write(tmp_path / "empty.pt", b""), r"is empty \(0 bytes\)"),
        (tmp_path, "is a directory"),
    ]
    for path, message in cases:
        with pytest.raises(BadCheckpoint, match=message) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.95])
def test_truncated_file_is_reported_as_such(tmp_path, keep):
    good = tmp_path / "good.pt"
    save_checkpoint(ckpt_of(tiny()), good)
    data = good.read_bytes()
    cut = _write(tmp_path / "cut.pt", data[: int(len(data) * keep)])
    with pytest.raises(BadCheckpoint, match="is truncated or corrupt") as info:
        load_checkpoint(cut)
    assert str(cut) in str(info.value) and "Errno" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        random.Random(0).randbytes(300),
        b"\x00" * 10 + random.Random(1).randbytes(200),
        b"hello, this is a text file\n",
        pickle.dumps({"a": 1}),
    ],
    ids=["random", "zeros+random", "text", "raw-pickle"],
)
def test_unrecognised_content_names_the_file(tmp_path, content):
    path = _write(tmp_path / "w.pt", content)
    with pytest.raises(BadCheckpoint, match="is not a PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_valid_files_that_are_not_checkpoints(tmp_path):
    cases = {
        "tensor.pt": torch.ones(3),
        "dict.pt": {"weights": torch.ones(2)},
        "model-none.pt": {"model": None},
        "model-not-tensors.pt": {"model": {"a": [1, 2]}},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(BadCheckpoint, match="is not a yolodist or YOLOv5 checkpoint") as info:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(BadCheckpoint, match="zip archive but not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "z.pt")


def test_newer_format_is_refused(tmp_path):
    ckpt = ckpt_of(tiny())
    ckpt["format_version"] = FORMAT_VERSION + 1
    save_checkpoint(ckpt, tmp_path / "new.pt")
    with pytest.raises(BadCheckpoint, match="upgrade yolodist"):
        load_checkpoint(tmp_path / "new.pt")


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        # Unpickling this calls os.mkdir(sentinel): proof that code ran.
        return (os.mkdir, (self.sentinel,))


def test_pickled_code_is_refused_without_running(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(sentinel))}, path)
    assert not sentinel.exists()  # saving does not run it
    with pytest.raises(PickledCheckpoint, match="pickled Python objects") as info:
        load_checkpoint(path)
    assert not sentinel.exists()
    message = str(info.value)
    assert str(path) in message and "upstream-compatibility loader" in message and "mkdir" in message
    assert isinstance(info.value, BadCheckpoint) and isinstance(info.value, UserError)
    assert info.value.path == path and info.value.global_name.endswith("mkdir")
    # Exceptions cross process boundaries (torch.multiprocessing, spawn): they must unpickle.
    assert str(pickle.loads(pickle.dumps(info.value))) == message


def test_whole_module_checkpoint_is_pickled_not_corrupt(tmp_path):
    """Upstream YOLOv5 stores whole modules; that must be told apart from damage (compat loader's job)."""
    path = tmp_path / "yolov5s.pt"
    torch.save({"model": tiny(), "epoch": -1}, path)
    with pytest.raises(PickledCheckpoint, match="Sequential"):
        load_checkpoint(path)
    with pytest.raises(PickledCheckpoint):
        load_latest_good(path)  # no fallback: the file is not damaged


def test_previous_generation_is_kept_and_used(tmp_path, caplog):
    path = tmp_path / "last.pt"
    save_checkpoint(ckpt_of(tiny(), epoch=1), path)
    save_checkpoint(ckpt_of(tiny(), epoch=2), path)
    assert previous_path(path) == tmp_path / "last.prev.pt"
    assert torch.load(tmp_path / "last.prev.pt", weights_only=True)["epoch"] == 1
    ckpt, used = load_latest_good(path)
    assert (used, ckpt["epoch"]) == (path, 2)
    path.write_bytes(path.read_bytes()[:100])  # damaged at rest after the write
    with caplog.at_level(logging.WARNING):
        ckpt, used = load_latest_good(path)
    assert used == tmp_path / "last.prev.pt" and ckpt["epoch"] == 1
    assert str(path) in caplog.text and "truncated" in caplog.text


def test_fallback_fails_clearly_when_both_are_bad(tmp_path):
    path = _write(tmp_path / "last.pt", b"")
    with pytest.raises(BadCheckpoint, match="is empty"):
        load_latest_good(path)  # no previous generation: the original error
    _write(tmp_path / "last.prev.pt", random.Random(2).randbytes(64))
    with pytest.raises(BadCheckpoint, match="previous generation is unusable too") as info:
        load_latest_good(path)
    assert str(path) in str(info.value) and "last.prev.pt" in str(info.value)


def test_keep_previous_false_and_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint(ckpt_of(tiny(), epoch=1), path, keep_previous=False)
    save_checkpoint(ckpt_of(tiny(), epoch=2), path, keep_previous=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.torch, "save", disk_full)
    with pytest.raises(OSError, match=r"best\.pt") as info:
        save_checkpoint(ckpt_of(tiny(), epoch=3), path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_transfer_counts_shape_mismatch_and_exclusions():
    src, dst = tiny(), tiny()
    state = dict(src.state_dict())
    total = len(dst.state_dict())  # conv0 w; bn w, b, mean, var, count; conv2 w, b -> 8
    assert total == 8
    state["2.weight"] = torch.zeros(5, 4, 1, 1)  # shape mismatch: skipped
    state["extra.key"] = torch.zeros(1)  # not in the model: skipped, not counted
    state["1.weight"] = state["1.weight"].half()  # dtype differs: transferred and cast
    assert transfer_weights(dst, state) == (total - 1, total)
    torch.testing.assert_close(dst[0].weight, src[0].weight)
    assert dst[1].weight.dtype == torch.float32
    assert not torch.equal(dst[2].weight, torch.zeros(2, 4, 1, 1))

    dst = tiny()
    before = dst[1].running_var.clone()
    done, _ = transfer_weights(dst, src.state_dict(), exclude=["1.", "bias"])
    assert done == total - 5 - 1  # BatchNorm's five tensors and the conv bias excluded
    assert torch.equal(dst[1].running_var, before)
    assert transfer_weights(tiny(), {}) == (0, total)


def test_strip_for_release_keeps_ema_in_half(tmp_path):
    model, ema = tiny(), tiny()
    ema[1].num_batches_tracked.fill_(9)
    path = tmp_path / "best.pt"
    save_checkpoint(ckpt_of(model, epoch=7, ema=ema), path)
    out = strip_for_release(path, tmp_path / "release.pt")
    plain = torch.load(out, weights_only=True)
    for key, value in ema.state_dict().items():
        got = plain["model"][key]
        if value.is_floating_point():
            assert got.dtype == torch.float16
            torch.testing.assert_close(got.float(), value, atol=1e-3, rtol=1e-3)
        else:
            assert torch.equal(got, value)  # num_batches_tracked stays an integer
    assert plain["optimizer"] is None and plain["ema"] is None and plain["updates"] is None
    assert plain["epoch"] == -1 and plain["names"] == ["a", "b"]
    assert out.stat().st_size < path.stat().st_size
    assert load_checkpoint(path)["epoch"] == 7  # the source is untouched when out is given
    fresh = tiny()
    assert transfer_weights(fresh, load_checkpoint(out)["model"]) == (8, 8)  # seeds a new run
    assert strip_for_release(path) == path and load_checkpoint(path)["epoch"] == -1  # in place


def _run_with_best(save_dir):
    """A finished run's folder holding a full best.pt (model, EMA, optimizer) of a YOLOv5n-sized model."""
    from yolodist.models import Model

    model, ema = Model("yolov5n.yaml", nc=3), Model("yolov5n.yaml", nc=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sum(o.sum() for o in model(torch.zeros(1, 3, 64, 64))).backward()
    opt.step()  # momentum buffers: an optimizer state as large as the model
    ckpt = build_checkpoint(
        model_state=model.state_dict(), ema_state=ema.state_dict(), ema_updates=3, optimizer_state=opt.state_dict(),
        epoch=4, best_fitness=0.5, opt={"epochs": 5}, yaml=model.yaml, names=["a", "b", "c"], hyp={"lr0": 0.01},
    )  # fmt: skip
    (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, save_dir / "weights" / "best.pt", keep_previous=False)
    return types.SimpleNamespace(save_dir=save_dir), ema


def test_release_best_strips_best_pt_as_upstream_does(tmp_path, caplog):
    run, ema = _run_with_best(tmp_path / "exp")
    best = run.save_dir / "weights" / "best.pt"
    before = best.stat().st_size
    with caplog.at_level(logging.INFO):
        release_best(run)
    plain = torch.load(best, weights_only=True)
    assert plain["optimizer"] is None and plain["ema"] is None and plain["epoch"] == -1
    ema_state = ema.state_dict()
    assert all(v.dtype == torch.float16 for k, v in plain["model"].items() if ema_state[k].is_floating_point())
    assert best.stat().st_size < before / 2
    assert f"Optimizer stripped from {best}" in caplog.text
    assert sorted(p.name for p in best.parent.iterdir()) == ["best.pt"]  # no temp file, no previous generation
    release_best(types.SimpleNamespace(save_dir=tmp_path / "none"))  # a run that never saved a best.pt: nothing


def test_release_best_on_a_full_disk_keeps_best_pt_whole(tmp_path, caplog):
    """The stripped copy cannot be written on a really full filesystem: best.pt stays as it was, one warning."""
    from tests.conftest import tmpfs

    staged, _ = _run_with_best(tmp_path / "staged")
    size = (staged.save_dir / "weights" / "best.pt").stat().st_size
    with tmpfs(tmp_path / "exp" / "weights", size + 64 * 1024) as weights:  # room for best.pt, not its stripped copy
        (weights / "best.pt").write_bytes((staged.save_dir / "weights" / "best.pt").read_bytes())
        original = (weights / "best.pt").read_bytes()
        with caplog.at_level(logging.WARNING):
            release_best(types.SimpleNamespace(save_dir=tmp_path / "exp"))
        assert (weights / "best.pt").read_bytes() == original
        assert load_checkpoint(weights / "best.pt")["optimizer"] is not None
        assert sorted(p.name for p in weights.iterdir()) == ["best.pt"]  # the partial temp file is gone
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "No space left on device" in warning and "best.pt keeps its optimizer state" in warning
