"""YoloDataset: determinism across worker counts, rect shapes, label ranges, broken files after the scan."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from yolodist.config.schema import Hyp
from yolodist.data import dataset as dataset_module
from yolodist.data.dataset import YoloDataset, rect_batch_shapes
from yolodist.data.loader import build_loader
from yolodist.data.sampler import ShardedBatchSampler

RED = (255, 0, 0)  # RGB


def make_set(root, n=8):
    """n small images (alternating landscape/portrait) each with a red box and its label (class i % 3)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        w, h = (64, 40 + 2 * i) if i % 2 else (40 + 2 * i, 64)
        rgb = np.full((h, w, 3), 60, np.uint8)
        x1, y1, x2, y2 = 8, 6, 8 + 20 + i, 6 + 16
        rgb[y1:y2, x1:x2] = RED
        Image.fromarray(rgb).save(root / "images" / f"{i}.png")
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        (root / "labels" / f"{i}.txt").write_text(f"{i % 3} {cx} {cy} {bw} {bh}\n")
    return root / "images"


@pytest.fixture
def src(tmp_path):
    return make_set(tmp_path)


def red_box(img_chw):
    img = img_chw.numpy()
    mask = (img[0] > 200) & (img[1] < 60) & (img[2] < 60)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def test_val_sample_format_and_box(src):
    ds = YoloDataset([src], 64, augment=False, nc=3)
    assert len(ds) == 8 and ds.shapes.shape == (8, 2) and ds.shapes[0].tolist() == [40, 64]
    img, lb, path, shapes, hsv = ds[3]
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64) and img.permute(1, 2, 0).is_contiguous()  # HWC memory
    assert lb.shape == (1, 6) and lb.dtype == torch.float32 and lb[0, 0] == 0 and lb[0, 1] == 0
    assert path.endswith("3.png") and shapes[0] == (46, 64) and hsv is None
    cx, cy, w, h = lb[0, 2:].tolist()
    label = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * 64
    seen = red_box(img)  # RGB output: red is channel 0
    assert np.abs(label - seen).max() < 1.5


def test_same_key_same_sample_and_epochs_differ(src):
    ds = YoloDataset([src], 64, augment=True, hyp=Hyp(), seed=1)
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], ds[(3, 5)][0])
    assert torch.equal(ds[5][0], ds[(0, 5)][0])
    for e in range(3):
        lb = ds[(e, 1)][1]
        assert ((lb[:, 2:] >= 0) & (lb[:, 2:] <= 1)).all()


def test_loader_output_independent_of_worker_count(src):
    ds = YoloDataset([src], 64, augment=True, hyp=Hyp().replace(mixup=0.5), seed=0)
    runs = []
    for workers in (0, 2):
        sampler = ShardedBatchSampler(len(ds), 4, seed=0)
        sampler.set_epoch(1)
        loader = build_loader(ds, sampler, workers=workers)
        assert loader.num_workers == workers
        runs.append(list(loader))
    for (i0, t0, p0, *_), (i2, t2, p2, *_) in zip(*runs, strict=True):
        assert torch.equal(i0, i2) and torch.equal(t0, t2) and p0 == p2


def test_rect_shapes_are_stride_multiples(src):
    ds = YoloDataset([src], 64, augment=False, rect=True, batch_size=3, stride=16, pad=0.5, nc=3)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by aspect ratio
    assert ds.batch_shapes.shape == (3, 2) and (ds.batch_shapes % 16 == 0).all()
    for i in range(len(ds)):
        img, lb, *_ = ds[i]
        assert tuple(img.shape[1:]) == tuple(ds.batch_shapes[i // 3])
        assert ((lb[:, 2:] >= 0) & (lb[:, 2:] <= 1)).all()


def test_rect_batch_shapes_formula():
    wh = np.array([[100, 50], [100, 60], [50, 100], [40, 100]])
    shapes = rect_batch_shapes(wh, 2, 640, 32, 0.0)
    # batch 0: widest h/w = 0.6 -> (0.6 * 640 / 32 -> ceil 12) * 32 = 384 high, 640 wide
    assert shapes.tolist() == [[384, 640], [640, 320]]


def test_single_cls_and_class_limit(tmp_path):
    src = make_set(tmp_path)
    (tmp_path / "labels" / "0.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    ds = YoloDataset([src], 64, nc=3, single_cls=True)
    assert len(ds) == 7 and ds.stats["corrupt:class out of range"] == 1
    assert ds.skipped == [(str(src / "0.png"), "class out of range: class 5 outside the valid range 0..2 (nc=3)")]
    assert all((lb[:, 0] == 0).all() for lb in ds.labels)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_broken_after_scan_is_substituted(src, caplog, damage):
    ds = YoloDataset([src], 64, augment=False, nc=3)
    ds_aug = YoloDataset([src], 64, augment=True, hyp=Hyp(), seed=0)
    victim = src / "4.png"
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:60])
    with caplog.at_level(logging.WARNING):
        path = ds[4][2]
        again = ds[4]
    assert path.endswith("5.png") and again[2] == path  # the next index, deterministically
    assert caplog.text.count("4.png") == 1  # warned once per file
    assert sum(ds.load_failures.values()) == 1
    for e in range(6):  # mosaics that draw the broken image as a partner must not raise either
        for i in (3, 4):
            assert not ds_aug[(e, i)][2].endswith("4.png")
    assert ds_aug.load_failures


@pytest.mark.timeout(120)
def test_broken_after_scan_under_loader_workers_is_replaced_and_seen_by_the_loader_owner(src):
    """D4 with real worker processes: the worker that meets the broken file replaces it and never raises,
    and the process that owns the loader learns which file it was (the engine reports it per epoch)."""
    ds = YoloDataset([src], 64, augment=False)
    loader = build_loader(ds, ShardedBatchSampler(len(ds), 2, rank=0, world=1, seed=0, shuffle=False), workers=2)
    assert ds.broken_after_scan() == []
    victim = src / "4.png"
    victim.write_bytes(victim.read_bytes()[:60])
    for epoch in range(2):  # persistent workers: the second epoch reuses the processes of the first
        loader.batch_sampler.set_epoch(epoch)
        paths = [p for batch in loader for p in batch.paths]
        assert len(paths) == len(ds) and str(victim) not in paths
        assert paths.count(str(src / "5.png")) == 2  # index 4 is served by the next loadable index
    assert ds.broken_after_scan() == [str(victim)]
    assert sum(ds.load_failures.values()) == 0  # the counting happened in the workers, not here


def test_a_jpeg_truncated_after_the_scan_is_not_trained_on(tmp_path, caplog, monkeypatch):
    """cv2.imread decodes half a JPEG as a grey-filled image without a word (RELIABILITY.md finding 7):
    files unchanged since the scan take the fast cv2 decoder, a changed one the strict decoder."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
        (tmp_path / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = YoloDataset([tmp_path / "images"], 64, augment=False)
    used = []
    for name in ("read_image", "read_verified"):
        original = getattr(dataset_module, name)
        monkeypatch.setattr(dataset_module, name, lambda f, *a, _o=original, _n=name: used.append((_n, f)) or _o(f, *a))
    ds[1]
    assert [n for n, _ in used] == ["read_verified"]
    used.clear()
    victim = tmp_path / "images" / "2.jpg"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        path = ds[2][2]
    assert path.endswith("3.jpg") and "truncated" in caplog.text and sum(ds.load_failures.values()) == 1
    assert used[0] == ("read_image", str(victim)) and used[1][0] == "read_verified"
