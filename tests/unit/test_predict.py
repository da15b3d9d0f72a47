"""Predictor: letterbox in, boxes back in the original image's pixels; NMS flags; drawing and crops."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from yolodist.errors import BadFlag
from yolodist.infer.annotate import annotate, box_label, crop_box, save_crop
from yolodist.infer.backend import Backend
from yolodist.infer.predict import _summary
from yolodist.infer.predictor import Predictor, check_img_size

NAMES = ["circle", "square", "triangle"]


class FakeBackend(Backend):
    """Returns fixed predictions (cx, cy, w, h in input pixels, obj, class scores) and records its inputs."""

    def __init__(self, rows: list[list[float]], fixed_shape=None, fixed_batch=None) -> None:
        self.names = list(NAMES)
        self.stride = 32
        self.device = torch.device("cpu")
        self.fixed_shape = fixed_shape
        self.fixed_batch = fixed_batch
        self.rows = torch.tensor(rows, dtype=torch.float32)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        self.inputs.append(imgs)
        return self.rows[None].repeat(imgs.shape[0], 1, 1)


def one_hot(cls: int, score: float = 0.9) -> list[float]:
    return [score if c == cls else 0.0 for c in range(len(NAMES))]


def image(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 90, np.uint8)


def test_dynamic_backend_gets_stride_padded_input_and_boxes_come_back_in_original_pixels():
    # 100x200 at --img 64: ratio 0.32, resized to 32x64, already a multiple of 32, so no padding
    backend = FakeBackend([[32, 16, 32, 16, 0.9, *one_hot(1)]])
    pred = Predictor(backend, (64, 64))(image(100, 200))
    assert tuple(backend.inputs[0].shape) == (1, 3, 32, 64)
    assert pred.input_shape == (32, 64)
    assert pred.boxes.shape == (1, 6)
    x1, y1, x2, y2, conf, cls = pred.boxes[0].tolist()
    assert (x1, y1, x2, y2) == (50, 25, 150, 75)  # (16, 8, 48, 24) / 0.32
    assert conf == pytest.approx(0.81) and cls == 1


def test_fixed_shape_backend_gets_exactly_its_shape_and_the_padding_is_removed():
    # same image into a fixed 64x64 model: 16 px of grey above and below the 32x64 picture
    backend = FakeBackend([[32, 32, 32, 16, 0.9, *one_hot(0)]], fixed_shape=(64, 64))
    pred = Predictor(backend, (320, 320))(image(100, 200))
    assert tuple(backend.inputs[0].shape) == (1, 3, 64, 64)
    x = backend.inputs[0]
    assert torch.allclose(x[0, :, :16], torch.full_like(x[0, :, :16], 114 / 255))  # letterbox pad colour on top
    assert pred.boxes[0, :4].tolist() == [50, 25, 150, 75]


def test_odd_padding_uses_the_pixels_actual_offset():
    # 100x150 into 64x64: ratio 64/150, resized to 43x64, 21 px of padding split 10 on top, 11 below
    backend = FakeBackend([[32, 42, 32, 20, 0.9, *one_hot(2)]], fixed_shape=(64, 64))
    pred = Predictor(backend)(image(100, 150))
    r = 64 / 150
    expected = [round(16 / r), round((32 - 10) / r), round(48 / r), round((52 - 10) / r)]
    assert pred.boxes[0, :4].tolist() == expected


def test_boxes_are_clipped_to_the_original_image():
    backend = FakeBackend([[60, 16, 40, 40, 0.9, *one_hot(0)]])  # spills past the right and bottom edges
    pred = Predictor(backend, (64, 64))(image(100, 200))
    x1, y1, x2, y2 = pred.boxes[0, :4].tolist()
    assert x2 == 200 and y1 == 0 and y2 == 100 and x1 == round(40 / 0.32)


def separated_rows(n: int) -> list[list[float]]:
    """n boxes that do not overlap, box i of class i % 3 with confidence rising with i."""
    return [[8 + 10 * i, 8, 6, 6, 0.5 + 0.05 * i, *one_hot(i % 3, 1.0)] for i in range(n)]


def test_class_filter_and_agnostic_nms():
    backend = FakeBackend(separated_rows(6))
    pred = Predictor(backend, (64, 64), classes=[1])(image(64, 64))
    assert pred.boxes[:, 5].tolist() == [1, 1]
    # two overlapping boxes of different classes: both survive per-class NMS, one survives agnostic NMS
    overlapping = FakeBackend([[20, 20, 10, 10, 0.9, *one_hot(0, 1.0)], [21, 20, 10, 10, 0.8, *one_hot(1, 1.0)]])
    assert len(Predictor(overlapping, (64, 64))(image(64, 64)).boxes) == 2
    agnostic = Predictor(overlapping, (64, 64), agnostic=True)(image(64, 64))
    assert agnostic.boxes[:, 5].tolist() == [0]


def test_max_det_keeps_the_most_confident_and_conf_thres_filters():
    backend = FakeBackend(separated_rows(5))
    pred = Predictor(backend, (64, 64), max_det=2)(image(64, 64))
    assert pred.boxes[:, 4].tolist() == pytest.approx([0.7, 0.65])
    pred = Predictor(backend, (64, 64), conf_thres=0.62)(image(64, 64))
    assert len(pred.boxes) == 2


def test_fixed_batch_backend_gets_a_full_batch():
    backend = FakeBackend(separated_rows(1), fixed_shape=(64, 64), fixed_batch=4)
    pred = Predictor(backend)(image(64, 64))
    assert backend.inputs[0].shape[0] == 4 and len(pred.boxes) == 1


def test_no_detections():
    pred = Predictor(FakeBackend(separated_rows(3)), (64, 64), conf_thres=0.99)(image(64, 64))
    assert pred.boxes.shape == (0, 6)
    assert _summary(pred.boxes, NAMES) == "(no detections), "


def test_summary_counts_per_class_with_plurals():
    boxes = torch.tensor([[0, 0, 1, 1, 0.9, 1], [0, 0, 1, 1, 0.8, 0], [0, 0, 1, 1, 0.7, 0]])
    assert _summary(boxes, NAMES) == "2 circles, 1 square, "


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": [3]}, "--classes 3: the model has 3 classes"),
        ({"conf_thres": 1.5}, "--conf-thres"),
        ({"iou_thres": -0.1}, "--iou-thres"),
        ({"max_det": 0}, "--max-det"),
    ],
)
def test_bad_settings_are_bad_flags(kwargs, match):
    with pytest.raises(BadFlag, match=match):
        Predictor(FakeBackend(separated_rows(1)), (64, 64), **kwargs)


def test_check_img_size_rounds_up_to_the_stride(caplog):
    assert check_img_size([64], 32) == (64, 64)
    assert check_img_size([64, 96], 32) == (64, 96)
    with caplog.at_level(logging.WARNING, logger="yolodist"):
        assert check_img_size([65], 32) == (96, 96)
    assert "must be multiple of max stride 32" in caplog.text
    with pytest.raises(BadFlag):
        check_img_size([64, 64, 64], 32)


def test_annotate_draws_on_a_copy():
    img = np.zeros((64, 64, 3), np.uint8)
    boxes = torch.tensor([[10.0, 30.0, 40.0, 60.0, 0.9, 1.0]])
    drawn = annotate(img, boxes, NAMES, line_width=2)
    assert img.max() == 0  # the original is untouched (crops are taken from it)
    assert drawn[45, 10].any() and drawn[45, 40].any()  # left and right edges drawn
    assert not drawn[45, 25].any()  # inside the box stays clear: the label went above it
    assert drawn[25, 12:40].any(axis=1).all()  # the label's filled background
    assert box_label("square", 0.876) == "square 0.88"
    assert box_label("square", 0.876, hide_conf=True) == "square"
    assert box_label("square", 0.876, hide_labels=True) is None


def test_crop_box_grows_the_box_and_clips(tmp_path):
    img = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    crop = crop_box(img, (40, 40, 60, 60))  # 20 px box -> 20 * 1.02 + 10 = 30.4 px: corners 34.8 and 65.2
    assert crop.shape[:2] == (31, 31)
    assert np.array_equal(crop, img[34:65, 34:65])
    assert crop_box(img, (0, 0, 20, 20)).shape[:2] == (25, 25)  # -5.2 clipped to 0 at the top-left corner
    first = save_crop(crop, tmp_path / "crops" / "circle" / "a.jpg")
    second = save_crop(crop, tmp_path / "crops" / "circle" / "a.jpg")
    assert (first.name, second.name) == ("a.jpg", "a2.jpg")
    assert save_crop(img[0:0], tmp_path / "empty.jpg") is None


def test_run_detect_in_process_labels_csv_and_names_from_data(tmp_path, monkeypatch):
    import cv2

    from yolodist.infer import predict
    from yolodist.infer.sources import Source

    backend = FakeBackend([[32, 16, 32, 16, 0.9, *one_hot(1)]])
    backend.names = ["0", "1", "2"]  # weights that carry no class names
    monkeypatch.setattr(predict, "load_backend", lambda *a, **k: backend)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.jpg", "a.png"):  # one stem twice: both images' labels land in a.txt, as upstream
        cv2.imwrite(str(src / name), image(100, 200))
    options = predict.DetectOptions(
        weights=tmp_path / "fake.pt",
        imgsz=(64,),
        project=tmp_path / "runs",
        save_txt=True,
        save_format=1,
        save_csv=True,
        data_names=["cat", "dog", "bird"],
    )
    save_dir = predict.run_detect(Source(src), options, torch.device("cpu"))
    assert save_dir == tmp_path / "runs" / "exp"
    # xyxy (50, 25, 150, 75) normalised by the 200x100 image
    assert (save_dir / "labels" / "a.txt").read_text() == "1 0.25 0.25 0.75 0.75\n" * 2
    assert (save_dir / "predictions.csv").read_text().splitlines() == [
        "Image Name,Prediction,Confidence",
        "a.jpg,dog,0.81",
        "a.png,dog,0.81",
    ]
    assert (save_dir / "a.jpg").is_file() and (save_dir / "a.png").is_file()
