"""Atomic writes: the old file survives every failure, no temp file is left, stale temps are cleaned."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from yolodist.utils import io as io_utils
from yolodist.utils.io import (
    atomic_copy,
    atomic_open,
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    cleanup_stale_tmp,
    temp_path_for,
)


def leftovers(directory):
    return sorted(p.name for p in directory.glob(".*.tmp"))


def dead_pid() -> int:
    cmd = [sys.executable, "-c", "import os; print(os.getpid())"]
    proc = subprocess.run(cmd, capture_output=True, check=True)
    return int(proc.stdout)


def test_write_bytes_and_text_replace_content(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "first")
    atomic_write_bytes(path, b"second \xff")
    assert path.read_bytes() == b"second \xff"
    atomic_write_text(path, "é")
    assert path.read_text(encoding="utf-8") == "é"
    assert leftovers(tmp_path) == []


def test_temp_name_is_hidden_beside_the_target(tmp_path):
    tmp = temp_path_for(tmp_path / "last.pt")
    assert tmp.parent == tmp_path and tmp.name == f".last.pt.{os.getpid()}.tmp"


def test_atomic_save_round_trip_weights_only(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "n": 3}
    atomic_save(obj, tmp_path / "x.pt")
    back = torch.load(tmp_path / "x.pt", weights_only=True)
    torch.testing.assert_close(back["w"], obj["w"])
    assert back["n"] == 3 and leftovers(tmp_path) == []


def test_hook_failure_mid_write_keeps_old_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"gen": torch.tensor(1)}, path)
    before = path.read_bytes()

    def break_mid_write(f):
        f.write(b"garbage")  # the temp file is now corrupt; it must never become last.pt
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_save({"gen": torch.tensor(2)}, path, _hook=break_mid_write)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_torch_save_raising_half_way_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"gen": torch.tensor(1)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f):
        real_save(obj, f)
        f.seek(f.tell() // 2)
        f.truncate()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(io_utils.torch, "save", half_then_fail)
    with pytest.raises(OSError, match=str(path)) as info:
        atomic_save({"gen": torch.tensor(2)}, path)
    assert info.value.errno == errno.EIO
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_disk_full_names_the_path_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_write_bytes(path, b"old")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.os, "fsync", disk_full)
    with pytest.raises(OSError) as info:
        atomic_save({"x": torch.ones(10)}, path)
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value) and "No space left" in str(info.value)
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_write_failing_inside_torch_save_is_the_oserror_not_torchs_runtimeerror(tmp_path, monkeypatch):
    """torch.save reports a failed write as "[enforce fail ...] PytorchStreamWriter failed writing"."""
    path = tmp_path / "last.pt"
    atomic_write_bytes(path, b"old")
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if self.f.tell() + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: FullFile(real_open(*a, **k)))
    with pytest.raises(OSError) as info:
        atomic_save({"x": torch.ones(100_000)}, path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and not isinstance(info.value.__cause__, RuntimeError)
    assert f"could not write {path}: No space left on device (" in str(info.value)
    assert "MB free on the disk of" in str(info.value)
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_permission_error_keeps_its_kind(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io_utils.os, "replace", refuse)
    with pytest.raises(PermissionError, match=r"a\.bin"):
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert leftovers(tmp_path) == []


def test_interrupt_removes_temp_and_propagates(tmp_path):
    def ctrl_c(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save({"x": torch.ones(1)}, tmp_path / "a.pt", _hook=ctrl_c)
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_streams_into_place_and_leaves_errors_as_they_are(tmp_path):
    path = tmp_path / "a.bin"
    with atomic_open(path) as f:
        f.write(b"part 1, ")
        assert not path.exists()  # nothing at the name until the block ends
        f.write(b"part 2")
    assert path.read_bytes() == b"part 1, part 2"
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    with pytest.raises(ConnectionResetError) as caught, atomic_open(path) as f:
        f.write(b"half")
        raise reset  # e.g. a download that breaks off: the caller words that error, not the writer
    assert caught.value is reset
    assert path.read_bytes() == b"part 1, part 2" and leftovers(tmp_path) == []


def test_atomic_copy_is_a_snapshot(tmp_path):
    src, dst = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    atomic_write_bytes(src, b"generation 1")
    atomic_copy(src, dst)
    atomic_write_bytes(src, b"generation 2")  # replacing src must not change the copy
    assert dst.read_bytes() == b"generation 1"
    atomic_copy(src, dst)  # an existing destination is replaced
    assert dst.read_bytes() == b"generation 2" and leftovers(tmp_path) == []


def test_atomic_copy_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(io_utils.os, "link", no_links)
    atomic_write_bytes(tmp_path / "a", b"data")
    atomic_copy(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"data" and leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="missing"):
        atomic_copy(tmp_path / "missing", tmp_path / "c")


def test_cleanup_removes_only_stale_temp_files(tmp_path):
    stale = tmp_path / f".last.pt.{dead_pid()}.tmp"
    stale.write_bytes(b"half")
    mine = temp_path_for(tmp_path / "best.pt")  # a live writer (this process): kept
    mine.write_bytes(b"in progress")
    other = tmp_path / ".notes.tmp"  # not our naming pattern: kept
    other.write_bytes(b"x")
    keep = tmp_path / "last.pt"
    keep.write_bytes(b"good")
    assert cleanup_stale_tmp(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name, "last.pt"])
    assert cleanup_stale_tmp(tmp_path / "absent") == []


_SLOW_WRITER = """
import sys, time, torch
from yolodist.utils.io import atomic_save
def slow(f):
    print("writing", flush=True)
    time.sleep(60)
atomic_save({"gen": torch.tensor(2), "big": torch.zeros(1000)}, sys.argv[1], _hook=slow)
"""


def test_killed_writer_leaves_old_file_and_a_cleanable_temp(tmp_path):
    """RELIABILITY F10: SIGKILL during a checkpoint write."""
    path = tmp_path / "last.pt"
    atomic_save({"gen": torch.tensor(1)}, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _SLOW_WRITER, str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"  # the temp file holds the new data now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert leftovers(tmp_path) == [f".last.pt.{proc.pid}.tmp"]
    assert torch.load(path, weights_only=True)["gen"].item() == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not cleanup_stale_tmp(tmp_path):
        time.sleep(0.1)  # the pid can look alive for an instant after SIGKILL
    assert leftovers(tmp_path) == []
