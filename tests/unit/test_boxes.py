"""Box conversions and overlap measures, hand-checked."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yolodist.ops.boxes import bbox_iou, box_iou, clip_boxes, scale_boxes, xywh2xyxy, xywhn2xyxy, xyxy2xywh, xyxy2xywhn


@pytest.mark.parametrize("kind", [torch.tensor, np.array])
def test_round_trips(kind):
    x = kind([[10.0, 20.0, 4.0, 6.0], [0.5, 0.5, 1.0, 1.0]])
    assert np.allclose(np.asarray(xyxy2xywh(xywh2xyxy(x))), np.asarray(x))
    n = kind([[0.5, 0.25, 0.2, 0.1]])
    px = xywhn2xyxy(n, 100, 200, padw=3, padh=4)
    assert np.allclose(np.asarray(px), [[43, 44, 63, 64]])
    back = xyxy2xywhn(px - kind([[3.0, 4.0, 3.0, 4.0]]), 100, 200)
    assert np.allclose(np.asarray(back), np.asarray(n))


def test_clip_and_scale_boxes():
    b = torch.tensor([[-5.0, 2.0, 120.0, 90.0]])
    assert clip_boxes(b, (80, 100)).tolist() == [[0, 2, 100, 80]]
    # A 200x100 (w x h) image letterboxed into 64x64: gain 0.32, 16 px of padding top and bottom.
    boxes = torch.tensor([[32.0 * 0.32 + 0, 10 * 0.32 + 16, 100 * 0.32, 50 * 0.32 + 16]])
    out = scale_boxes((64, 64), boxes.clone(), (100, 200))
    torch.testing.assert_close(out, torch.tensor([[32.0, 10.0, 100.0, 50.0]]))


def test_iou_kinds_by_hand():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 0.0, 3.0, 2.0])  # half overlapping
    assert bbox_iou(a, a, xywh=False).item() == pytest.approx(1.0, abs=1e-6)
    assert bbox_iou(a, b, xywh=False).item() == pytest.approx(2 / 6, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, kind="giou").item() == pytest.approx(2 / 6, abs=1e-6)  # enclosure = union
    # DIoU: centres 1 apart, enclosing diagonal^2 = 3^2 + 2^2.
    assert bbox_iou(a, b, xywh=False, kind="diou").item() == pytest.approx(2 / 6 - 1 / 13, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, kind="ciou").item() == pytest.approx(2 / 6 - 1 / 13, abs=1e-6)  # same shape
    far = torch.tensor([10.0, 10.0, 11.0, 11.0])
    assert bbox_iou(a, far, xywh=False).item() == 0
    assert bbox_iou(a, far, xywh=False, kind="giou").item() < 0
    assert box_iou(a[None], torch.stack([a, b]))[0].tolist() == pytest.approx([1, 1 / 3])


def test_ciou_aspect_term_and_gradients():
    a = torch.tensor([0.0, 0.0, 2.0, 1.0], requires_grad=True)  # xywh
    b = torch.tensor([0.0, 0.0, 1.0, 2.0])
    ciou = bbox_iou(a, b, kind="ciou")
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2)) ** 2
    iou = 1 / 3
    assert ciou.item() == pytest.approx(iou - v * v / (v - iou + 1), abs=1e-5)
    ciou.backward()
    assert torch.isfinite(a.grad).all()
    with pytest.raises(ValueError):
        bbox_iou(a, b, kind="nope")


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_identical_boxes_score_one_and_nested_boxes_by_hand(kind):
    a = torch.tensor([[10.0, 10.0, 30.0, 50.0]])
    assert bbox_iou(a, a, xywh=False, kind=kind).item() == pytest.approx(1.0, abs=1e-6)
    inner = torch.tensor([[15.0, 20.0, 25.0, 40.0]])  # 10x20 inside 20x40, same centre and aspect
    # IoU = area ratio; the enclosure is the outer box (GIoU = IoU); centres coincide (DIoU = IoU);
    # equal aspect ratios (CIoU = IoU).
    assert bbox_iou(a, inner, xywh=False, kind=kind).item() == pytest.approx(200 / 800, abs=1e-6)


def test_disjoint_boxes_penalties_by_hand():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([2.0, 0.0, 3.0, 1.0])  # 1 px gap; enclosure 3x1, union 2
    assert bbox_iou(a, b, xywh=False, kind="giou").item() == pytest.approx(-(3 - 2) / 3, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, kind="diou").item() == pytest.approx(-(2**2) / (3**2 + 1), abs=1e-6)


def test_iou_gradients_finite_for_degenerate_boxes():
    for box in ([5.0, 5.0, 0.0, 0.0], [5.0, 5.0, 4.0, 4.0], [5.0, 5.0, 1e-6, 3.0]):
        p = torch.tensor(box, requires_grad=True)
        for kind in ("iou", "giou", "diou", "ciou"):
            bbox_iou(p, torch.tensor([5.0, 5.0, 4.0, 4.0]), kind=kind).backward()
            assert torch.isfinite(p.grad).all(), (box, kind)
            p.grad = None


def test_numpy_clip_and_scale_match_torch():
    boxes = np.array([[-5.0, 2.0, 120.0, 90.0], [10.0, 20.0, 30.0, 40.0]])
    torch.testing.assert_close(
        torch.from_numpy(clip_boxes(boxes.copy(), (80, 100))), clip_boxes(torch.from_numpy(boxes), (80, 100))
    )
    pad = ((0.5, 0.5), (3.0, 7.0))
    out = scale_boxes((64, 64), np.array([[13.0, 17.0, 23.0, 27.0]]), (200, 200), ratio_pad=pad)
    np.testing.assert_allclose(out, [[20.0, 20.0, 40.0, 40.0]])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=4, max_size=4),
    st.integers(1, 2000),
    st.integers(1, 2000),
)
def test_normalised_round_trip_property(box, w, h):
    x = np.array([box[0], box[1], abs(box[2]), abs(box[3])])[None]
    px = xywhn2xyxy(x, w, h)
    np.testing.assert_allclose(xyxy2xywhn(px, w, h), x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xywh2xyxy(xyxy2xywh(px)), px, rtol=1e-9, atol=1e-9)


def test_integer_input_is_not_truncated():
    np.testing.assert_allclose(xywh2xyxy(np.array([[10, 20, 5, 5]])), [[7.5, 17.5, 12.5, 22.5]])
    out = xywh2xyxy(torch.tensor([[10, 20, 5, 5]]))
    assert out.is_floating_point()
    torch.testing.assert_close(out, torch.tensor([[7.5, 17.5, 12.5, 22.5]]))


def test_per_row_frames_are_each_rows_own_conversion():
    """A mosaic converts all its tiles' boxes in one call, each row with its own tile's size and offset:
    the same float32 values as one call per tile."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 1, (40, 4)).astype(np.float32)
    frames = rng.integers(1, 700, (40, 4)).astype(np.float32)
    frames[:, 2:] -= 350  # paddings are negative for the left and top tiles
    w, h, padw, padh = frames.T
    together = xywhn2xyxy(boxes, w, h, padw, padh)
    rows = zip(boxes, frames.astype(int).tolist(), strict=True)
    one_by_one = np.stack([xywhn2xyxy(b, *frame) for b, frame in rows])
    assert together.dtype == np.float32 and np.array_equal(together, one_by_one)
