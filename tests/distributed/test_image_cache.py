"""The node-wide image cache under real ranks: one decode per image per node, one shared file, the same run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.distributed.launch_helpers import WRAPPER
from tests.distributed.test_ddp import invariance_args, load_last
from yolodist.data.cache import list_image_files


def _decodes(log: Path) -> list[tuple[int, int, str]]:
    rows = []
    for line in log.read_text().splitlines():
        pid, rank, path = line.split(" ", 2)
        rows.append((int(pid), int(rank), path))
    return rows


@pytest.mark.timeout(420)
def test_two_ranks_with_workers_share_one_cache_and_decode_each_image_once(
    tmp_path, tiny_shapes, torchrun, monkeypatch
):
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setenv("YOLODIST_SHM_DIR", str(shm))
    common = [*invariance_args(tiny_shapes, tmp_path)[1:], "--workers", "2"]  # [0] is train.py
    cached_log, plain_log = tmp_path / "cached", tmp_path / "plain"
    cached_log.mkdir()
    plain_log.mkdir()

    cached = torchrun([str(WRAPPER), "count-decodes", str(cached_log), *common, "--cache", "ram", "--name", "cached"])
    assert cached.returncode == 0, cached.stderr[-3000:]
    plain = torchrun([str(WRAPPER), "count-decodes", str(plain_log), *common, "--name", "plain"])
    assert plain.returncode == 0, plain.stderr[-3000:]

    root = tiny_shapes.parent
    every_image = list_image_files([root / "images" / "train"]) + list_image_files([root / "images" / "val"])
    rows = _decodes(cached_log / "decodes.txt")
    # Each image decoded once on the node, by local rank 0 filling the cache; workers decode nothing.
    assert Counter(path for _, _, path in rows) == Counter(every_image)
    assert {rank for _, rank, _ in rows} == {0} and len({pid for pid, _, _ in rows}) == 1
    assert "cached 16/16 images" in cached.stdout and "cached 8/8 images" in cached.stdout
    # Without the cache every rank and worker decodes what it samples (mosaics: several per sample).
    plain_rows = _decodes(plain_log / "decodes.txt")
    assert {rank for _, rank, _ in plain_rows} == {0, 1} and len(plain_rows) > 3 * len(every_image)
    # Nothing left in shared memory once the job is over.
    assert list(shm.iterdir()) == []
    # Cached or decoded, every sample is the same: the two 2-rank runs end with identical weights.
    a, b = load_last(tmp_path, "cached"), load_last(tmp_path, "plain")
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
