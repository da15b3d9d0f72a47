"""Bad data under real loaders: RELIABILITY.md's whole bad-image matrix (D1) and an image that breaks
after the scan (D4), in one run of train.py under torchrun with 2 ranks and 2 loader workers each.

The run must finish; the images the scan refuses are named with their reason in the summary; the
one that breaks mid-run is replaced (the worker that meets it says so) and never raises; and the
user's dataset is byte for byte as it was, the label caches written beside the labels apart.
Rank 0 then names the broken image once for the run, whichever rank's worker met it.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.distributed.conftest import free_port
from tests.distributed.test_faults import WRAPPER, Job, finish, launched, torchrun_command, train_flags
from yolodist.data.synthetic import ensure_shapes


def _noise(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _encoded(im: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side: int = 20000) -> bytes:
    """A complete 1-bit side x side PNG of zeros (400 Mpx in about 60 KB), made without 400 MB of pixels."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + the packed row
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _exif6_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return _encoded(_noise(48, 80, 6), "JPEG", exif=exif.tobytes())


def bad_image_matrix(images: Path, labels: Path) -> dict[str, str | None]:
    """Each row of RELIABILITY.md's bad-image table as a file in ``images`` with a label in ``labels``.

    Returns file name -> the reason the scan refuses it with, or None for a file that must load.
    """
    jpeg = _encoded(_noise(48, 64, 1), "JPEG", quality=90)
    grey16 = Image.fromarray(np.random.default_rng(2).integers(0, 65535, (40, 56), dtype=np.uint16))
    files: dict[str, tuple[bytes, str | None]] = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "trailing.jpg": (jpeg + b"\x00trailing bytes after FF D9", None),  # upstream would rewrite this file
        "zero.jpg": (b"", "zero-byte"),
        "text.jpg": (b"not an image at all\n", "not an image"),
        "png-named.jpg": (_encoded(_noise(40, 56, 3), "PNG"), None),
        "grey16.png": (_encoded(grey16, "PNG"), None),
        "grey.jpg": (_encoded(_noise(40, 56, 4).convert("L"), "JPEG"), None),
        "rgba.png": (_encoded(_noise(40, 56, 5).convert("RGBA"), "PNG"), None),
        "palette.png": (_encoded(_noise(40, 56, 5).convert("P"), "PNG"), None),
        "cmyk.jpg": (_encoded(_noise(40, 56, 5).convert("CMYK"), "JPEG"), None),
        "exif6.jpg": (_exif6_jpeg(), None),
        "bomb.png": (_bomb_png(), "too large"),
        "tiny.png": (_encoded(_noise(5, 5, 7), "PNG"), "too small"),
    }
    for name, (data, _) in files.items():
        (images / name).write_bytes(data)
        (labels / name).with_suffix(".txt").write_text("0 0.5 0.5 0.3 0.3\n")
    return {name: reason for name, (_, reason) in files.items()}


def fingerprints(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_d1_d4_bad_images_under_two_ranks_with_workers(tmp_path):
    root = tmp_path / "data"
    yaml_path = ensure_shapes(root, n_train=8, n_val=4, img_size=128, seed=0)
    expected = bad_image_matrix(root / "images" / "train", root / "labels" / "train")
    victim = root / "images" / "train" / "000003.jpg"  # a good image, until the run has started
    before = fingerprints(root)

    flags = train_flags(yaml_path, tmp_path, "bad", "--workers", "2", "--epochs", "2")
    args = [WRAPPER, "--rank", "1", "--", *flags]  # no fault: the wrapper only prints each finished step
    with launched() as marker:
        job = Job(torchrun_command(*args, nproc=2, port=free_port()), tmp_path / "logs", "bad", marker)
        # Both ranks are past their scans once a step is done (each step has collectives); the
        # image then breaks, and its next load (epoch 1 at the latest) meets it in a worker.
        job.wait_for_text("finished step 0", timeout=150)
        truncated = victim.read_bytes()[: victim.stat().st_size // 2]
        victim.write_bytes(truncated)
        finish([job], timeout=120)
    output = job.output
    assert job.proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]

    # The scan's summary counts the refused images by reason and names each one.
    refused = {name: reason for name, reason in expected.items() if reason}
    summary = re.search(r"train: found (\d+) images: .*, (\d+) corrupt \(([^)]*)\)", output)
    assert summary, output[-4000:]
    assert int(summary[1]) == 8 + len(expected) and int(summary[2]) == len(refused)
    assert sorted(summary[3].split(", ")) == sorted(f"1 {reason}" for reason in refused.values())
    for name, reason in refused.items():
        assert f"train: skipping {root / 'images' / 'train' / name} ({reason}" in output
    # The image that broke after the scan was replaced, and it is the only one a worker could not load.
    assert f"train: cannot load {victim} (truncated); using another image" in output, output[-4000:]
    assert len(set(re.findall(r"cannot load (\S+)", output))) == 1
    # Rank 0 counts it for the run, whichever rank's worker met it, once.
    replaced = re.findall(
        r"epoch \d: (\d) training image\(s\) could not be loaded any more and were replaced by "
        r"others \((\d) in this run so far\): (\S+)",
        output,
    )
    assert replaced == [("1", "1", str(victim))], output[-4000:]
    assert (tmp_path / "bad" / "weights" / "last.pt").is_file()

    # Nothing of the user's was written: the same files, byte for byte, and only the label caches added.
    after = fingerprints(root)
    assert after.pop(str(victim.relative_to(root))) == hashlib.sha256(truncated).hexdigest()
    before.pop(str(victim.relative_to(root)))
    added = sorted(set(after) - set(before))
    assert added == ["labels/train.cache", "labels/val.cache"], added
    assert {k: after[k] for k in before} == before
