"""The training decode of JPEGs through simplejpeg: the pixels of the cv2 path, and used when it can be."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from yolodist.data import images
from yolodist.data.images import read_image, read_verified

simplejpeg = pytest.importorskip("simplejpeg")


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields plus noise: chroma subsampling and the IDCT both leave their marks."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8), (w, h))
    return np.clip(base.astype(int) + rng.integers(-25, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _both(path, shrink_to, monkeypatch):
    """read_verified with simplejpeg, then with the cv2 path it replaces."""
    fast = read_verified(path, shrink_to)
    with monkeypatch.context() as m:
        m.setattr(images, "simplejpeg", None)
        reference = read_verified(path, shrink_to)
    return fast, reference


# (h, w) x chroma subsampling (PIL: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0) x progressive, odd sizes included.
CASES = [(hw, sub, prog) for hw in [(96, 128), (67, 101), (130, 61)] for sub in (0, 1, 2) for prog in (False, True)]


@pytest.mark.parametrize(("hw", "subsampling", "progressive"), CASES)
@pytest.mark.parametrize("shrink_to", [None, 48, 24, 12])  # factors 1, 2, 4 and 8 for the larger sides
def test_simplejpeg_gives_the_cv2_paths_pixels(tmp_path, monkeypatch, hw, subsampling, progressive, shrink_to):
    p = tmp_path / "a.jpg"
    Image.fromarray(_photo(*hw)).save(p, quality=85, subsampling=subsampling, progressive=progressive)
    fast, reference = _both(p, shrink_to, monkeypatch)
    assert fast.shape == reference.shape and np.array_equal(fast, reference)
    assert fast.flags.c_contiguous and fast.dtype == np.uint8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_and_other_segments_before_it(tmp_path, monkeypatch, orientation):
    """An ICC profile and a comment ahead of the EXIF segment: the orientation is still found."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "a.jpg"
    icc = b"\0" * 300  # any bytes: nobody interprets the profile here
    Image.fromarray(_photo(72, 104)).save(p, quality=90, exif=exif, icc_profile=icc, comment=b"made by a test")
    for shrink_to in (None, 36):
        fast, reference = _both(p, shrink_to, monkeypatch)
        assert np.array_equal(fast, reference)
    assert np.array_equal(read_verified(p), read_image(p))  # and both are PIL's upright image


def test_grey_and_cmyk(tmp_path, monkeypatch):
    grey, cmyk = tmp_path / "g.jpg", tmp_path / "c.jpg"
    Image.fromarray(_photo(64, 80)).convert("L").save(grey, quality=90)
    Image.fromarray(_photo(64, 80)).convert("CMYK").save(cmyk, quality=90)
    for p in (grey, cmyk):
        fast, reference = _both(p, None, monkeypatch)
        assert fast.shape == (64, 80, 3) and np.array_equal(fast, reference)
        assert np.array_equal(fast, read_image(p))


def _count_decoders(monkeypatch) -> dict[str, int]:
    calls = {"simplejpeg": 0, "cv2": 0, "pil": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy("simplejpeg", simplejpeg.decode_jpeg))
    monkeypatch.setattr(images.cv2, "imdecode", spy("cv2", cv2.imdecode))
    monkeypatch.setattr(images, "read_image", spy("pil", images.read_image))
    return calls


def test_plain_jpegs_take_simplejpeg_and_nothing_else(tmp_path, monkeypatch):
    """Guards the speed: a fast path that always fell back would keep every pixel test green."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_photo(64, 96)).save(tmp_path / "plain.jpg", quality=90)
    Image.fromarray(_photo(64, 96)).save(tmp_path / "exif.jpg", quality=90, exif=exif)
    calls = _count_decoders(monkeypatch)
    for name in ("plain.jpg", "exif.jpg"):
        read_verified(tmp_path / name)
        read_verified(tmp_path / name, 32)
    assert calls == {"simplejpeg": 4, "cv2": 0, "pil": 0}


def _outcome(path):
    try:
        return read_verified(path)
    except images.ImageReadError as e:
        return e.reason


@pytest.mark.parametrize("cut", [2, 400])
def test_what_simplejpeg_refuses_goes_the_older_way(tmp_path, monkeypatch, cut):
    """A JPEG cut short: strict simplejpeg refuses it, and the outcome is the cv2 path's, whatever it is."""
    p = tmp_path / "a.jpg"
    Image.fromarray(_photo(96, 128)).save(p, quality=90)
    p.write_bytes(p.read_bytes()[:-cut])
    with monkeypatch.context() as m:
        m.setattr(images, "simplejpeg", None)
        before = _outcome(p)
    calls = _count_decoders(monkeypatch)
    after = _outcome(p)
    assert calls["simplejpeg"] == 1 and calls["cv2"] == 1
    if isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray) and np.array_equal(after, before)
    else:
        assert after == before  # the same reason


@pytest.mark.parametrize(
    "data",
    [b"\xff\xd8", b"\xff\xd8\xff", b"\xff\xd8\xff\xe1\x00\x00", b"\xff\xd8\xff\xff\xff\xe1\x00\x02Exif\x00\x00"],
)
def test_the_segment_walk_ends_on_any_header(data):
    assert images._has_exif(data) in (True, False)
    assert images._decode_jpeg(data, None) is None


def test_without_simplejpeg_jpegs_still_load(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "simplejpeg", None)
    p = tmp_path / "a.jpg"
    Image.fromarray(_photo(96, 128)).save(p, quality=90)
    assert np.array_equal(read_verified(p), read_image(p))
    assert read_verified(p, 48).shape == (48, 64, 3)


def test_the_header_limits_apply_before_decoding(monkeypatch):
    """Past the pixel limit simplejpeg never allocates: the general path (which checks) takes over."""
    buf = io.BytesIO()
    Image.fromarray(_photo(20, 20)).save(buf, "JPEG")
    calls = _count_decoders(monkeypatch)
    assert images._decode_jpeg(buf.getvalue(), None) is not None
    monkeypatch.setattr(images, "MAX_PIXELS", 399)
    assert images._decode_jpeg(buf.getvalue(), None) is None
    assert calls["simplejpeg"] == 1
