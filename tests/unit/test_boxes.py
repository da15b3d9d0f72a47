"""Box conversions and overlap measures, hand-checked."""

import math

import numpy as np
import pytest
import torch

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
