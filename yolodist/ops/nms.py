"""Non-maximum suppression over decoded YOLO predictions, on torchvision's batched NMS."""

from __future__ import annotations

import torch
import torchvision

from yolodist.ops.boxes import xywh2xyxy


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """``prediction`` ``[bs, N, 5 + nc]`` (xywh pixels, obj, cls scores) -> per image ``[n, 6]`` (xyxy, conf, cls).

    A box's confidence for a class is obj * cls. With ``multi_label`` every class above ``conf_thres``
    yields a box (used for mAP); otherwise only the best class. At most ``max_nms`` boxes by confidence
    enter NMS and ``max_det`` leave it.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"thresholds must be in [0, 1], got conf {conf_thres}, iou {iou_thres}")
    output = []
    class_filter = torch.tensor(classes, device=prediction.device) if classes is not None else None
    for x in prediction:
        x = x[x[:, 4] > conf_thres]
        if not x.shape[0]:
            output.append(torch.zeros((0, 6), device=prediction.device))
            continue
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            det = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if class_filter is not None:
            det = det[(det[:, 5:6] == class_filter).any(1)]
        if det.shape[0] > max_nms:
            det = det[det[:, 4].topk(max_nms).indices]
        group = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
        keep = torchvision.ops.batched_nms(det[:, :4], det[:, 4], group, iou_thres)[:max_det]
        output.append(det[keep])
    return output
