"""The node-wide image cache file: identical samples, keys, leftovers of killed jobs, no room, no memory."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, tmpfs
from tests.unit.test_dataset import make_set
from yolodist.config.schema import Hyp
from yolodist.data import imcache
from yolodist.data.dataset import YoloDataset

KEYS = [(0, 0), (0, 3), (1, 3), (2, 6), (0, 7)]


@pytest.fixture
def src(tmp_path):
    return make_set(tmp_path)


@pytest.fixture
def shm(tmp_path, monkeypatch):
    where = tmp_path / "shm"
    where.mkdir()
    monkeypatch.setenv(imcache.SHM_ENV, str(where))
    return where


def dataset(src, size=48, augment=True, cache=None, prepare=True):
    extra = {"hyp": Hyp()} if augment else {"rect": True, "pad": 0.5, "batch_size": 4}
    ds = YoloDataset([src], size, augment=augment, seed=2, cache_images=cache, **extra)
    if prepare:
        ds.prepare_cache()
    return ds


@pytest.mark.parametrize("mode", ["ram", "disk"])
@pytest.mark.parametrize("augment", [True, False], ids=["train", "val"])
@pytest.mark.parametrize("size", [48, 64, 96], ids=["down", "same", "up"])
def test_cached_samples_are_the_decoded_samples(src, shm, mode, augment, size):
    plain = dataset(src, size, augment)
    cached = dataset(src, size, augment, cache=mode)
    assert cached.image_cache is not None and cached.image_cache.complete == len(cached)
    for key in KEYS if augment else range(len(cached)):
        a, b = plain[key], cached[key]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    img, hw0 = cached.image_cache.get(3)
    assert not img.flags.writeable  # a view of the shared pages: augmentations must copy
    assert hw0 == tuple(int(v) for v in cached.shapes[3][::-1])


def test_ram_cache_lives_in_the_shm_folder_and_disk_cache_beside_the_labels(src, tmp_path, shm, caplog):
    with caplog.at_level(logging.INFO):
        ram = dataset(src, cache="ram")
    assert [p.name for p in shm.iterdir()] == [ram.image_cache.path.name]
    assert ram.image_cache.path.name.startswith("yolodist-") and "every process on this node" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        disk = dataset(src, cache="disk")
        again = dataset(src, cache="disk")
    assert disk.image_cache.path == tmp_path / "labels.48-linear.imcache" == again.image_cache.path
    assert "cached 8/8 images" in caplog.text and "using the image cache" in caplog.text  # built once, reused
    assert not [p for p in src.iterdir() if p.suffix not in (".png",)]  # nothing among the user's images
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_an_image_changed_after_caching_is_not_read_stale(src, shm, mode):
    first = dataset(src, cache=mode)
    old = first.image_cache.path
    f = src / "3.png"
    Image.fromarray(np.full((46, 64, 3), 200, np.uint8)).save(f)  # same size: only the key tells
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime even on a coarse clock
    plain, cached = dataset(src), dataset(src, cache=mode)
    assert cached.image_cache.complete == len(cached)
    for key in [(0, 3), (1, 3), (4, 3)]:
        assert torch.equal(plain[key][0], cached[key][0])
    if mode == "ram":
        assert cached.image_cache.path != old  # another key, another file
    else:
        assert cached.image_cache.path == old  # rebuilt in place (the old readers keep their inode)


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_killed_jobs_leftovers_are_reused_or_removed(src, shm, caplog):
    env = {imcache.SHM_ENV: str(shm)}
    # A job SIGKILLed in the middle of writing its cache, then one SIGKILLed once its cache was complete.
    half = _run(
        f"""
        import os, signal
        from yolodist.config.schema import Hyp
        from yolodist.data.dataset import YoloDataset
        ds = YoloDataset([{str(src)!r}], 40, augment=True, hyp=Hyp(), seed=2, cache_images="ram")
        calls, decode = [], ds._decode_resize
        def dying(i):
            calls.append(i)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return decode(i)
        ds._decode_resize = dying
        ds.prepare_cache(threads=1)
        """,
        env,
    )
    assert half.returncode == -signal.SIGKILL, half.stderr
    assert len(list(shm.glob(".*.partial"))) == 1
    done = _run(
        f"""
        import os, signal
        from yolodist.config.schema import Hyp
        from yolodist.data.dataset import YoloDataset
        ds = YoloDataset([{str(src)!r}], 48, augment=True, hyp=Hyp(), seed=2, cache_images="ram")
        ds.prepare_cache()
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        env,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    complete = list(shm.iterdir())  # the partial is gone: its writer held no lock any more
    assert len(complete) == 1 and complete[0].name.endswith(".imcache")
    # A cache of another dataset that a live job still maps stays where it is.
    stale_other = shm / "yolodist-00000000000000000000.imcache"
    stale_other.write_bytes(b"x" * 100)
    live_other = shm / "yolodist-11111111111111111111.imcache"
    live_other.write_bytes(b"y" * 100)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,time;f=open({str(live_other)!r});fcntl.flock(f,fcntl.LOCK_SH);"
         "print('held',flush=True);time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.INFO):
            ds = dataset(src, cache="ram")
        assert "using the image cache" in caplog.text and ds.image_cache.path == complete[0]
        assert sorted(shm.iterdir()) == sorted([complete[0], live_other])
        plain = dataset(src)
        for key in KEYS:
            assert torch.equal(plain[key][0], ds[key][0])
    finally:
        holder.kill()
        holder.wait()


def test_the_cache_in_memory_is_removed_when_the_job_ends(src, shm):
    done = _run(
        f"""
        from yolodist.config.schema import Hyp
        from yolodist.data.dataset import YoloDataset
        ds = YoloDataset([{str(src)!r}], 48, augment=True, hyp=Hyp(), seed=2, cache_images="ram")
        ds.prepare_cache()
        assert ds.image_cache is not None and ds.image_cache.path.exists()
        """,
        {imcache.SHM_ENV: str(shm)},
    )
    assert done.returncode == 0, done.stderr
    assert list(shm.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "small", "64k") as where:
        monkeypatch.setenv(imcache.SHM_ENV, str(where))
        yield where


def test_a_full_shm_gives_one_line_and_no_cache(src, small_tmpfs, caplog):
    with caplog.at_level(logging.INFO, logger="yolodist"):
        ds = dataset(src, 64, cache="ram")  # 8 x 64 x ~50 x 3 bytes: more than 64 KB
    lines = [r.getMessage() for r in caplog.records if "caching" in r.getMessage()]
    assert len(lines) == 1 and "not caching images" in lines[0] and "free" in lines[0], lines
    assert ds.image_cache is None and list(small_tmpfs.iterdir()) == []
    plain = dataset(src, 64)
    assert torch.equal(plain[(0, 3)][0], ds[(0, 3)][0])


def test_no_room_found_while_writing_gives_one_line_and_leaves_nothing(src, small_tmpfs, caplog, monkeypatch):
    # The free-space check passes (another job could fill the disk after it); the write then fails.
    monkeypatch.setattr(imcache, "free_bytes", lambda _: 1 << 40)
    with caplog.at_level(logging.WARNING, logger="yolodist"):
        ds = dataset(src, 64, cache="ram")
    assert ds.image_cache is None and list(small_tmpfs.iterdir()) == []
    assert len(caplog.records) == 1 and "No space left on device" in caplog.records[0].getMessage()


def test_a_missing_shm_folder_gives_one_line(src, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(imcache.SHM_ENV, str(tmp_path / "nowhere"))
    with caplog.at_level(logging.WARNING, logger="yolodist"):
        ds = dataset(src, cache="ram")
    assert ds.image_cache is None and not (tmp_path / "nowhere").exists()
    assert len(caplog.records) == 1 and "does not exist" in caplog.records[0].getMessage()


def test_too_little_memory_gives_one_line(src, shm, monkeypatch, caplog):
    monkeypatch.setattr(imcache, "available_memory", lambda: 50_000)
    with caplog.at_level(logging.WARNING, logger="yolodist"):
        ds = dataset(src, 48, cache="ram")
    assert ds.image_cache is None and list(shm.iterdir()) == []
    message = caplog.records[0].getMessage()
    assert len(caplog.records) == 1 and "50.0 KB available" in message and "--cache disk" in message


def test_available_memory_reads_meminfo_and_the_tightest_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    v1 = tmp_path / "v1"
    (v1 / "memory" / "job" / "step").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited root
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text(f"{8 << 30}\n")
    (v1 / "memory" / "job" / "memory.usage_in_bytes").write_text(f"{5 << 30}\n")
    (v1 / "memory" / "job" / "step" / "memory.limit_in_bytes").write_text(f"{16 << 30}\n")
    (v1 / "memory" / "job" / "step" / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("5:cpu:/\n4:memory:/job/step\n0::/\n")
    assert imcache.available_memory(meminfo, proc, v1) == 3 << 30  # the parent's 8 GB limit binds
    v2 = tmp_path / "v2"
    (v2 / "pod").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("memory\n")
    (v2 / "pod" / "memory.max").write_text(f"{4 << 30}\n")
    (v2 / "pod" / "memory.current").write_text(f"{1 << 30}\n")
    proc.write_text("0::/pod\n")
    assert imcache.available_memory(meminfo, proc, v2) == 3 << 30
    (v2 / "pod" / "memory.max").write_text("max\n")
    assert imcache.available_memory(meminfo, proc, v2) == 20000000 * 1024
    assert imcache.available_memory(tmp_path / "none", tmp_path / "none", v2) is None


def test_a_pickled_dataset_reopens_the_cache_and_decodes_once_it_is_gone(src, shm):
    plain, ds = dataset(src), dataset(src, cache="ram")
    worker = pickle.loads(pickle.dumps(ds))  # what a spawned data worker receives
    assert worker.image_cache is not ds.image_cache and worker.image_cache.get(3) is not None
    assert torch.equal(plain[(1, 3)][0], worker[(1, 3)][0])
    ds.image_cache.path.unlink()
    late = pickle.loads(pickle.dumps(ds))
    assert late.image_cache.get(3) is None  # removed: decode from the files
    assert torch.equal(plain[(1, 3)][0], late[(1, 3)][0])


def test_other_processes_only_open_what_the_first_one_made(src, shm):
    waiting = dataset(src, cache="ram", prepare=False)
    waiting.prepare_cache(build=False)
    assert waiting.image_cache is None and list(shm.iterdir()) == []  # nothing built by a non-builder
    dataset(src, cache="ram")
    waiting.prepare_cache(build=False)
    assert waiting.image_cache is not None and waiting.image_cache.complete == len(waiting)


def test_an_image_that_breaks_before_caching_is_left_to_the_loader(src, shm):
    ds = dataset(src, cache="ram", prepare=False)
    (src / "5.png").write_bytes(b"broken")  # after the scan, before the cache is filled
    ds.prepare_cache()
    assert ds.image_cache.complete == len(ds) - 1 and ds.image_cache.get(5) is None
    assert not ds[5][2].endswith("5.png") and sum(ds.load_failures.values()) == 1  # the usual fallback
