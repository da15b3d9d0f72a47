"""The built-in 'shapes' dataset: determinism, label correctness, atomic (re)generation, locations."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolodist.data.shapes_render import render_sample
from yolodist.data.synthetic import (
    SHAPES_NAMES,
    default_datasets_dir,
    ensure_shapes,
)
from yolodist.errors import BadData

SMALL = {"n_train": 24, "n_val": 8, "img_size": 128}
ROW = re.compile(r"^\d+ \d\.\d{6} \d\.\d{6} \d\.\d{6} \d\.\d{6}$")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return ensure_shapes(tmp_path_factory.mktemp("ds") / "shapes", seed=0, **SMALL).parent


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_labels(path: Path) -> np.ndarray:
    """(n, 5) rows of a label file, checking the text format on the way."""
    lines = path.read_text().splitlines()
    assert all(ROW.match(line) for line in lines), lines
    return np.array([[float(v) for v in line.split()] for line in lines]).reshape(-1, 5)


def to_pixels(row: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    cx, cy, w, h = row[1:]
    return (
        round((cx - w / 2) * width),
        round((cy - h / 2) * height),
        round((cx + w / 2) * width),
        round((cy + h / 2) * height),
    )


def iou(a: tuple, b: tuple) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def saturation(image: np.ndarray) -> np.ndarray:
    """(H, W) channel spread: high for the saturated objects, low for the muted background."""
    return image.max(axis=2).astype(int) - image.min(axis=2).astype(int)


def test_layout_and_yaml(small_set):
    spec = yaml.safe_load((small_set / "shapes.yaml").read_text())
    assert spec["path"] == str(small_set.absolute())
    assert (spec["train"], spec["val"]) == ("images/train", "images/val")
    assert spec["names"] == dict(enumerate(SHAPES_NAMES))
    assert spec["nc"] == len(SHAPES_NAMES) >= 6
    for split, count in (("train", SMALL["n_train"]), ("val", SMALL["n_val"])):
        stems = [f"{i:06d}" for i in range(count)]
        assert sorted(p.stem for p in (small_set / "images" / split).iterdir()) == stems
        assert sorted(p.stem for p in (small_set / "labels" / split).iterdir()) == stems
    meta = json.loads((small_set / "meta.json").read_text())
    assert meta["params"] == {**SMALL, "seed": 0}


def test_same_seed_same_bytes_other_seed_differs(small_set, tmp_path):
    again = ensure_shapes(tmp_path / "again", seed=0, **SMALL).parent
    first, second = all_files(small_set), all_files(again)
    assert first.keys() == second.keys()
    for name in first:
        if name != "shapes.yaml":  # holds the absolute path, which differs on purpose
            assert first[name] == second[name], name
    other = all_files(ensure_shapes(tmp_path / "other", seed=1, **SMALL).parent)
    changed = [n for n in first if n.startswith("images/") and first[n] != other[n]]
    assert len(changed) == SMALL["n_train"] + SMALL["n_val"]


def test_labels_are_valid_boxes_inside_the_image(small_set):
    sizes = set()
    for path in sorted((small_set / "labels").rglob("*.txt")):
        labels = read_labels(path)
        image = cv2.imread(str(small_set / "images" / path.parent.name / f"{path.stem}.jpg"))
        sizes.add(image.shape[:2])
        assert len(labels) <= 8
        assert np.all(labels[:, 0] == labels[:, 0].round())
        assert np.all((labels[:, 0] >= 0) & (labels[:, 0] < len(SHAPES_NAMES)))
        cx, cy, w, h = labels[:, 1:].T
        assert np.all((cx > 0) & (cx < 1) & (cy > 0) & (cy < 1))
        assert np.all((w > 0) & (w <= 1) & (h > 0) & (h <= 1))
        assert np.all(cx - w / 2 >= -1e-6) and np.all(cx + w / 2 <= 1 + 1e-6)
        assert np.all(cy - h / 2 >= -1e-6) and np.all(cy + h / 2 <= 1 + 1e-6)
        # Objects are never tiny: the short side of a box is at least ~half the 16 px minimum shape size.
        assert np.all(np.minimum(w * image.shape[1], h * image.shape[0]) >= 7)
    assert sizes == {(128, 128), (102, 128)}  # square and landscape images both occur


def test_boxes_hold_saturated_pixels_and_background_has_none(small_set):
    for path in sorted((small_set / "labels").rglob("*.txt")):
        image = cv2.imread(str(small_set / "images" / path.parent.name / f"{path.stem}.jpg"))
        height, width = image.shape[:2]
        vivid = saturation(image) > 90
        outside = np.ones((height, width), dtype=bool)
        for row in read_labels(path):
            x0, y0, x1, y1 = to_pixels(row, width, height)
            assert vivid[y0:y1, x0:x1].mean() > 0.25, (path, row)
            outside[y0:y1, x0:x1] = False
        assert vivid[outside].mean() < 0.01, path


def test_tight_colour_box_matches_label_for_isolated_objects(small_set):
    checked = 0
    for split, count in (("train", SMALL["n_train"]), ("val", SMALL["n_val"])):
        for index in range(count):
            sample = render_sample(index, split=split, img_size=128, seed=0)
            image = cv2.imread(str(small_set / "images" / split / f"{index:06d}.jpg")).astype(np.float32)
            height, width = image.shape[:2]
            boxes = [to_pixels(row, width, height) for row in sample.labels]
            for k, box in enumerate(boxes):
                grown = (box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3)
                if any(iou(grown, other) > 0 for j, other in enumerate(boxes) if j != k):
                    continue
                window = np.zeros((height, width), dtype=bool)
                window[max(grown[1], 0) : grown[3], max(grown[0], 0) : grown[2]] = True
                inside = np.zeros_like(window)
                inside[box[1] : box[3], box[0] : box[2]] = True
                # A pixel belongs to the object when it is closer to the object's colour than to the
                # background around the box: robust to JPEG's softening of the edges.
                background = np.median(image[window & ~inside], axis=0)
                distance = np.linalg.norm(image - sample.colors[k], axis=2)
                ys, xs = np.nonzero(window & (distance < np.linalg.norm(image - background, axis=2)))
                found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert iou(found, box) > 0.8, (split, index, k)
                checked += 1
    assert checked >= 20


def test_render_sample_agrees_with_the_files(small_set):
    for index in (0, 5, 13):
        sample = render_sample(index, split="train", img_size=128, seed=0)
        on_disk = read_labels(small_set / "labels" / "train" / f"{index:06d}.txt")
        np.testing.assert_allclose(sample.labels, on_disk, atol=1e-6)
        decoded = cv2.imread(str(small_set / "images" / "train" / f"{index:06d}.jpg"))
        assert decoded.shape == sample.image.shape
        assert np.abs(decoded.astype(int) - sample.image).mean() < 8  # only JPEG loss between them


def test_masks_are_visible_disjoint_and_define_the_boxes():
    for index in range(40):
        sample = render_sample(index, split="val", img_size=160, seed=3)
        height, width = sample.image.shape[:2]
        assert np.all(sample.masks.sum(axis=0) <= 1)
        for mask, row, color in zip(sample.masks, sample.labels, sample.colors, strict=True):
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == to_pixels(row, width, height)
            # Drawn pixels carry the object's colour up to the luminance noise.
            assert np.abs(sample.image[mask].astype(np.float32) - color).mean() < 8


def test_content_statistics_over_many_images():
    counts, classes, sides, empty = [], [], [], []
    for index in range(96):
        sample = render_sample(index, split="train", img_size=96, seed=7)
        counts.append(len(sample.labels))
        classes.extend(sample.labels[:, 0].astype(int))
        sides.extend(np.maximum(sample.labels[:, 3], sample.labels[:, 4]))
        if len(sample.labels) == 0:
            empty.append(index)
            assert (saturation(sample.image) > 90).mean() < 0.01
    assert empty == [7, 39, 71]  # background images, ~3 %
    assert set(counts) - {0} <= set(range(1, 9)) and max(counts) >= 6
    assert set(classes) == set(range(len(SHAPES_NAMES)))
    assert max(sides) > 0.3 and min(sides) < 0.3


def test_background_image_in_a_small_set_has_an_empty_label_file(small_set):
    assert (small_set / "labels" / "train" / "000007.txt").read_text() == ""
    assert (small_set / "labels" / "val" / "000007.txt").read_text() == ""


def test_reuse_when_complete_and_log_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="yolodist"):
        ensure_shapes(tmp_path / "s", n_train=4, n_val=2, img_size=64)
        stamp = (tmp_path / "s" / "images" / "train" / "000000.jpg").stat().st_mtime_ns
        ensure_shapes(tmp_path / "s", n_train=4, n_val=2, img_size=64)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "generating the built-in 'shapes' dataset" in lines[0]
    assert (tmp_path / "s" / "images" / "train" / "000000.jpg").stat().st_mtime_ns == stamp


def test_regenerates_when_parameters_differ(tmp_path):
    root = tmp_path / "s"
    ensure_shapes(root, n_train=4, n_val=2, img_size=64, seed=0)
    before = all_files(root)
    ensure_shapes(root, n_train=5, n_val=2, img_size=64, seed=1)
    after = all_files(root)
    assert json.loads(after["meta.json"])["params"] == {"n_train": 5, "n_val": 2, "img_size": 64, "seed": 1}
    assert "images/train/000004.jpg" in after and before["images/val/000000.jpg"] != after["images/val/000000.jpg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or trash dirs left


def test_incomplete_set_is_regenerated(tmp_path):
    root = tmp_path / "s"
    ensure_shapes(root, n_train=4, n_val=2, img_size=64)
    before = all_files(root)
    (root / "images" / "val" / "000001.jpg").unlink()
    (root / "labels" / "train" / "000002.txt").unlink()
    ensure_shapes(root, n_train=4, n_val=2, img_size=64)
    assert all_files(root) == before


def test_interrupted_generation_is_never_taken_for_a_dataset(tmp_path):
    # A generation killed midway leaves only a temp sibling, named after a process that is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".s.tmp-{socket.gethostname()}-{dead.pid}-abcdef12"
    (leftover / "images" / "train").mkdir(parents=True)
    (leftover / "images" / "train" / "000000.jpg").write_bytes(b"partial")
    foreign = tmp_path / ".s.tmp-otherhost-1-abcdef12"  # maybe still running elsewhere: left alone
    foreign.mkdir()
    yaml_path = ensure_shapes(tmp_path / "s", n_train=3, n_val=2, img_size=64)
    assert yaml_path == tmp_path / "s" / "shapes.yaml" and yaml_path.is_file()
    assert not leftover.exists() and foreign.exists()


def test_concurrent_callers_share_one_complete_set(tmp_path):
    results, errors = [], []

    def call():
        try:
            results.append(ensure_shapes(tmp_path / "s", n_train=6, n_val=2, img_size=64))
        except Exception as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 3 and len(set(results)) == 1
    reference = all_files(ensure_shapes(tmp_path / "ref", n_train=6, n_val=2, img_size=64).parent)
    got = all_files(tmp_path / "s")
    assert {k: v for k, v in got.items() if k != "shapes.yaml"} == {
        k: v for k, v in reference.items() if k != "shapes.yaml"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "s"]


def test_moved_set_gets_its_yaml_path_updated_without_regenerating(tmp_path):
    ensure_shapes(tmp_path / "a", n_train=3, n_val=2, img_size=64)
    shutil.move(tmp_path / "a", tmp_path / "b")
    stamp = (tmp_path / "b" / "meta.json").stat().st_mtime_ns
    yaml_path = ensure_shapes(tmp_path / "b", n_train=3, n_val=2, img_size=64)
    assert yaml.safe_load(yaml_path.read_text())["path"] == str(tmp_path / "b")
    assert (tmp_path / "b" / "meta.json").stat().st_mtime_ns == stamp


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "my_notes.txt").write_text("keep me")
    with pytest.raises(BadData, match="not a complete yolodist 'shapes' dataset"):
        ensure_shapes(tmp_path / "s", n_train=3, n_val=2, img_size=64)
    assert (tmp_path / "s" / "my_notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs", [{"n_train": 0}, {"n_val": -1}, {"img_size": 32}, {"img_size": 100.0}, {"seed": -1}])
def test_bad_parameters_are_user_errors(tmp_path, kwargs):
    with pytest.raises(BadData, match="the 'shapes' dataset needs an integer"):
        ensure_shapes(tmp_path / "s", **{"n_train": 2, "n_val": 2, "img_size": 64, **kwargs})
    assert not (tmp_path / "s").exists()


def test_datasets_dir_from_environment_or_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLODIST_DATASETS_DIR", str(tmp_path / "env"))
    assert default_datasets_dir() == tmp_path / "env"
    yaml_path = ensure_shapes(n_train=2, n_val=2, img_size=64)
    assert yaml_path == tmp_path / "env" / "shapes" / "shapes.yaml" and yaml_path.is_file()
    monkeypatch.delenv("YOLODIST_DATASETS_DIR")
    monkeypatch.chdir(tmp_path)
    assert default_datasets_dir() == Path(os.getcwd()) / "datasets"


def test_unknown_split_is_a_user_error():
    with pytest.raises(BadData, match="unknown split 'test'"):
        render_sample(0, split="test")
