"""Label cache: created, reused without rescanning, rebuilt when stale or corrupt, atomic (D3, D5)."""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
from PIL import Image

from yolodist.data import cache
from yolodist.data.cache import (
    apply_class_limit,
    cache_path_for,
    list_image_files,
    load_or_scan,
    report,
    scan_images,
)
from yolodist.errors import BadData
from yolodist.utils import io


def make_set(root, n=4, labels=True):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        Image.new("RGB", (32 + i, 24), (i * 40, 0, 0)).save(root / "images" / f"{i}.jpg")
        if labels:
            (root / "labels" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.5\n")
    return root / "images"


@pytest.fixture
def counted_scans(monkeypatch):
    calls = []
    real = cache.scan_images

    def counting(files, workers=8):
        calls.append(len(files))
        return real(files, workers)

    monkeypatch.setattr(cache, "scan_images", counting)
    return calls


def test_cache_created_reused_and_atomic(tmp_path, counted_scans):
    src = make_set(tmp_path)
    files = list_image_files([src])
    path = cache_path_for([src])
    assert path == tmp_path / "labels.cache"
    first = load_or_scan(files, path)
    assert path.is_file() and counted_scans == [4]
    assert not list(tmp_path.rglob("*.tmp"))
    np.load(path, allow_pickle=False)  # plain arrays only: loadable without pickle
    second = load_or_scan(files, path)
    assert counted_scans == [4]  # no rescan
    assert second.im_files == first.im_files and second.problems == first.problems
    np.testing.assert_array_equal(second.shapes, first.shapes)
    assert second.shapes[1].tolist() == [33, 24]  # (w, h)
    for a, b in zip(first.labels, second.labels, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rebuilt_when_a_label_changes(tmp_path, counted_scans):
    src = make_set(tmp_path)
    files, path = list_image_files([src]), cache_path_for([src])
    load_or_scan(files, path)
    (tmp_path / "labels" / "2.txt").write_text("1 0.5 0.5 0.5 0.5\n1 0.2 0.2 0.1 0.1\n")
    scan = load_or_scan(files, path)
    assert counted_scans == [4, 4] and len(scan.labels[2]) == 2
    load_or_scan(files, path)
    assert counted_scans == [4, 4]


def test_corrupt_cache_rebuilt_with_warning(tmp_path, counted_scans, caplog):
    src = make_set(tmp_path)
    files, path = list_image_files([src]), cache_path_for([src])
    load_or_scan(files, path)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        scan = load_or_scan(files, path)
    assert "stale/corrupt" in caplog.text and counted_scans == [4, 4] and len(scan.im_files) == 4
    load_or_scan(files, path)
    assert counted_scans == [4, 4]  # the rebuilt cache is good


def test_read_only_folder_continues_without_cache(tmp_path, monkeypatch, caplog):
    src = make_set(tmp_path)

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io, "open", refuse, raising=False)  # the temp file cannot be created
    with caplog.at_level(logging.WARNING):
        scan = load_or_scan(list_image_files([src]), cache_path_for([src]))
    assert len(scan.im_files) == 4 and "continuing without it" in caplog.text
    assert not (tmp_path / "labels.cache").exists()


def test_txt_source_relative_entries_and_cache_name(tmp_path):
    make_set(tmp_path / "ds")
    lst = tmp_path / "ds" / "train.txt"
    lst.write_text("./images/0.jpg\nimages/1.jpg\n\nimages/notes.md\n")
    assert list_image_files([lst]) == [str(tmp_path / "ds/images/0.jpg"), str(tmp_path / "ds/images/1.jpg")]
    assert cache_path_for([lst]) == tmp_path / "ds" / "train.cache"
    with pytest.raises(BadData):
        list_image_files([tmp_path / "nothing"])


def test_summary_counts_reasons(tmp_path, caplog):
    src = make_set(tmp_path, n=6)
    (tmp_path / "labels" / "0.txt").unlink()  # missing
    (tmp_path / "labels" / "1.txt").write_text("")  # empty
    (src / "2.jpg").write_bytes(b"")  # zero-byte
    (tmp_path / "labels" / "3.txt").write_text("0 0,5 0.5 0.1 0.1\n")  # non-numeric
    (tmp_path / "labels" / "4.txt").write_text("7 0.5 0.5 0.1 0.1\n0 0.5 0.5 nan 0.1\n")  # class >= nc
    scan = scan_images(list_image_files([src]), workers=2)
    apply_class_limit(scan, nc=2)
    with caplog.at_level(logging.INFO):
        stats = report(scan, "train: ")
    assert stats["found"] == 6 and stats["usable"] == 3 and stats["missing_labels"] == 1 and stats["empty"] == 1
    assert stats["corrupt"] == 3 and stats["corrupt:zero-byte"] == 1 and stats["corrupt:non-numeric value"] == 1
    assert stats["corrupt:class out of range"] == 1 and stats["rows:non-finite"] == 1
    assert "train: found 6 images: 1 missing labels, 1 empty, 3 corrupt (" in caplog.text
    assert "0..1" in caplog.text  # the class-range message names the valid range


def test_mostly_missing_labels_warns_with_example(tmp_path, caplog):
    src = make_set(tmp_path, n=5)
    for i in range(3):
        (tmp_path / "labels" / f"{i}.txt").unlink()
    with caplog.at_level(logging.WARNING):
        report(scan_images(list_image_files([src])))
    assert "60% of images have no label file" in caplog.text
    assert str(tmp_path / "labels" / "0.txt") in caplog.text


def test_all_missing_labels_is_an_error(tmp_path):
    src = make_set(tmp_path, labels=False)
    with pytest.raises(BadData, match=r"no labels found.*'labels' folder beside 'images'"):
        report(scan_images(list_image_files([src])))


def test_nothing_usable_is_an_error(tmp_path):
    src = make_set(tmp_path, n=2)
    for p in src.iterdir():
        p.write_bytes(b"")
    with pytest.raises(BadData, match="none of the 2 images is usable"):
        report(scan_images(list_image_files([src])))
