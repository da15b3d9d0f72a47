"""detect.py's pipeline: one image in, detections in the image's own pixels out, results saved.

``Predictor`` is the model side (letterbox, backend, NMS, scale back); ``run_detect`` ties a
``Source``, a ``Predictor`` and the saved outputs (images, videos, labels, CSV, crops) together.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from yolodist.augment.geometry import letterbox
from yolodist.errors import BadData, BadFlag
from yolodist.infer.annotate import annotate, crop_box, save_crop
from yolodist.infer.backend import Backend, load_backend
from yolodist.infer.sources import Source, SourceItem
from yolodist.ops.boxes import scale_boxes, xyxy2xywh
from yolodist.ops.nms import non_max_suppression
from yolodist.utils.io import atomic_write_bytes, atomic_write_text
from yolodist.utils.log import colorstr
from yolodist.utils.paths import increment_path

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


@dataclass(frozen=True)
class DetectOptions:
    """Everything ``detect.py`` was asked to do (flag names as upstream's)."""

    weights: Path
    imgsz: tuple[int, ...] = (640,)
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 1000
    classes: tuple[int, ...] | None = None
    agnostic_nms: bool = False
    project: Path = Path("runs/detect")
    name: str = "exp"
    exist_ok: bool = False
    view_img: bool = False
    save_txt: bool = False
    save_format: int = 0  # labels as normalised xywh (0, YOLO) or normalised xyxy (1, Pascal VOC order)
    save_csv: bool = False
    save_conf: bool = False
    save_crop: bool = False
    nosave: bool = False
    line_thickness: int | None = 3
    hide_labels: bool = False
    hide_conf: bool = False
    half: bool = False
    data_names: list[str] | None = field(default=None)


class _Viewer:
    """``--view-img``: show each result in a window when a display exists, else warn once and carry on."""

    def __init__(self) -> None:
        self.enabled = True

    def show(self, title: str, image: np.ndarray) -> None:
        if not self.enabled:
            return
        reason = None
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            reason = "no display is available"
        else:
            try:
                cv2.imshow(title, image)
                cv2.waitKey(1)
                return
            except cv2.error:
                reason = "this OpenCV build has no window support"
        self.enabled = False
        LOGGER.warning(f"WARNING ⚠️ --view-img: {reason}; results are saved but not shown")


class _Outputs:
    """Writes what detect.py saves: annotated images and videos, labels, predictions.csv and crops."""

    def __init__(self, options: DetectOptions, names: Sequence[str], save_dir: Path) -> None:
        self.options, self.names, self.save_dir = options, list(names), save_dir
        self.save_img = not options.nosave
        self.viewer = _Viewer() if options.view_img else None
        self.labels_written: set[Path] = set()
        self._video_path: Path | None = None
        self._video_tmp: Path | None = None
        self._video: cv2.VideoWriter | None = None
        self._csv: io.TextIOWrapper | None = None
        if options.save_txt:
            (self.save_dir / "labels").mkdir(parents=True, exist_ok=True)

    def write(self, item: SourceItem, boxes: torch.Tensor) -> None:
        rows = boxes.tolist()[::-1]  # least confident first, as upstream writes them
        if self.options.save_txt and rows:
            self._write_labels(item, rows)
        if self.options.save_csv:
            self._write_csv(item, rows)
        if self.options.save_crop:
            for *xyxy, _, cls in rows:
                name = self.names[int(cls)]
                save_crop(crop_box(item.image, xyxy), self.save_dir / "crops" / name / f"{item.path.stem}.jpg")
        if self.save_img or self.viewer:
            o = self.options
            drawn = annotate(item.image, boxes, self.names, o.line_thickness, o.hide_labels, o.hide_conf)
            if self.viewer:
                self.viewer.show(str(item.path), drawn)
            if self.save_img:
                self._save_image(item, drawn) if item.video is None else self._save_frame(item, drawn)

    def _write_labels(self, item: SourceItem, rows: list[list[float]]) -> None:
        stem = item.path.stem if item.frame is None else f"{item.path.stem}_{item.frame}"
        path = self.save_dir / "labels" / f"{stem}.txt"
        h, w = item.image.shape[:2]
        gain = torch.tensor([w, h, w, h], dtype=torch.float32)
        xyxy = torch.tensor([r[:4] for r in rows], dtype=torch.float32)
        coords = (xyxy2xywh(xyxy) if self.options.save_format == 0 else xyxy) / gain
        lines = []
        for row, box in zip(rows, coords.tolist(), strict=True):
            values = [row[5], *box, row[4]] if self.options.save_conf else [row[5], *box]
            lines.append(" ".join(f"{v:g}" for v in values))
        # Two sources with one stem (a.jpg, a.png) share a label file, as upstream: append to ours.
        before = path.read_text() if path in self.labels_written else ""
        atomic_write_text(path, before + "\n".join(lines) + "\n")
        self.labels_written.add(path)

    def _write_csv(self, item: SourceItem, rows: list[list[float]]) -> None:
        if self._csv is None:
            self._csv = open(self.save_dir / "predictions.csv", "w", newline="", encoding="utf-8")
            csv.writer(self._csv).writerow(["Image Name", "Prediction", "Confidence"])
        writer = csv.writer(self._csv)
        for *_, conf, cls in rows:
            writer.writerow([item.path.name, self.names[int(cls)], f"{conf:.2f}"])
        self._csv.flush()  # rows of finished images survive an interrupted run

    def _save_image(self, item: SourceItem, drawn: np.ndarray) -> None:
        path = self.save_dir / item.path.name
        ok, encoded = cv2.imencode(path.suffix, drawn)
        if not ok:  # formats OpenCV reads but cannot write (e.g. .mpo): keep the name, save a JPEG
            path = path.with_suffix(".jpg")
            ok, encoded = cv2.imencode(".jpg", drawn)
        if not ok:
            raise BadData(f"cannot encode the annotated image {path}; use --nosave to skip saving images")
        atomic_write_bytes(path, encoded.tobytes())

    def _save_frame(self, item: SourceItem, drawn: np.ndarray) -> None:
        path = self.save_dir / f"{item.path.stem}.mp4"
        if path != self._video_path:
            self._finish_video()
            self._video_path = path
            # Written under a hidden name and renamed when complete, so a half-written video never
            # has the final name; the suffix stays .mp4 because it picks the container.
            self._video_tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
            h, w = drawn.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._video = cv2.VideoWriter(str(self._video_tmp), fourcc, item.video.fps, (w, h))
            if not self._video.isOpened():
                LOGGER.warning(f"WARNING ⚠️ cannot write video {path} (no mp4v encoder); frames are not saved")
                self._video = None
        if self._video is not None:
            self._video.write(drawn)

    def _finish_video(self) -> None:
        if self._video is not None:
            self._video.release()
            os.replace(self._video_tmp, self._video_path)
        self._video = None

    def close(self) -> None:
        self._finish_video()
        if self._csv is not None:
            self._csv.close()
            self._csv = None


def _summary(boxes: torch.Tensor, names: Sequence[str]) -> str:
    """Upstream's per-image count text: ``"2 circles, 1 square, "`` or ``"(no detections), "``."""
    if not len(boxes):
        return "(no detections), "
    classes, counts = boxes[:, 5].int().unique(return_counts=True)
    return "".join(f"{n} {names[c]}{'s' * (n > 1)}, " for c, n in zip(classes.tolist(), counts.tolist(), strict=True))


def _frames(source: Source) -> Iterator[tuple[SourceItem, str]]:
    """Each item with its upstream log prefix: ``image 1/3 /p/a.jpg: `` or ``video 3/3 (2/10) /p/v.mp4: ``."""
    for item in source:
        if item.video is None:
            yield item, f"image {item.number}/{len(source)} {item.path}: "
        else:
            yield item, f"video {item.number}/{len(source)} ({item.frame}/{item.video.frames}) {item.path}: "


def run_detect(source: Source, options: DetectOptions, device: torch.device) -> Path:
    """Detect on every image and frame of ``source``; returns the run directory it saved to.

    The weights are loaded before the run directory (project/name, numbered exp, exp2, ... unless
    ``exist_ok``) is created, so a bad weights file leaves no empty run behind.
    """
    backend = load_backend(options.weights, device, options.half)
    names = list(backend.names)
    if options.data_names and all(n == str(i) for i, n in enumerate(names)):
        names = list(options.data_names)  # weights without class names: take them from --data
    if len(names) < len(backend.names):
        raise BadFlag(f"--data names {len(names)} classes but the weights predict {len(backend.names)}")
    imgsz = check_img_size(options.imgsz, backend.stride)
    if backend.fixed_shape and tuple(backend.fixed_shape) != imgsz:
        h, w = backend.fixed_shape
        LOGGER.warning(f"WARNING ⚠️ {options.weights} takes {h}x{w} inputs only; using that instead of --imgsz")
    predictor = Predictor(
        backend,
        imgsz,
        options.conf_thres,
        options.iou_thres,
        options.classes,
        options.agnostic_nms,
        options.max_det,
    )
    save_dir = increment_path(Path(options.project) / options.name, exist_ok=options.exist_ok, mkdir=True)
    outputs = _Outputs(options, names, save_dir)
    totals, seen = np.zeros(3), 0
    predictor.warmup()
    try:
        for item, prefix in _frames(source):
            pred = predictor(item.image)
            totals += pred.times
            seen += 1
            outputs.write(item, pred.boxes)
            h, w = pred.input_shape
            LOGGER.info(f"{prefix}{h}x{w} {_summary(pred.boxes, names)}{pred.times[1] * 1e3:.1f}ms")
    finally:
        outputs.close()
    if source.skipped:
        LOGGER.warning(f"WARNING ⚠️ {source.skipped} of {len(source)} source files could not be read and were skipped")
    if seen == 0:
        raise BadData(f"none of the {len(source)} source files could be read; check that they are valid images/videos")
    t = totals / seen * 1e3
    shape = (predictor.batch_size, 3, *predictor.imgsz)
    LOGGER.info(f"Speed: {t[0]:.1f}ms pre-process, {t[1]:.1f}ms inference, {t[2]:.1f}ms NMS per image at shape {shape}")
    if options.save_txt or outputs.save_img:
        labels = save_dir / "labels"
        saved = f"\n{len(list(labels.glob('*.txt')))} labels saved to {labels}" if options.save_txt else ""
        LOGGER.info(f"Results saved to {colorstr(str(save_dir), 'bold')}{saved}")
    return save_dir
