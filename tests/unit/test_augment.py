"""Augmentations: the box follows the pixels through every geometric transform (and the full preset)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yolodist.augment.color import augment_hsv
from yolodist.augment.geometry import box_candidates, fliplr, flipud, letterbox, random_perspective
from yolodist.augment.mosaic import mixup, mosaic4
from yolodist.augment.policy import TrainAugment, ValAugment
from yolodist.config.schema import Hyp
from yolodist.ops.boxes import scale_boxes, xywhn2xyxy, xyxy2xywhn

# Saturated BGR colours, far from the grey background and the 114 padding.
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]


def scene(h, w, boxes, bg=60):
    """Grey image with one filled rectangle per (x1, y1, x2, y2) box in COLOURS order; labels cls+xyxy px."""
    img = np.full((h, w, 3), bg, np.uint8)
    labels = []
    for c, (x1, y1, x2, y2) in enumerate(boxes):
        img[y1:y2, x1:x2] = COLOURS[c]
        labels.append([c, x1, y1, x2, y2])
    return img, np.array(labels, np.float32).reshape(-1, 5)


def colour_box(img, c):
    """Bounding box (x1, y1, x2, y2) of the pixels close to COLOURS[c], or None."""
    mask = np.abs(img.astype(int) - COLOURS[c]).sum(-1) < 150
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_boxes_follow(img, labels_xyxy, min_iou=0.9):
    """Per class, the union of its label boxes matches the bounding box of its colour's pixels.

    (A class can appear twice, e.g. when a mosaic draws the same image twice, hence the union.)
    """
    labels_xyxy = np.asarray(labels_xyxy)
    assert len(labels_xyxy), "every box was filtered out"
    for c in np.unique(labels_xyxy[:, 0]).astype(int):
        rows = labels_xyxy[labels_xyxy[:, 0] == c, 1:5]
        union = np.array([rows[:, 0].min(), rows[:, 1].min(), rows[:, 2].max(), rows[:, 3].max()])
        seen = colour_box(img, c)
        assert seen is not None, f"class {c} has a label but no pixels"
        assert iou(seen, union) > min_iou, (seen, rows)


def to_xyxy(img, labels_n):
    out = labels_n.copy()
    out[:, 1:] = xywhn2xyxy(labels_n[:, 1:], img.shape[1], img.shape[0])
    return out


@pytest.mark.parametrize(("shape", "new"), [((96, 128), 160), ((128, 96), (96, 200)), ((64, 64), 48)])
def test_letterbox_box_follows(shape, new):
    img, px = scene(*shape, [(20, 30, 60, 50)])
    out, (r, _), (dw, dh) = letterbox(img, new)
    new = (new, new) if isinstance(new, int) else new
    assert out.shape[:2] == new
    moved = px.copy()
    moved[:, [1, 3]] = px[:, [1, 3]] * r + dw
    moved[:, [2, 4]] = px[:, [2, 4]] * r + dh
    assert_boxes_follow(out, moved)


def test_letterbox_auto_pads_to_stride_and_no_scaleup():
    img = np.zeros((100, 50, 3), np.uint8)
    out, _, _ = letterbox(img, 640, auto=True, stride=32)
    assert out.shape[0] == 640 and out.shape[1] % 32 == 0
    out, (r, _), _ = letterbox(img, 200, scaleup=False)
    assert r == 1.0 and out.shape[:2] == (200, 200)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(10, 300), st.integers(10, 300), st.integers(32, 320), st.integers(32, 320),
    st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)  # fmt: skip
def test_letterbox_roundtrip_with_scale_boxes(h, w, nh, nw, frac):
    out, ratio, pad = letterbox(np.zeros((h, w, 3), np.uint8), (nh, nw))
    x1, x2 = sorted(frac[:2])
    y1, y2 = sorted(frac[2:])
    box = np.array([[x1 * w, y1 * h, x2 * w, y2 * h]])
    model = box.copy()
    model[:, [0, 2]] = box[:, [0, 2]] * ratio[0] + pad[0]
    model[:, [1, 3]] = box[:, [1, 3]] * ratio[1] + pad[1]
    back = scale_boxes(out.shape[:2], model, (h, w), ratio_pad=(ratio, pad))
    np.testing.assert_allclose(back, box, atol=1e-6 * max(h, w))


@pytest.mark.parametrize("seed", range(6))
def test_random_perspective_box_follows(seed):
    img, px = scene(160, 160, [(40, 50, 100, 90), (110, 20, 140, 60)])
    rng = np.random.default_rng(seed)
    out, lb = random_perspective(img, px, rng, degrees=30, translate=0.1, scale=0.3, shear=0)
    assert out.shape == img.shape and lb.dtype == np.float32
    assert_boxes_follow(out, lb, min_iou=0.85)


def test_random_perspective_with_border_and_perspective_shrinks_canvas():
    img, px = scene(200, 200, [(60, 60, 140, 140)])
    out, lb = random_perspective(img, px, np.random.default_rng(0), degrees=0, translate=0, scale=0, shear=0,
                                 perspective=0.0, border=(-50, -50))  # fmt: skip
    assert out.shape == (100, 100, 3)
    np.testing.assert_allclose(lb[0, 1:], [10, 10, 90, 90])
    assert_boxes_follow(out, lb)
    out, lb = random_perspective(img, px, np.random.default_rng(1), degrees=5, translate=0.05, scale=0.1,
                                 shear=2, perspective=0.0005)  # fmt: skip
    assert_boxes_follow(out, lb, min_iou=0.8)


def test_box_candidates_filters_tiny_thin_and_shrunken():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 100], [0, 0, 10, 10]], float).T
    after = np.array([[0, 0, 10, 10], [0, 0, 1.5, 10], [0, 0, 20, 20], [0, 0, 300, 2.5]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, False]


def test_flips_box_follows():
    img, px = scene(80, 120, [(10, 5, 50, 30)])
    labels = px.copy()
    labels[:, 1:] = xyxy2xywhn(px[:, 1:], 120, 80)
    for flip, mirrored in ((fliplr, img[:, ::-1]), (flipud, img[::-1])):
        out, lb = flip(img, labels)
        assert out.flags.c_contiguous and np.array_equal(out, mirrored)
        assert_boxes_follow(out, to_xyxy(out, lb))
    assert labels[0, 1] == pytest.approx(30 / 120)  # inputs untouched


def _loader(size=64):
    """load_fn over four scenes with one uniquely coloured box each (long side = size)."""
    samples = {}
    for i in range(4):
        h, w = (size, size * 3 // 4) if i % 2 else (size * 3 // 4, size)
        img, _ = scene(h, w, [])
        img[10:30, 8 + i * 4 : 30 + i * 4] = COLOURS[i]
        lb = np.array([[i, 8 + i * 4, 10, 30 + i * 4, 30]], np.float32)
        lb[:, 1:] = xyxy2xywhn(lb[:, 1:], w, h)
        samples[i] = (img, lb, (h * 2, w * 2))
    return lambda i: samples[i]


@pytest.mark.parametrize("seed", range(4))
def test_mosaic_box_follows(seed):
    canvas, lb = mosaic4(_loader(), [0, 1, 2, 3], 64, np.random.default_rng(seed))
    assert canvas.shape == (128, 128, 3)
    visible = [row for row in lb if (row[3] - row[1]) > 2 and (row[4] - row[2]) > 2]
    assert_boxes_follow(canvas, np.array(visible))


@pytest.mark.parametrize("seed", range(4))
def test_train_preset_box_follows(seed):
    hyp = Hyp().replace(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=10.0, flipud=0.5, mixup=0.0)
    img, lb, shapes = TrainAugment(hyp, 64)(0, _loader(), np.random.default_rng(seed), n=4)
    assert img.shape == (64, 64, 3) and shapes is None
    assert ((lb[:, 1:] >= 0) & (lb[:, 1:] <= 1)).all()
    assert_boxes_follow(img, to_xyxy(img, lb), min_iou=0.8)


def test_train_preset_without_mosaic_and_val_preset():
    hyp = Hyp().replace(mosaic=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    img, lb, shapes = TrainAugment(hyp, 64)(1, _loader(), np.random.default_rng(0), n=4)
    assert img.shape == (64, 64, 3) and shapes[0] == (128, 96)
    assert_boxes_follow(img, to_xyxy(img, lb), min_iou=0.8)
    img, lb, shapes = ValAugment(64)(0, _loader())
    assert img.shape == (64, 64, 3)
    (h0, w0), ((gh, _), (pw, ph)) = shapes
    assert (h0, w0) == (96, 128) and gh == pytest.approx(48 / 96) and (pw, ph) == (0.0, 8.0)
    assert_boxes_follow(img, to_xyxy(img, lb))
    img, _, _ = ValAugment(64, rect_shape=(64, 96))(0, _loader())
    assert img.shape == (64, 96, 3)


def _hsv_plane_by_plane(img, rng, gains):
    """The jitter written out plane by plane (split, one table each, merge): the reference."""
    r = rng.uniform(-1, 1, 3) * gains + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    tables = ((x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255))
    planes = [cv2.LUT(p, t.astype(np.uint8)) for p, t in zip((hue, sat, val), tables, strict=True)]
    return cv2.cvtColor(cv2.merge(planes), cv2.COLOR_HSV2BGR)


def test_hsv_matches_the_plane_by_plane_reference():
    img = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for seed in range(5):
        ours = augment_hsv(img.copy(), np.random.default_rng(seed), 0.015, 0.7, 0.4)
        np.testing.assert_array_equal(ours, _hsv_plane_by_plane(img, np.random.default_rng(seed), [0.015, 0.7, 0.4]))


def test_hsv_deterministic_and_zero_gain_noop():
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    a = augment_hsv(img.copy(), np.random.default_rng(5), 0.015, 0.7, 0.4)
    b = augment_hsv(img.copy(), np.random.default_rng(5), 0.015, 0.7, 0.4)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and not np.array_equal(a, img)
    np.testing.assert_array_equal(augment_hsv(img.copy(), np.random.default_rng(5), 0, 0, 0), img)


def test_mixup_blends_and_keeps_both_label_sets():
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)
    img, lb = mixup(a, np.ones((2, 5), np.float32), b, np.zeros((3, 5), np.float32), np.random.default_rng(0))
    assert lb.shape == (5, 5) and img.dtype == np.uint8
    assert 60 < img.mean() < 140  # Beta(32, 32) is close to an even blend


def test_normalised_labels_are_xyxy2xywhn_clipped():
    """policy's hot-path conversion against ops.boxes' (boxes reaching outside the image included)."""
    from yolodist.augment.policy import _normalised

    rng = np.random.default_rng(0)
    for h, w in ((320, 320), (256, 384), (417, 33)):
        px = np.concatenate([rng.integers(0, 5, (60, 1)), rng.uniform(-80, 500, (60, 4))], 1).astype(np.float32)
        expected = px.copy()
        expected[:, 1:] = xyxy2xywhn(px[:, 1:].copy(), w, h, clip=True)
        got = _normalised(np.zeros((h, w, 3), np.uint8), px)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert _normalised(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 5))).shape == (0, 5)
