"""Non-maximum suppression on decoded predictions."""

import torch

from yolodist.ops.nms import non_max_suppression


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
