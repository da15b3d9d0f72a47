"""``train.py --cache ram`` when the node cannot hold the cache: one line each, and the training goes on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_train_cli import TINY
from tests.conftest import ROOT, run_script, tmpfs


def _train_args(tmp_path: Path, data: Path) -> list[str]:
    project = ["--project", str(tmp_path / "runs")]
    return [str(ROOT / "train.py"), "--data", str(data), *TINY, "--epochs", "1", *project, "--cache", "ram"]


def _assert_trained_without_cache(proc: subprocess.CompletedProcess, tmp_path: Path, why: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = [line for line in out.splitlines() if "caching images" in line]
    assert len(lines) == 2, lines  # one for the training images, one for the validation images
    assert all("not caching images" in line and why in line for line in lines), lines
    assert "Traceback" not in out
    assert (tmp_path / "runs" / "exp" / "weights" / "last.pt").is_file()


@pytest.mark.timeout(240)
def test_a_full_shm_folder_trains_without_the_cache(tmp_path, tiny_shapes):
    with tmpfs(tmp_path / "shm", "16k") as shm:
        proc = run_script(_train_args(tmp_path, tiny_shapes), cwd=tmp_path, env={"YOLODIST_SHM_DIR": str(shm)})
        _assert_trained_without_cache(proc, tmp_path, "free")
        assert list(shm.iterdir()) == []


@pytest.mark.timeout(240)
def test_a_node_short_of_memory_trains_without_the_cache(tmp_path, tiny_shapes):
    """The training runs in a mount namespace whose /proc/meminfo reports 100 kB available."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       16000000 kB\nMemFree:             100 kB\nMemAvailable:        100 kB\n")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind {fake} /proc/meminfo && grep MemAvailable /proc/meminfo"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode or "100 kB" not in probe.stdout:
        pytest.skip(f"cannot make a mount namespace here ({probe.stderr.strip()}); needs root")
    shm = tmp_path / "shm"
    shm.mkdir()
    wrapped = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /proc/meminfo && exec "$@"', str(fake), sys.executable]
    proc = subprocess.run(
        [*wrapped, *_train_args(tmp_path, tiny_shapes)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "YOLODIST_SHM_DIR": str(shm)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    _assert_trained_without_cache(proc, tmp_path, "available")
    assert list(shm.iterdir()) == []


def _fill(folder: Path) -> None:
    """Write into ``folder`` until its filesystem is full (a real ENOSPC, not a simulated one)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.timeout(240)
def test_a_full_dataset_disk_trains_without_the_label_and_image_caches(tmp_path):
    """The dataset's own disk is full: the label caches and --cache disk (both written beside the labels)
    each say in one line that they could not be written, with the free space; training goes on, and the
    user's files are as they were, with nothing half-written beside them."""
    from yolodist.data.synthetic import ensure_shapes

    make = lambda root: ensure_shapes(root / "shapes", n_train=8, n_val=4, img_size=96, seed=0)  # noqa: E731
    sized = make(tmp_path / "sizing").parent
    pages = sum(-(-p.stat().st_size // 4096) for p in sized.rglob("*") if p.is_file())
    with tmpfs(tmp_path / "disk", f"{pages * 4 + 256}k") as disk:
        data = make(disk)
        _fill(disk)
        before = _files(data.parent)
        args = _train_args(tmp_path, data)
        args[args.index("--cache") + 1] = "disk"
        proc = run_script(args, cwd=tmp_path)
        after = _files(data.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    labels = [line for line in out.splitlines() if "cannot write label cache" in line]
    assert len(labels) == 2, out[-3000:]  # the training and the validation labels
    assert all("No space left on device" in line and "MB free on the disk of" in line for line in labels), labels
    images = [line for line in out.splitlines() if "not caching images" in line]
    assert len(images) == 2 and all("free" in line for line in images), images
    assert after == before  # no cache, no temp file: the user's files alone, byte for byte
    assert (tmp_path / "runs" / "exp" / "weights" / "last.pt").is_file()
