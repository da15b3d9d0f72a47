"""Non-maximum suppression over decoded YOLO predictions, on torchvision's NMS kernel (``ops.kernels``)."""

from __future__ import annotations

import torch

from yolodist.ops.boxes import xywh2xyxy
from yolodist.ops.kernels import nms


def non_max_suppression(  # noqa: PLR0913 - upstream's signature
    prediction: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor],
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    max_wh: int = 7680,
) -> list[torch.Tensor]:
    """``prediction`` ``[bs, N, 5 + nc]`` (xywh pixels, obj, cls scores) -> per image ``[n, 6]`` (xyxy, conf, cls).

    A box's confidence for a class is obj * cls. With ``multi_label`` every class above ``conf_thres``
    yields a box (used for mAP); otherwise only the best class. ``classes`` keeps only those class ids.
    At most ``max_nms`` boxes (highest confidence) enter NMS and ``max_det`` leave it, by confidence.
    Classes are kept apart by offsetting each class's boxes past the others (torchvision's
    ``batched_nms`` does the same); ``max_wh`` (upstream's fixed class offset) is accepted for
    upstream's signature and not needed. The eval-mode model output
    ``(decoded, raw)`` may be passed as is. A threshold outside 0-1 is a ``ValueError``.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be between 0 and 1, got {conf_thres}")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres must be between 0 and 1, got {iou_thres}")
    if isinstance(prediction, list | tuple):
        prediction = prediction[0]  # eval mode returns (decoded, raw maps)
    class_filter = torch.tensor(classes, device=prediction.device) if classes is not None else None
    output = []
    for x in prediction:
        det = _candidates(x, conf_thres, multi_label)
        if class_filter is not None:
            det = det[(det[:, 5:6] == class_filter).any(1)]
        if det.shape[0] > max_nms:
            det = det[det[:, 4].topk(max_nms).indices]
        if det.shape[0]:
            det = det[_nms_keep(det, iou_thres, agnostic)[:max_det]]
        output.append(det)
    return output


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """``x`` ``[N, 5 + nc]`` of one image -> boxes above ``conf_thres`` ``[n, 6]`` (xyxy, conf, cls)."""
    x = x[x[:, 4] > conf_thres]  # objectness bounds every class confidence from above
    scores = x[:, 5:] * x[:, 4:5]
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
    conf, j = scores.max(1, keepdim=True)
    return torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]


def _nms_keep(det: torch.Tensor, iou_thres: float, agnostic: bool) -> torch.Tensor:
    """Indices of ``det`` ``[n, 6]`` kept by per-class (or agnostic) NMS, highest confidence first."""
    boxes, scores = det[:, :4].float(), det[:, 4].float()  # float16 overflows the class offsets
    if agnostic:
        return nms(boxes, scores, iou_thres)
    # Each class is moved past every box of the classes before it, so boxes of different classes
    # never overlap; boxes reaching past the top or left edge are shifted first (IoU is unchanged).
    boxes = boxes - boxes.amin().clamp(max=0)
    offsets = det[:, 5:6].float() * (boxes.amax() + 1)
    return nms(boxes + offsets, scores, iou_thres)
