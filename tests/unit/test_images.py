"""Image verification and decoding: RELIABILITY.md's bad-image matrix (D1) on tiny files."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from PIL import Image

from yolodist.data import images
from yolodist.data.cache import scan_images
from yolodist.data.images import ImageReadError, read_image, read_verified, verify_image


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _jpeg(path, h=96, w=128):
    Image.fromarray(_noise(h, w)).save(path, quality=90)
    return path


def test_good_jpeg(tmp_path):
    p = _jpeg(tmp_path / "a.jpg")
    assert verify_image(p) == images.ImageInfo((96, 128), None)
    img = read_image(p)
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8 and img.flags.c_contiguous


def test_truncated_jpeg_is_refused(tmp_path):
    p = _jpeg(tmp_path / "t.jpg")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert verify_image(p).problem == "truncated"
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert e.value.reason == "truncated"


def test_zero_byte_text_and_missing(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "t.jpg").write_text("not an image at all\n")
    assert verify_image(tmp_path / "z.jpg").problem == "zero-byte"
    assert verify_image(tmp_path / "t.jpg").problem == "not an image"
    assert verify_image(tmp_path / "gone.jpg").problem == "missing"


def test_png_named_jpg_loads(tmp_path):
    p = tmp_path / "p.jpg"
    Image.fromarray(_noise(20, 30)).save(p, format="PNG")
    assert verify_image(p).problem is None
    np.testing.assert_array_equal(read_image(p), _noise(20, 30)[..., ::-1])


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "g16.png"
    ramp = np.tile(np.array([0, 257 * 100, 32768, 65535], dtype=np.uint16), (12, 3))  # 12 x 12
    assert cv2.imwrite(str(p), ramp)
    assert Image.open(p).mode.startswith("I")
    img = read_image(p)
    assert img.shape == (12, 12, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, :4, 0], [0, 100, 128, 255])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_other_modes_become_3_channel(tmp_path, mode):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (255, 0, 0)  # red left half, black right half
    im = Image.fromarray(rgb).convert(mode)
    p = tmp_path / ("m.jpg" if mode == "CMYK" else "m.png")
    im.save(p)
    img = read_image(p)
    assert img.shape == (16, 24, 3) and img.dtype == np.uint8
    if mode in ("RGBA", "P", "CMYK"):
        # BGR order: red is in the last channel.
        assert img[8, 3, 2] > 200 and img[8, 3, 0] < 60 and img[8, 20].max() < 60


def test_exif_orientation_6_rotates_and_box_follows(tmp_path):
    raw = np.full((60, 100, 3), 40, np.uint8)  # stored 100 wide x 60 high
    raw[10:20, 70:90] = (255, 0, 0)  # red block, rows 10..19, cols 70..89 (RGB)
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(raw).save(p, exif=exif, quality=95)
    assert verify_image(p).shape == (100, 60)  # displayed: 60 wide x 100 high
    img = read_image(p)
    assert img.shape == (100, 60, 3)
    # 90 CW: raw (x, y) -> displayed (H - 1 - y, x) with raw height H = 60.
    red = (img[..., 2] > 180) & (img[..., 0] < 90)
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - (60 - 20)) <= 1 and abs(xs.max() - (60 - 1 - 10)) <= 1
    assert abs(ys.min() - 70) <= 1 and abs(ys.max() - 89) <= 1


def test_a_header_past_opencvs_size_limit_is_refused_not_raised(tmp_path):
    """Found by the fuzz test: a BMP whose header claims 2^20 + 18 rows opens in PIL (header only), and
    cv2.imdecode then raised its own cv2.error out of read_verified instead of returning None."""
    path = tmp_path / "tall.bmp"
    Image.new("RGB", (24, 18)).save(path)
    data = bytearray(path.read_bytes())
    data[22:26] = (1 << 20 | 18).to_bytes(4, "little")  # BITMAPINFOHEADER height
    path.write_bytes(bytes(data))
    with Image.open(path) as im:
        assert im.size == (24, 1 << 20 | 18)
    for read in (read_verified, read_image):
        with pytest.raises(ImageReadError):
            read(path)


def test_too_small(tmp_path):
    p = tmp_path / "s.png"
    Image.fromarray(_noise(5, 5)).save(p)
    assert verify_image(p).problem == "too small"


def test_too_large_by_our_limit(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("L", (200, 200)).save(p)
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    assert verify_image(p).problem == "too large"
    with pytest.raises(ImageReadError):
        read_image(p)


def test_too_large_by_pil_bomb_check(tmp_path, monkeypatch):
    p = tmp_path / "bomb.png"
    Image.new("1", (300, 300)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises above twice this
    assert verify_image(p).problem == "too large"


def test_scan_never_modifies_user_files(tmp_path):
    _jpeg(tmp_path / "ok.jpg")
    t = _jpeg(tmp_path / "trunc.jpg")
    t.write_bytes(t.read_bytes()[:700])
    trailing = _jpeg(tmp_path / "trailing.jpg")
    trailing.write_bytes(trailing.read_bytes() + b"\x00garbage")  # upstream would rewrite this file
    (tmp_path / "zero.jpg").write_bytes(b"")
    files = sorted(str(p) for p in tmp_path.iterdir())
    before = {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}
    scan = scan_images(files, workers=2)
    after = {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}
    assert before == after
    assert sorted(tmp_path.iterdir()) == sorted(map(type(tmp_path), files))
    reasons = dict(zip(scan.im_files, scan.problems, strict=True))
    assert reasons[str(tmp_path / "trunc.jpg")] == "truncated"
    assert reasons[str(tmp_path / "zero.jpg")] == "zero-byte"
    assert reasons[str(tmp_path / "trailing.jpg")] == "" and reasons[str(tmp_path / "ok.jpg")] == ""


FORMAT_MODES = [(f, m) for f in ("jpeg", "png", "webp", "bmp") for m in ("RGB", "L")]
FORMAT_MODES += [("png", m) for m in ("P", "RGBA", "I;16")]  # the modes cv2 is not trusted with


@pytest.mark.parametrize(("fmt", "mode"), FORMAT_MODES)
def test_the_fast_decoder_gives_the_strict_decoders_pixels(tmp_path, fmt, mode):
    for orientation in range(1, 9):
        rgb = Image.fromarray(_noise(20, 30, seed=orientation))
        im = rgb.convert(mode) if mode != "I;16" else Image.fromarray(_noise(20, 30)[..., 0].astype(np.uint16) * 200)
        exif = Image.Exif()
        exif[0x0112] = orientation
        p = tmp_path / f"o{orientation}.{fmt}"
        im.save(p, exif=exif) if fmt != "bmp" else im.save(p)
        strict, fast = read_image(p), images.read_verified(p)
        assert strict.shape == fast.shape and np.array_equal(strict, fast), (orientation, strict.shape, fast.shape)
        assert fast.flags.c_contiguous and fast.dtype == np.uint8
