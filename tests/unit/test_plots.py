"""Plots: each writes a decodable image atomically; boxes land where the targets say; the maths behind them."""

from __future__ import annotations

import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from yolodist.eval import plots
from yolodist.eval.plots import (
    gaussian_smooth,
    normalize_confusion,
    plot_confusion_matrix,
    plot_images,
    plot_labels,
    plot_metric_curve,
    plot_pr_curve,
    plot_results,
    read_results_csv,
    safe_plot,
)
from yolodist.utils.draw import colors

UPSTREAM_COLUMNS = (
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "x/lr0",
    "x/lr1",
    "x/lr2",
)


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a decodable image"
    return image[..., ::-1].astype(int)


def no_temp_files(directory) -> bool:
    return not list(directory.glob(".*.tmp"))


def near(image: np.ndarray, x: int, y: int, color: tuple[int, int, int], radius: int = 2, tol: int = 60) -> bool:
    """Some pixel within ``radius`` of (x, y) has about ``color`` (JPEG and anti-aliasing blur edges)."""
    window = image[y - radius : y + radius + 1, x - radius : x + radius + 1]
    return int(np.abs(window - np.array(color)).sum(-1).min()) < tol


# --------------------------------------------------------------------------------------------- cheap parts


def test_import_loads_no_plotting_or_torch():
    code = "import sys, yolodist.eval.plots; print(sorted({'matplotlib', 'cv2', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_colors_palette():
    palette = [colors(i) for i in range(20)]
    assert len(set(palette)) == 20
    assert colors(20) == colors(0) and colors(41) == colors(1)
    assert colors(0) == (255, 56, 56) and colors(0, bgr=True) == (56, 56, 255)
    assert all(0 <= v <= 255 for c in palette for v in c)


def test_normalize_confusion_columns_sum_to_one():
    matrix = np.array([[2, 0, 1], [1, 3, 0], [1, 1, 0]])  # [pred, true], background last
    out = normalize_confusion(matrix)
    expected = np.array([[0.5, np.nan, 1.0], [0.25, 0.75, np.nan], [0.25, 0.25, np.nan]])
    np.testing.assert_allclose(out, expected, atol=1e-8)
    np.testing.assert_allclose(np.nansum(out, 0), [1, 1, 1], atol=1e-8)
    assert matrix[0, 0] == 2  # the input is not modified


def test_normalize_confusion_hides_small_and_empty_columns():
    matrix = np.zeros((3, 3))
    matrix[:, 0] = [996, 4, 0]  # 0.996 and 0.004: the second is below 0.005 and hidden
    out = normalize_confusion(matrix)
    assert out[0, 0] == pytest.approx(0.996) and np.isnan(out[1, 0])
    assert np.isnan(out[:, 1:]).all()  # a class with no labels is blank, not a division error
    raw = normalize_confusion(matrix, normalize=False)
    assert raw[0, 0] == 996 and raw[1, 0] == 4 and np.isnan(raw[2, 0])


def test_gaussian_smooth_keeps_length_and_constants():
    np.testing.assert_allclose(gaussian_smooth(np.full(7, 3.0)), np.full(7, 3.0))
    step = np.r_[np.zeros(20), np.ones(20)]
    smoothed = gaussian_smooth(step, 3)
    assert smoothed.shape == step.shape
    assert np.all(np.diff(smoothed) >= -1e-12) and 0 < smoothed[19] < 1
    assert gaussian_smooth(np.array([5.0])).tolist() == [5.0]


def test_read_results_csv_strips_headers_and_tolerates_bad_cells(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        f"{'epoch':>20s},{'train/box_loss':>20s},{'metrics/mAP_0.5':>20s}\n"
        f"{0:>20d},{0.1:>20.5g},{0.5:>20.5g}\n"
        f"{1:>20d},{'nan':>20s},{0.6:>20.5g}\n"
        f"{2:>20d},{0.05:>20.5g}\n"  # a row cut short by an interrupted write
    )
    columns = read_results_csv(csv_path)
    assert set(columns) == {"epoch", "train/box_loss", "metrics/mAP_0.5"}
    np.testing.assert_array_equal(columns["epoch"], [0, 1, 2])
    assert columns["train/box_loss"][0] == pytest.approx(0.1) and np.isnan(columns["train/box_loss"][1])
    assert np.isnan(columns["metrics/mAP_0.5"][2])


def test_safe_plot_swallows_errors_with_one_warning(caplog):
    def broken_plot(path):
        raise ValueError("bad shape\nsecond line")

    with caplog.at_level(logging.WARNING, logger="yolodist"):
        assert safe_plot(broken_plot, "x.png") is None
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "broken_plot" in message and "bad shape second line" in message and "\n" not in message
    assert safe_plot(lambda a, b=0: a + b, 1, b=2) == 3


def test_failed_plot_keeps_previous_file(tmp_path):
    path = tmp_path / "PR_curve.png"
    path.write_bytes(b"previous")
    px = np.linspace(0, 1, 1000)
    assert safe_plot(plot_pr_curve, px, [np.ones(5)], np.array([0.5]), ["a"], path) is None  # wrong curve length
    assert path.read_bytes() == b"previous" and no_temp_files(tmp_path)


# --------------------------------------------------------------------------------------------- image mosaics

H = W = 400  # 2x2 mosaic of 800 px: line width 2, so box edges survive JPEG


def blank_batch(n: int = 4) -> np.ndarray:
    return np.zeros((n, 3, H, W), dtype=np.uint8)


def test_plot_images_draws_boxes_at_pixel_targets(tmp_path):
    targets = np.array(
        [
            [0, 0, 200, 200, 160, 100],  # image 0 (top-left tile): x 120-280, y 150-250
            [1, 5, 100, 300, 80, 120],  # image 1 is below image 0 (tiles fill column by column)
        ],
        dtype=float,
    )
    path = plot_images(
        blank_batch(), targets, None, ["zero", "one", "two", "three", "four", "five"], tmp_path / "b.jpg"
    )
    image = read_rgb(path)
    assert image.shape == (2 * H, 2 * W, 3) and no_temp_files(tmp_path)
    assert near(image, 120, 200, colors(0)) and near(image, 280, 200, colors(0))  # left and right edges
    assert near(image, 60, H + 300, colors(5)) and near(image, 140, H + 300, colors(5))
    assert image[200, 200].max() < 30  # inside the box: still the black image
    assert image[100:300, W + 100 : W + 300].max() < 30  # image 2 (top-right tile) has no targets
    assert near(image, W, H // 2, (255, 255, 255), radius=1)  # white border between tiles


def test_plot_images_normalised_coords_torch_and_numpy_agree(tmp_path):
    pixel = np.array([[0, 3, 200, 100, 100, 50], [3, 1, 300, 300, 50, 100]], dtype=float)
    normalised = pixel / [1, 1, W, H, W, H]
    names = ["a", "b", "c", "d"]
    out_pixel = read_rgb(plot_images(blank_batch(), pixel, None, names, tmp_path / "pixel.jpg"))
    out_norm = read_rgb(plot_images(blank_batch(), normalised, None, names, tmp_path / "norm.jpg"))
    out_torch = read_rgb(
        plot_images(torch.from_numpy(blank_batch()), torch.from_numpy(normalised), None, names, tmp_path / "t.jpg")
    )
    np.testing.assert_array_equal(out_pixel, out_norm)
    np.testing.assert_array_equal(out_pixel, out_torch)
    assert near(out_pixel, 150, 100, colors(3))  # image 0, left edge
    assert near(out_pixel, W + 300, H + 250, colors(1))  # image 3 (bottom-right), top edge


def test_plot_images_predictions_below_threshold_not_drawn(tmp_path):
    preds = np.array([[0, 2, 200, 200, 160, 160, 0.9], [1, 2, 200, 200, 160, 160, 0.1]])
    image = read_rgb(plot_images(blank_batch(2), preds, None, ["a", "b", "c"], tmp_path / "pred.jpg"))
    assert near(image, 120, 200, colors(2))  # image 0: conf 0.9 drawn
    assert image[H + 100 : H + 300, 100:300].max() < 30  # image 1 (below it): conf 0.1 not drawn


def test_plot_images_file_names_and_float_input(tmp_path):
    images = np.zeros((2, 3, H, W), dtype=np.float32)  # float 0-1 input is scaled to 0-255
    images[1] = 1.0
    image = read_rgb(plot_images(images, None, ["dir/first.jpg", "second.jpg"], [], tmp_path / "names.jpg"))
    assert image[8:30, 5:120].max() > 150  # grey file name over the black image 0
    assert image[H + 50 : H + 100, 50:100].min() > 230  # image 1 is white
    plain = read_rgb(plot_images(images, None, None, [], tmp_path / "plain.jpg"))
    assert plain[8:30, 5:120].max() < 30


def test_plot_images_resizes_to_max_size_and_limits_subplots(tmp_path):
    images = np.zeros((20, 3, 800, 800), dtype=np.uint8)
    targets = np.array([[0, 0, 400, 400, 400, 400]], dtype=float)  # 200-600 in the input: 50-150 in the tile
    image = read_rgb(plot_images(images, targets, None, ["a"], tmp_path / "big.jpg", max_size=800))
    assert image.shape == (800, 800, 3)  # 16 of the 20 images, 4x4 tiles of 200 px
    assert near(image, 50, 100, colors(0)) and near(image, 150, 100, colors(0))
    assert image[90:110, 90:110].max() < 30


# --------------------------------------------------------------------------------------------- figures


def test_plot_pr_curve(tmp_path):
    px = np.linspace(0, 1, 1000)
    py = [1 - px**2, 1 - px]
    path = plot_pr_curve(px, py, np.array([0.667, 0.5]), ["cat", "dog"], tmp_path / "PR_curve.png")
    assert path == tmp_path / "PR_curve.png"
    image = read_rgb(path)
    assert image.shape == (1500, 2250, 3) and image.std() > 0 and no_temp_files(tmp_path)


def test_plot_metric_curve_many_classes(tmp_path):
    px = np.linspace(0, 1, 1000)
    curves = np.linspace(0.2, 0.9, 25)[:, None] * (1 - px**2)  # more than 20 classes: grey, unlabelled curves
    path = plot_metric_curve(px, curves, [f"c{i}" for i in range(25)], tmp_path / "F1_curve.png", ylabel="F1")
    assert read_rgb(path).shape == (1500, 2250, 3)


def test_plot_confusion_matrix(tmp_path):
    matrix = np.array([[5, 1, 0, 2], [0, 4, 1, 0], [1, 0, 6, 1], [0, 1, 0, 0]])
    path = plot_confusion_matrix(matrix, ["a", "b", "c"], tmp_path / "confusion_matrix.png")
    image = read_rgb(path)
    assert image.shape == (2250, 3000, 3) and no_temp_files(tmp_path)
    # Blues: the darkest cells are dark blue (blue channel well above red).
    blue = image[(image[..., 2] - image[..., 0]) > 100]
    assert len(blue) > 1000


def test_plot_results_upstream_csv(tmp_path):
    columns = [c for c in UPSTREAM_COLUMNS if c != "val/cls_loss"]  # a missing column leaves its panel empty
    rows = [",".join(f"{c:>20s}" for c in columns)]
    rng = np.random.default_rng(0)
    for epoch in range(3):
        rows.append(",".join([f"{epoch:>20d}", *(f"{v:>20.5g}" for v in rng.random(len(columns) - 1))]))
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    path = plot_results(csv_path)
    assert path == tmp_path / "results.png"
    assert read_rgb(path).shape == (1200, 2400, 3) and no_temp_files(tmp_path)


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    n = 10_000
    labels = np.c_[rng.integers(0, 3, n), rng.random((n, 2)), rng.random((n, 2)) * 0.3]
    path = plot_labels(labels, ["a", "b", "c"], tmp_path / "labels.jpg")
    image = read_rgb(path)
    assert image.shape == (1600, 1600, 3)
    bar_pixels = (np.abs(image - np.array(colors(0))).sum(-1) < 30).sum()
    assert bar_pixels > 10_000  # class 0's bar in its palette colour
    empty = plot_labels(np.zeros((0, 5)), [], tmp_path / "empty.jpg")
    assert read_rgb(empty).shape == (1600, 1600, 3) and no_temp_files(tmp_path)


def test_module_has_upstream_panel_order():
    assert plots.RESULTS_PANELS[:5] == UPSTREAM_COLUMNS[1:6]
    assert plots.RESULTS_PANELS[5:8] == UPSTREAM_COLUMNS[8:11]
    assert plots.RESULTS_PANELS[8:] == UPSTREAM_COLUMNS[6:8]
