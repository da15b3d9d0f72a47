"""Non-maximum suppression on decoded predictions."""

import pytest
import torch
import torchvision

from yolodist.ops.boxes import xywh2xyxy
from yolodist.ops.nms import _nms_keep, non_max_suppression


def pred(boxes_xywh, obj, cls_scores):
    return torch.cat(
        [
            torch.tensor(boxes_xywh, dtype=torch.float32),
            torch.tensor(obj)[:, None],
            torch.tensor(cls_scores, dtype=torch.float32),
        ],
        1,
    )[None]


def test_same_class_overlaps_are_suppressed_other_classes_kept():
    p = pred([[50, 50, 20, 20], [51, 51, 20, 20], [50, 50, 20, 20]], [0.9, 0.8, 0.9], [[1, 0], [1, 0], [0, 1]])
    out = non_max_suppression(p, conf_thres=0.25, iou_thres=0.45)[0]
    assert out.shape == (2, 6)
    assert sorted(out[:, 5].tolist()) == [0, 1]
    agnostic = non_max_suppression(p, conf_thres=0.25, iou_thres=0.45, agnostic=True)[0]
    assert agnostic.shape[0] == 1


def test_confidence_is_obj_times_cls_and_boxes_are_corners():
    p = pred([[50, 40, 20, 10]], [0.5], [[0.6, 0.1]])
    out = non_max_suppression(p, conf_thres=0.25)[0]
    torch.testing.assert_close(out[0], torch.tensor([40, 35, 60, 45, 0.3, 0]))
    assert non_max_suppression(p, conf_thres=0.31)[0].shape[0] == 0


def test_class_filter_multi_label_and_max_det():
    p = pred([[10 + 30 * i, 10, 10, 10] for i in range(5)], [0.9] * 5, [[0.9, 0.8]] * 5)
    assert non_max_suppression(p, 0.25, multi_label=True)[0].shape[0] == 10
    assert non_max_suppression(p, 0.25, multi_label=True, classes=[1])[0][:, 5].eq(1).all()
    assert non_max_suppression(p, 0.25, max_det=3)[0].shape[0] == 3


def test_empty_batch_entries():
    p = torch.zeros(2, 5, 7)
    out = non_max_suppression(p)
    assert len(out) == 2 and all(o.shape == (0, 6) for o in out)


def greedy_nms_reference(det, iou_thres):
    """Per-class NMS written as the textbook loop: best box first, drop its overlaps, repeat."""
    from yolodist.ops.boxes import box_iou

    kept = []
    for c in det[:, 5].unique():
        rest = det[det[:, 5] == c]
        rest = rest[rest[:, 4].argsort(descending=True)]
        while rest.shape[0]:
            kept.append(rest[0])
            rest = rest[1:][box_iou(rest[:1, :4], rest[1:, :4])[0] <= iou_thres]
    return torch.stack(kept) if kept else det[:0]


def test_matches_textbook_per_class_nms_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 300, 2, generator=gen) * 200
    wh = torch.rand(2, 300, 2, generator=gen) * 60 + 5
    scores = torch.rand(2, 300, 4, generator=gen)
    p = torch.cat([xy, wh, torch.rand(2, 300, 1, generator=gen), scores], 2)
    out = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5, max_det=1000)
    for image, got in enumerate(out):
        x = p[image][p[image, :, 4] > 0.1]
        conf, j = (x[:, 5:] * x[:, 4:5]).max(1)
        det = torch.cat([xywh2xyxy(x[:, :4]), conf[:, None], j[:, None].float()], 1)[conf > 0.1]
        expected = greedy_nms_reference(det, 0.5)
        assert got.shape == expected.shape
        torch.testing.assert_close(got[got[:, 4].argsort()], expected[expected[:, 4].argsort()])
        assert torch.all(got[1:, 4] <= got[:-1, 4])  # sorted by confidence


def test_classes_stay_apart_even_for_boxes_larger_than_max_wh():
    # Two 200-px boxes of different classes in the same place: a fixed 10-px class offset would leave
    # them overlapping (IoU 0.82) and suppress one; the offset grows to the boxes' extent instead.
    p = pred([[500, 500, 200, 200], [500, 500, 200, 200]], [0.9, 0.9], [[1, 0], [0, 1]])
    assert non_max_suppression(p, max_wh=10)[0].shape[0] == 2
    assert non_max_suppression(p, max_wh=10, agnostic=True)[0].shape[0] == 1


def test_half_precision_and_model_output_tuple():
    p = pred([[50, 50, 20, 20], [52, 50, 20, 20]], [0.9, 0.8], [[0.0] * 79 + [1.0]] * 2).half()
    out = non_max_suppression((p, ["raw maps"]))[0]  # eval mode returns (decoded, raw)
    assert out.shape == (1, 6) and out.dtype == torch.float16 and out[0, 5] == 79


def test_bad_thresholds_are_value_errors_that_name_no_flag():
    # A pure op knows no command line: the callers that do (detect, val) word the flag's message.
    p = torch.zeros(1, 3, 7)
    with pytest.raises(ValueError, match=r"^conf_thres must be between 0 and 1, got 1.5$"):
        non_max_suppression(p, conf_thres=1.5)
    with pytest.raises(ValueError, match=r"^iou_thres must be between 0 and 1, got -0.1$"):
        non_max_suppression(p, iou_thres=-0.1)


def class_offset_keep(det, iou_thres):
    """Per-class NMS by shifting each class's boxes past every other's, then one plain NMS."""
    boxes = det[:, :4].float()
    span = torch.clamp((boxes.amax() - boxes.amin()) + 1, min=7680)
    return torchvision.ops.nms(boxes + det[:, 5:6].float() * span, det[:, 4].float(), iou_thres)


@pytest.mark.parametrize("n", [300, 1500])  # torchvision runs NMS per class above 1000 boxes on the CPU
def test_same_boxes_kept_as_by_class_offsets_on_overlapping_boxes_of_different_classes(n):
    gen = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=gen) * 120 - 20  # some boxes reach past the top and left edges
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 50 + 5], 1)
    det = torch.cat([boxes, torch.rand(n, 1, generator=gen), torch.randint(0, 5, (n, 1), generator=gen)], 1)
    expected = class_offset_keep(det, 0.45)
    assert len(expected) < n  # boxes of one class overlap ...
    assert len(torchvision.ops.nms(det[:, :4], det[:, 4], 0.45)) < len(expected)  # ... and of other classes
    assert torch.equal(_nms_keep(det, 0.45, agnostic=False), expected)


def test_classes_stay_apart_when_boxes_reach_past_the_top_left_edge():
    # Offsetting classes by the largest coordinate alone would move the class-1 box onto the class-0 one.
    p = pred([[95, 95, 10, 10], [-6, -6, 10, 10]], [0.9, 0.8], [[1, 0], [0, 1]])
    assert non_max_suppression(p)[0][:, 5].tolist() == [0, 1]
