"""The scale-and-translate warp as a window and a resize, and the mosaic canvas painted only where read.

``scale_and_shift`` must put every pixel where ``cv2.warpAffine`` with the matrix it reports puts
it (up to the two interpolations' rounding), move the drawn translation by at most half a source
pixel, and leave the boxes on their pixels; a ``TiledImage`` must give exactly the pixels of the
full canvas, so a mosaic warped from it is the one warped from the painted canvas.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_augment import _loader, assert_boxes_follow, scene, to_xyxy
from yolodist.augment.canvas import PAD_COLOR, TiledImage, window
from yolodist.augment.geometry import (
    _affine_matrix,
    _resize_window,
    is_scale_and_shift,
    random_perspective,
    scale_and_shift,
)
from yolodist.augment.mosaic import mosaic4, mosaic4_tiled
from yolodist.augment.policy import TrainAugment
from yolodist.config.schema import Hyp

DEFAULT_DRAW = (0.0, 0.1, 0.5, 0.0, 0.0)  # hyp.scratch-low's degrees, translate, scale, shear, perspective


def waves(h, w):
    """Three sinusoids of 16-24 px periods: a sampling position half a pixel off changes values by ~20."""
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [np.sin(xx * np.pi / 8), np.sin(yy * np.pi / 8), np.sin((xx + yy) * np.pi / 12)]
    return (127 + 100 * np.stack(planes, -1)).astype(np.uint8)


@pytest.mark.parametrize("draw", [DEFAULT_DRAW, (0.0, 0.45, 0.9, 0.0, 0.0)])  # the second: far off the canvas
def test_same_pixels_as_the_warp_with_the_applied_matrix(draw):
    img = waves(256, 256)
    for seed in range(40):
        m, _ = _affine_matrix(img.shape[:2], (128, 128), np.random.default_rng(seed), draw)
        assert is_scale_and_shift(m)
        out, applied = scale_and_shift(img, m, (128, 128))
        assert out.shape == (128, 128, 3) and out.strides[1:] == (3, 1)  # rows of pixels, as OpenCV reads them
        np.testing.assert_array_equal(np.diag(applied)[:2], np.diag(m)[:2])  # the scale as drawn
        shift = np.abs(applied[:2, 2] - m[:2, 2]) / np.diag(m)[:2]  # in source pixels
        assert (shift <= 0.5 + 1e-9).all()
        warped = cv2.warpAffine(img, applied[:2], dsize=(128, 128), borderValue=PAD_COLOR)
        # The warp places samples on a 1/32 px grid and rounds differently: a level or two, never more.
        assert np.abs(out.astype(int) - warped).max() <= 3, seed


@settings(max_examples=300, deadline=None)
@given(st.floats(-400.0, 400.0), st.floats(0.05, 4.0), st.integers(1, 700))
def test_the_window_holds_every_pixel_the_kept_outputs_read(start, k, length):
    x0, n, j0, used = _resize_window(start, k, length)
    assert abs(used - start) <= 0.5 + 1e-9
    assert round(n * k) >= j0 + length  # the resize makes every output kept
    # cv2.resize reads floor(p) and floor(p) + 1 at p = (j + 0.5) / k - 0.5 of the window: all inside it,
    # so no output kept leans on the resize's replicated border instead of the image or its padding.
    first, last = (j0 + 0.5) / k - 0.5, (j0 + length - 0.5) / k - 0.5
    assert first >= 0 and math.floor(last) + 1 <= n - 1
    assert x0 + first == pytest.approx(used)


def test_only_scale_and_translation_take_the_resize():
    rng = np.random.default_rng(0)
    assert is_scale_and_shift(_affine_matrix((64, 64), (64, 64), rng, DEFAULT_DRAW)[0])
    for draw in ((5.0, 0.1, 0.5, 0.0, 0.0), (0.0, 0.1, 0.5, 2.0, 0.0), (0.0, 0.1, 0.5, 0.0, 0.001)):
        assert not is_scale_and_shift(_affine_matrix((64, 64), (64, 64), rng, draw)[0])
    flipped = np.diag([-1.0, 1.0, 1.0])  # a mirror is not a scale: the resize cannot do it
    assert not is_scale_and_shift(flipped)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_follow_through_the_resize(seed):
    img, px = scene(160, 160, [(40, 50, 100, 90), (110, 20, 140, 60)])
    out, lb = random_perspective(img, px, np.random.default_rng(seed), degrees=0, translate=0.1, scale=0.5, shear=0)
    assert out.shape == img.shape
    assert_boxes_follow(out, lb, min_iou=0.9)


@pytest.mark.parametrize("seed", range(4))
def test_train_preset_at_default_hyps_box_follows(seed):
    hyp = Hyp().replace(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, flipud=0.5)
    img, lb, _ = TrainAugment(hyp, 64)(0, _loader(), np.random.default_rng(seed), n=4)
    assert img.shape == (64, 64, 3) and img.flags.writeable
    assert_boxes_follow(img, to_xyxy(img, lb), min_iou=0.8)


def test_tiled_windows_are_the_full_canvas_cut_and_padded():
    rng = np.random.default_rng(0)
    tiled = TiledImage((50, 70, 3))
    tiled.paste(0, 0, rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    tiled.paste(20, 35, rng.integers(0, 255, (30, 35, 3), dtype=np.uint8))  # covers part of the first
    full = tiled.full()
    assert full.shape == (50, 70, 3) and (full[45:, :30] == PAD_COLOR[0]).all()
    np.testing.assert_array_equal(full[20:30, 35:40], tiled.pieces[1][2][:10, :5])
    padded = cv2.copyMakeBorder(full, 20, 20, 20, 20, cv2.BORDER_CONSTANT, value=PAD_COLOR)
    for x0, y0, w, h in ((0, 0, 70, 50), (10, 5, 20, 30), (-7, -3, 30, 20), (60, 40, 25, 25), (-20, -20, 5, 5)):
        expected = padded[y0 + 20 : y0 + 20 + h, x0 + 20 : x0 + 20 + w]
        np.testing.assert_array_equal(tiled.window(x0, y0, w, h), expected)
        np.testing.assert_array_equal(window(full, x0, y0, w, h), expected)  # the plain-array path


@pytest.mark.parametrize(
    "draw", [DEFAULT_DRAW, (10.0, 0.1, 0.5, 2.0, 0.0), (0.0, 0.1, 0.5, 0.0, 0.0005)], ids=["resize", "affine", "persp"]
)
def test_a_mosaic_warped_from_its_tiles_is_the_one_warped_from_its_canvas(draw):
    degrees, translate, scale, shear, perspective = draw
    kw = dict(degrees=degrees, translate=translate, scale=scale, shear=shear, perspective=perspective)
    load = _loader(96)
    for seed in range(8):
        canvas, px = mosaic4(load, [0, 1, 2, 3], 96, np.random.default_rng(seed))
        tiled, px2 = mosaic4_tiled(load, [0, 1, 2, 3], 96, np.random.default_rng(seed))
        np.testing.assert_array_equal(tiled.full(), canvas)
        a, la = random_perspective(canvas, px, np.random.default_rng(seed + 100), border=(-48, -48), **kw)
        b, lb = random_perspective(tiled, px2, np.random.default_rng(seed + 100), border=(-48, -48), **kw)
        assert a.shape == (96, 96, 3)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_cached_tiles_are_never_written():
    """Tiles from the image cache are read-only views: the window is a copy the augmentations may change."""
    load = _loader(64)
    frozen = {}
    for i in range(4):
        img, lb, hw = load(i)
        img = img.copy()
        img.setflags(write=False)
        frozen[i] = (img, lb, hw)
    before = {i: v[0].copy() for i, v in frozen.items()}
    out, _, _ = TrainAugment(Hyp(), 64)(0, frozen.__getitem__, np.random.default_rng(3), n=4)
    out[:] = 0  # the HSV jitter writes into the sample in place
    for i in range(4):
        np.testing.assert_array_equal(frozen[i][0], before[i])


def _product_of_five(in_shape, out_shape, rng, params):
    """The documented matrix: centre, perspective, rotation/scale, shear, translation, multiplied out."""
    degrees, translate, scale, shear, perspective = params
    height, width = out_shape
    c, p, rot, sh, t = (np.eye(3) for _ in range(5))
    c[0, 2], c[1, 2] = -in_shape[1] / 2, -in_shape[0] / 2
    p[2, 0], p[2, 1] = rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)
    a, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=s)
    sh[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    sh[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    t[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    t[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    return t @ sh @ rot @ p @ c, s


@pytest.mark.parametrize("params", [DEFAULT_DRAW, (0.0, 0.2, 0.9, 0.0, 0.0), (10.0, 0.1, 0.5, 2.0, 0.001)])
def test_the_drawn_matrix_is_the_product_of_its_five_factors_exactly(params):
    """Scale and translation alone are written out without the identity factors: the same bits, the same
    draws (the rng is left where the product leaves it)."""
    for seed in range(300):
        ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
        in_shape, out_shape = (640 + seed % 7, 640 - seed % 5), (320, 320 + 32 * (seed % 3))
        m, s = _affine_matrix(in_shape, out_shape, ours, params)
        ref_m, ref_s = _product_of_five(in_shape, out_shape, theirs, params)
        assert np.array_equal(m, ref_m) and s == ref_s, (seed, m, ref_m)
        assert ours.random() == theirs.random()
