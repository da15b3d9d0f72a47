"""--scaled-decode: training JPEGs at least twice the image size are shrunk inside the decoder."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.unit.test_config import parse
from yolodist.config.schema import Hyp
from yolodist.data import dataset as dataset_module
from yolodist.data import imcache
from yolodist.data.dataset import YoloDataset
from yolodist.data.images import jpeg_reduction, read_image, read_verified
from yolodist.data.imcache_file import resized_shape


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A gradient with one bright corner: any wrong orientation or scale shows in the pixels."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], -1).astype(np.uint8)
    rgb[: h // 4, : w // 5] = (250, 30 + 20 * seed, 30)
    return rgb


def _jpeg_set(root, n: int = 6):
    """n JPEGs of 128-176 px (landscape and portrait, some with an EXIF rotation) with one label each."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        w, h = (128 + 8 * i, 100) if i % 2 else (96, 128 + 8 * i)
        exif = Image.Exif()
        exif[0x0112] = (1, 6, 3, 8)[i % 4]
        Image.fromarray(_smooth(h, w, i)).save(root / "images" / f"{i}.jpg", quality=95, exif=exif)
        (root / "labels" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.3 0.4\n")
    return root / "images"


FACTORS = [(640, 480, 320, 2), (640, 480, 321, 1), (641, 480, 321, 2), (640, 480, 160, 4), (5000, 300, 320, 8)]
FACTORS += [(480, 640, 320, 2), (300, 200, 320, 1), (640, 480, None, 1), (640, 480, 640, 1)]


@pytest.mark.parametrize(("w", "h", "shrink_to", "factor"), FACTORS)
def test_the_largest_factor_that_keeps_the_long_side(w, h, shrink_to, factor):
    assert jpeg_reduction(w, h, shrink_to) == factor


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_shrunk_jpeg_is_the_upright_image_at_half_size(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "a.jpg"
    Image.fromarray(_smooth(96, 130)).save(p, quality=95, exif=exif)
    full = read_image(p)
    small = read_verified(p, shrink_to=48)
    # libjpeg rounds up: 130 x 96 at 1/2 is 65 x 48 (upright: swapped for orientations 5-8).
    assert small.shape == (-(-full.shape[0] // 2), -(-full.shape[1] // 2), 3)
    reference = cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - reference.astype(int)).mean() < 2.0


def test_other_formats_and_small_jpegs_come_back_whole(tmp_path):
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(_smooth(96, 128)).save(png)
    Image.fromarray(_smooth(60, 70)).save(jpg)
    assert np.array_equal(read_verified(png, shrink_to=32), read_image(png))
    assert read_verified(jpg, shrink_to=40).shape == (60, 70, 3)  # 35 < 40 at 1/2


def _spy_shrink(monkeypatch) -> list:
    asked = []
    original = dataset_module.read_verified
    monkeypatch.setattr(dataset_module, "read_verified", lambda f, s=None: asked.append(s) or original(f, s))
    return asked


@pytest.mark.parametrize("scaled", [True, False])
def test_training_images_come_at_img_size_with_their_original_shape(tmp_path, monkeypatch, scaled):
    src = _jpeg_set(tmp_path)
    ds = YoloDataset([src], 48, augment=True, hyp=Hyp(), scaled_decode=scaled)
    asked = _spy_shrink(monkeypatch)
    for i in range(len(ds)):
        img, (h0, w0) = ds.load_image(i)
        assert (w0, h0) == tuple(ds.shapes[i])  # the file's upright size, not the decoded one
        assert img.shape[:2] == resized_shape(h0, w0, 48)
    assert asked == [48 if scaled else None] * len(ds)
    assert ds[(1, 2)][0].shape == (3, 48, 48)


def test_validation_never_shrinks(tmp_path, monkeypatch):
    ds = YoloDataset([_jpeg_set(tmp_path)], 48, augment=False, scaled_decode=True)
    asked = _spy_shrink(monkeypatch)
    ds.load_image(0)
    assert asked == [None] and not ds.scaled_decode


def test_the_image_cache_holds_the_shrunk_pixels_under_its_own_key(tmp_path, monkeypatch):
    monkeypatch.setenv(imcache.SHM_ENV, str(tmp_path / "shm"))
    (tmp_path / "shm").mkdir()
    src = _jpeg_set(tmp_path)

    def make(scaled: bool, cache: str | None) -> YoloDataset:
        ds = YoloDataset([src], 48, augment=True, hyp=Hyp(), seed=3, cache_images=cache, scaled_decode=scaled)
        ds.prepare_cache()
        return ds

    plain, cached = make(True, None), make(True, "ram")
    for key in [(0, 0), (1, 3), (2, 5)]:
        assert torch.equal(plain[key][0], cached[key][0]) and torch.equal(plain[key][1], cached[key][1])
    full = make(False, "ram")
    assert full.cache_plan()[1].key != cached.cache_plan()[1].key
    assert not np.array_equal(full.image_cache.get(1)[0], cached.image_cache.get(1)[0])


def test_the_flag_reaches_the_config():
    assert parse().scaled_decode and not parse("--no-scaled-decode").scaled_decode
