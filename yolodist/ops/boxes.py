"""Box formats, scaling and overlap measures.

Formats: ``xywh`` is centre x, centre y, width, height; ``xyxy`` is top-left and bottom-right
corners. A trailing ``n`` means normalised to the image size (0..1). Every conversion accepts a
torch tensor or a numpy array of shape ``[..., 4]`` and returns the same kind.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _empty_like(x: ArrayLike) -> ArrayLike:
    # Integer boxes are promoted to float: a centre +- half-width would otherwise be truncated.
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return np.copy(x) if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def xywh2xyxy(x: ArrayLike) -> ArrayLike:
    """Centre/size boxes ``[..., 4]`` to corner boxes."""
    y = _empty_like(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xyxy2xywh(x: ArrayLike) -> ArrayLike:
    """Corner boxes ``[..., 4]`` to centre/size boxes."""
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: ArrayLike, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> ArrayLike:
    """Normalised centre/size boxes to pixel corners in a ``w`` x ``h`` image offset by padding."""
    y = _empty_like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: ArrayLike, w: float, h: float, clip: bool = False) -> ArrayLike:
    """Pixel corners to normalised centre/size boxes; ``clip`` first clips the corners to the image."""
    if clip:
        x = clip_boxes(_empty_like(x), (h, w))
    y = _empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def clip_boxes(boxes: ArrayLike, shape: tuple[int, int]) -> ArrayLike:
    """Clip corner boxes in place to an image of ``shape`` = (height, width); returns them."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(
    model_shape: tuple[int, int],
    boxes: ArrayLike,
    original_shape: tuple[int, int],
    ratio_pad: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> ArrayLike:
    """Map corner boxes from a letterboxed ``model_shape`` (h, w) back to ``original_shape`` (h, w).

    ``ratio_pad`` is ((ratio_h, ratio_w), (pad_w, pad_h)) as recorded by the letterbox; without it
    the letterbox is recomputed from the two shapes. Boxes are modified in place and returned.
    """
    if ratio_pad is None:
        gain = min(model_shape[0] / original_shape[0], model_shape[1] / original_shape[1])
        pad_w = (model_shape[1] - original_shape[1] * gain) / 2
        pad_h = (model_shape[0] - original_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad_w, pad_h = ratio_pad[1]
    boxes[..., [0, 2]] -= pad_w
    boxes[..., [1, 3]] -= pad_h
    boxes[..., :4] /= gain
    return clip_boxes(boxes, original_shape)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of corner boxes ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]``."""
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(2)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(1)
    return inter / (area1[:, None] + area2[None, :] - inter)


def bbox_iou(
    box1: torch.Tensor,
    box2: torch.Tensor,
    xywh: bool = True,
    kind: str = "iou",
    eps: float = 1e-7,
) -> torch.Tensor:
    """Element-wise overlap of two broadcastable box sets ``[..., 4]`` -> ``[...]``.

    ``kind`` is one of ``iou``, ``giou``, ``diou`` or ``ciou`` (Complete-IoU, arXiv:1911.08287, the
    box regression measure of YOLOv5's loss). Differentiable; used on matched prediction/target pairs.
    """
    if xywh:
        b1_x1, b1_x2 = box1[..., 0] - box1[..., 2] / 2, box1[..., 0] + box1[..., 2] / 2
        b1_y1, b1_y2 = box1[..., 1] - box1[..., 3] / 2, box1[..., 1] + box1[..., 3] / 2
        b2_x1, b2_x2 = box2[..., 0] - box2[..., 2] / 2, box2[..., 0] + box2[..., 2] / 2
        b2_y1, b2_y2 = box2[..., 1] - box2[..., 3] / 2, box2[..., 1] + box2[..., 3] / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
    w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
    w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)

    inter = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(0) * (
        torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    # Smallest enclosing box.
    cw = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)
    ch = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw**2 + ch**2 + eps  # squared diagonal of the enclosing box
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    if kind == "diou":
        return iou - rho2 / c2
    if kind != "ciou":
        raise ValueError(f"unknown IoU kind {kind!r}; expected iou, giou, diou or ciou")
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        # The aspect-ratio trade-off weight is treated as a constant, as in the CIoU paper.
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
