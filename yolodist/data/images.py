"""Image verification and decoding: every image becomes an HxWx3 uint8 BGR array, upright.

Why PIL and not ``cv2.imread``: cv2 silently decodes a truncated JPEG as a grey-filled image and
will happily decode a 20000x20000 "decompression bomb" into 1.2 GB. PIL raises on truncation when the
full image is loaded, reports the size before decoding, and ``exif_transpose`` applies the camera
orientation. Files are only ever read, never rewritten.

Once the scan has verified a file and it has not changed since, ``read_verified`` decodes plain
8-bit JPEG/PNG/BMP/WebP with cv2 instead (the same pixels, measured bit for bit on JPEGs, at a
third of the time: PIL's array conversion costs as much as its decode), and JPEGs with simplejpeg
where it is installed (libjpeg-turbo straight to BGR, the header read without PIL: the same pixels
again, tested, in less time than cv2's decode). A training set may also let libjpeg shrink a JPEG
by 2, 4 or 8 inside its inverse DCT (``shrink_to``): at 320 px from 640 px files that decode takes
40% of a full one, and replaces the resize that followed it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # libjpeg-turbo with a direct BGR output: the training decode's fastest path (optional)
    import simplejpeg
except ImportError:  # pragma: no cover - exercised by the fallback test
    simplejpeg = None

LOGGER = logging.getLogger(__name__)

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")  # as upstream
MAX_PIXELS = 89_478_485  # PIL's own warning threshold (about 9459 x 9459)
MIN_SIDE = 10  # upstream refuses images with a side under 10 px

# EXIF orientations 5..8 swap width and height.
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112


class ImageReadError(OSError):
    """An image that cannot be used; ``reason`` is a short key such as "truncated" or "too large"."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """Result of verifying one image: ``shape`` is (h, w) after EXIF orientation, (0, 0) if unusable."""

    shape: tuple[int, int]
    problem: str | None


def _open(path: str | Path) -> Image.Image:
    """Open (header only) and apply the size checks; raises ``ImageReadError``."""
    try:
        size = Path(path).stat().st_size
    except OSError as e:
        raise ImageReadError(path, "missing" if isinstance(e, FileNotFoundError) else "unreadable") from e
    if size == 0:
        raise ImageReadError(path, "zero-byte")
    try:
        # Above MAX_PIXELS PIL may also emit a DecompressionBombWarning; we refuse those images anyway.
        # (warnings.catch_warnings is not thread-safe, and the scan runs in threads, so it is not muted.)
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, "too large") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image") from e
    except OSError as e:
        raise ImageReadError(path, "unreadable") from e
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise ImageReadError(path, "too large")
    if min(w, h) < MIN_SIDE:
        im.close()
        raise ImageReadError(path, "too small")
    return im


def _load_pixels(im: Image.Image, path: str | Path) -> None:
    try:
        im.load()
    except OSError as e:
        # Pillow says "image file is truncated" (or "broken data stream") for a cut-off file.
        text = str(e).lower()
        reason = "truncated" if "truncat" in text or "broken data" in text else "unreadable"
        raise ImageReadError(path, reason) from e
    except (ValueError, SyntaxError, MemoryError) as e:
        raise ImageReadError(path, "unreadable") from e


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF blocks must not make an otherwise good image unusable
        return 1


def verify_image(path: str | Path) -> ImageInfo:
    """Fully decode ``path`` once (in memory) and return its upright shape or the reason it is unusable.

    Reasons: "zero-byte", "not an image", "truncated", "too large", "too small", "unreadable", "missing".
    """
    try:
        im = _open(path)
    except ImageReadError as e:
        return ImageInfo((0, 0), e.reason)
    with im:
        try:
            _load_pixels(im, path)
        except ImageReadError as e:
            return ImageInfo((0, 0), e.reason)
        w, h = im.size
        if _orientation(im) in _SWAPPED_ORIENTATIONS:
            w, h = h, w
    return ImageInfo((h, w), None)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB. 16/32-bit greys are scaled down, not clipped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        # 16-bit data is scaled 65535 -> 255 as cv2 does; data already in 0..255 stays as it is.
        if arr.size and arr.max() > 255:
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, LA, P, PA, RGBA, CMYK, YCbCr, 1 ...
    return np.asarray(im, dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an upright HxWx3 uint8 **BGR** array (cv2's channel order).

    Raises ``ImageReadError`` (an ``OSError``) with a short ``reason`` when the file is unusable.
    """
    im = _open(path)
    with im:
        _load_pixels(im, path)
        try:
            upright = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
            rgb = _to_rgb_array(upright)
        except (OSError, ValueError) as e:
            raise ImageReadError(path, "unreadable") from e
    return np.ascontiguousarray(rgb[..., ::-1])


# cv2 decodes these formats in these modes to the same 8-bit BGR pixels as the PIL path.
_CV2_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "MPO")
_CV2_MODES = ("RGB", "L")
_CV2_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
# libjpeg's DCT scaling factors and the flags that ask cv2 for them.
_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}


def jpeg_reduction(w: int, h: int, shrink_to: int | None) -> int:
    """The largest DCT scaling factor (1, 2, 4 or 8) that keeps a w x h JPEG's long side >= ``shrink_to``.

    libjpeg rounds scaled sides up, so a factor f gives ``ceil(w / f) x ceil(h / f)``.
    """
    if not shrink_to:
        return 1
    long_side = max(w, h)
    return next((f for f in (8, 4, 2) if -(-long_side // f) >= shrink_to), 1)


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) to an HxWxC array, as ``ImageOps.exif_transpose`` does."""
    if orientation in (2, 3, 4):
        return np.ascontiguousarray({2: img[:, ::-1], 3: img[::-1, ::-1], 4: img[::-1]}[orientation])
    if orientation in (5, 6, 7, 8):
        t = img.transpose(1, 0, 2)
        return np.ascontiguousarray({5: t, 6: t[:, ::-1], 7: t[::-1, ::-1], 8: t[::-1]}[orientation])
    return img


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each segment of a JPEG's header, up to its first scan."""
    pos, end = 2, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        yield marker, pos + 4, pos + 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return
        pos += 2 + length


def _has_exif(data: bytes) -> bool:
    return any(m == 0xE1 and data[a : a + 6] == b"Exif\x00\x00" for m, a, _ in _jpeg_segments(data))


def _decode_jpeg(data: bytes, shrink_to: int | None) -> np.ndarray | None:
    """A verified JPEG decoded by libjpeg-turbo through simplejpeg, or None where the generic path must.

    The same pixels as cv2's decode (tested over subsamplings, progressive, grey, odd sizes and
    every DCT factor) in 60-85% of its time, with the header read in a microsecond instead of PIL's
    parse; a JPEG with EXIF still has its orientation read by PIL.
    """
    if simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray", "RGB") or min(w, h) < MIN_SIDE or w * h > MAX_PIXELS:
            return None
        orientation = 1
        if _has_exif(data):
            with Image.open(io.BytesIO(data)) as im:
                orientation = _orientation(im)
        f = jpeg_reduction(w, h, shrink_to)
        sw, sh = -(-w // f), -(-h // f)
        img = simplejpeg.decode_jpeg(data, "BGR", min_width=sw, min_height=sh)
    except (ValueError, OSError, Image.DecompressionBombError):
        return None
    if img.shape[:2] != (sh, sw):
        return None
    return _orient(img, orientation)


def read_verified(path: str | Path, shrink_to: int | None = None) -> np.ndarray:
    """``read_image`` for a file the scan fully decoded and that has not changed since.

    A JPEG in YCbCr, RGB or grey goes to simplejpeg (``_decode_jpeg``). Otherwise the header is read
    with PIL (format, mode, orientation: microseconds); plain 8-bit images are decoded by cv2,
    everything else (16-bit, palette, CMYK, alpha...) by ``read_image``. cv2 does not report
    truncation, hence "verified": callers check the file is the one the scan decoded.

    ``shrink_to``: a JPEG may come back shrunk by libjpeg (1/2, 1/4 or 1/8, see ``jpeg_reduction``)
    as long as its long side stays at least this; other formats always come back whole.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return read_image(path)  # the strict path says what is wrong with it
    img = _decode_jpeg(data, shrink_to)
    if img is not None:
        return img
    try:
        with Image.open(io.BytesIO(data)) as im:
            simple = im.format in _CV2_FORMATS and im.mode in _CV2_MODES
            size, orientation = im.size, _orientation(im)
            factor = jpeg_reduction(*size, shrink_to) if im.format == "JPEG" else 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return read_image(path)  # the strict path says what is wrong with it
    if not simple:
        return read_image(path)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS.get(factor, _CV2_FLAGS))
    except cv2.error:  # e.g. a header whose size is past OpenCV's limits, which PIL reads without decoding
        return read_image(path)
    if img is None or img.shape[:2] != (-(-size[1] // factor), -(-size[0] // factor)):
        return read_image(path)
    return _orient(img, orientation)
