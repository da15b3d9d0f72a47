"""The model side of detect.py: one image in, detections in the image's own pixels out.

``Predictor`` letterboxes the image, runs the backend, applies NMS and scales the boxes back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from yolodist.augment.geometry import letterbox
from yolodist.errors import BadFlag
from yolodist.infer.backend import Backend
from yolodist.ops.boxes import scale_boxes
from yolodist.ops.nms import non_max_suppression

LOGGER = logging.getLogger(__name__)


def check_img_size(imgsz: int | Sequence[int], stride: int) -> tuple[int, int]:
    """``--imgsz`` (one size, or h w) as (h, w), each rounded up to a multiple of ``stride`` with a warning."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if len(sizes) not in (1, 2) or any(s < 1 for s in sizes):
        raise BadFlag(f"--imgsz takes one size or two (height width), all positive; got {sizes}")
    if len(sizes) == 1:
        sizes *= 2
    fixed = [math.ceil(s / stride) * stride for s in sizes]
    if fixed != sizes:
        LOGGER.warning(f"WARNING ⚠️ --img-size {sizes} must be multiple of max stride {stride}, updating to {fixed}")
    return fixed[0], fixed[1]


@dataclass(frozen=True)
class Prediction:
    """Detections of one image.

    ``boxes`` ``[n, 6]`` on the CPU, most confident first: x1, y1, x2, y2 in the original image's
    pixels, conf, cls. ``input_shape`` is the (h, w) the model saw; ``times`` are seconds spent in
    pre-process, inference and NMS.
    """

    boxes: torch.Tensor
    input_shape: tuple[int, int]
    times: tuple[float, float, float]


class Predictor:
    """Run ``backend`` on single images with upstream detect.py's pre- and post-processing.

    A backend with a ``fixed_shape`` gets exactly that input size; a dynamic one gets ``imgsz`` with
    only the padding needed to reach a multiple of its stride (upstream's ``auto`` letterbox), which
    saves work on non-square images.
    """

    def __init__(
        self,
        backend: Backend,
        imgsz: tuple[int, int] = (640, 640),
        conf_thres: float = 0.25,
        iou_thres: float = 0.45,
        classes: Sequence[int] | None = None,
        agnostic: bool = False,
        max_det: int = 1000,
    ) -> None:
        if not 0 <= conf_thres <= 1:
            raise BadFlag(f"--conf-thres must be between 0 and 1, got {conf_thres}")
        if not 0 <= iou_thres <= 1:
            raise BadFlag(f"--iou-thres must be between 0 and 1, got {iou_thres}")
        if max_det < 1:
            raise BadFlag(f"--max-det must be 1 or more, got {max_det}")
        nc = len(backend.names)
        if classes is not None and any(not 0 <= c < nc for c in classes):
            raise BadFlag(f"--classes {' '.join(map(str, classes))}: the model has {nc} classes, ids 0 to {nc - 1}")
        self.backend = backend
        self.auto = backend.fixed_shape is None
        self.imgsz = tuple(backend.fixed_shape) if backend.fixed_shape else tuple(imgsz)
        self.conf_thres, self.iou_thres, self.max_det = conf_thres, iou_thres, max_det
        self.classes = list(classes) if classes is not None else None
        self.agnostic = agnostic

    @property
    def batch_size(self) -> int:
        return self.backend.fixed_batch or 1

    def _sync(self) -> None:
        # CUDA runs asynchronously; without a sync the times would be launch times, not run times.
        if self.backend.device.type == "cuda":
            torch.cuda.synchronize(self.backend.device)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[tuple[float, float], tuple[float, float]]]:
        """BGR ``image`` -> (input ``[batch, 3, h, w]`` 0-1 RGB on the backend's device, letterbox (ratio, pad))."""
        boxed, ratio, (dw, dh) = letterbox(image, self.imgsz, auto=self.auto, stride=self.backend.stride)
        chw = np.ascontiguousarray(boxed.transpose(2, 0, 1)[::-1])  # HWC BGR -> CHW RGB
        x = torch.from_numpy(chw).to(self.backend.device)  # uint8 travels 4x lighter than float
        x = (x.half() if self.backend.fp16 else x.float()) / 255
        x = x[None]
        if self.batch_size > 1:  # a model exported for a fixed batch: fill the other slots with zeros
            x = torch.cat([x, x.new_zeros(self.batch_size - 1, *x.shape[1:])])
        # The pixels sit where letterbox put them: the top-left pad is rounded as below, not dw/dh.
        return x, (ratio, (round(dw - 0.1), round(dh - 0.1)))

    def warmup(self) -> None:
        """One throw-away run on an accelerator, so the first image's time is not the setup time."""
        if self.backend.device.type != "cpu":
            self.backend(torch.zeros(self.batch_size, 3, *self.imgsz, device=self.backend.device))
            self._sync()

    def __call__(self, image: np.ndarray) -> Prediction:
        t0 = time.perf_counter()
        x, ratio_pad = self.preprocess(image)
        self._sync()
        t1 = time.perf_counter()
        with torch.inference_mode():
            pred = self.backend(x)[:1]
        self._sync()
        t2 = time.perf_counter()
        det = non_max_suppression(
            pred, self.conf_thres, self.iou_thres, self.classes, self.agnostic, max_det=self.max_det
        )[0]
        det = det.float().cpu()
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], image.shape[:2], ratio_pad).round()
        t3 = time.perf_counter()
        return Prediction(det, (int(x.shape[2]), int(x.shape[3])), (t1 - t0, t2 - t1, t3 - t2))
