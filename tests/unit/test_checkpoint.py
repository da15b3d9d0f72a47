"""Checkpoints: atomic writes, weights-only loading, clear errors, previous-generation fallback."""

import errno
import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from yolodist.engine.checkpoint import (
    PickledCheckpoint,
    build_checkpoint,
    load_checkpoint,
    load_latest_good,
    save_checkpoint,
    transfer_weights,
)
from yolodist.errors import BadCheckpoint
from yolodist.utils import io as io_utils
from yolodist.utils.io import atomic_save, cleanup_stale_tmp


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def ckpt_of(model: nn.Module, epoch: int = 0) -> dict:
    return build_checkpoint(
        model_state=model.state_dict(),
        ema_state=model.state_dict(),
        ema_updates=3,
        optimizer_state=None,
        epoch=epoch,
        best_fitness=0.5,
        opt={"epochs": 3},
        yaml={"nc": 2},
        names=["a", "b"],
        hyp={"lr0": 0.01},
    )


def test_round_trip_is_weights_only(tmp_path):
    model = tiny()
    path = tmp_path / "last.pt"
    save_checkpoint(ckpt_of(model), path)
    plain = torch.load(path, weights_only=True)  # no allowlist needed: nothing pickled but tensors
    assert plain["names"] == ["a", "b"] and plain["epoch"] == 0
    assert load_checkpoint(path)["model"].keys() == model.state_dict().keys()
    assert not list(tmp_path.glob(".*.tmp"))


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(ckpt_of(tiny(), epoch=1), path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(ckpt_of(tiny(), epoch=2), path, keep_previous=False)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_stale_temp_files_are_cleaned(tmp_path):
    (tmp_path / ".last.pt.123.tmp").write_bytes(b"half")
    assert len(cleanup_stale_tmp(tmp_path)) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\x00" * 10 + os.urandom(200), "not a readable checkpoint"),
    ],
)
def test_broken_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(BadCheckpoint, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_truncated_and_wrong_content(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(ckpt_of(tiny()), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BadCheckpoint, match="truncated or corrupt"):
        load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(BadCheckpoint, match="not a yolodist or YOLOv5 checkpoint"):
        load_checkpoint(other)
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(BadCheckpoint):
        load_checkpoint(tmp_path / "z.pt")
    with pytest.raises(BadCheckpoint, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_pickled_code_is_refused_without_running(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(sentinel))}, path)
    sentinel.unlink(missing_ok=True)  # torch.save does not call __reduce__'s result, but be sure
    with pytest.raises(PickledCheckpoint, match="pickled"):
        load_checkpoint(path)
    assert not sentinel.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(str(sentinel))))
    with pytest.raises(BadCheckpoint):
        load_checkpoint(raw)
    assert not sentinel.exists()


def test_previous_generation_fallback(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(ckpt_of(tiny(), epoch=1), path)
    save_checkpoint(ckpt_of(tiny(), epoch=2), path)
    assert (tmp_path / "last.prev.pt").is_file()
    path.write_bytes(path.read_bytes()[:100])  # a crash mid-write of a non-atomic writer
    ckpt, used = load_latest_good(path)
    assert used.name == "last.prev.pt" and ckpt["epoch"] == 1


def test_transfer_counts_matches_and_exclusions():
    src, dst = tiny(), tiny()
    state = src.state_dict()
    state["2.weight"] = torch.zeros(5, 4, 1, 1)  # shape mismatch: skipped
    done, total = transfer_weights(dst, state)
    assert (done, total) == (len(state) - 1, len(dst.state_dict()))
    done, _ = transfer_weights(dst, src.state_dict(), exclude=["1."])
    assert done == len(src.state_dict()) - 5  # BatchNorm's five tensors excluded
    torch.testing.assert_close(dst[0].weight, src[0].weight)


def test_atomic_save_hook_sees_the_bytes(tmp_path):
    seen = []
    atomic_save({"x": torch.ones(1)}, tmp_path / "a.pt", _hook=lambda b: seen.append(len(b)) or b)
    assert seen and (tmp_path / "a.pt").stat().st_size == seen[0]
