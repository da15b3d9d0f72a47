"""detect.py's pipeline: every image and frame of a source through a ``Predictor``, results saved.

``run_detect`` ties a ``Source``, a ``Predictor`` (predictor.py, the model side) and the saved
outputs (outputs.py: images, videos, labels, CSV, crops) together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from yolodist.errors import BadData, BadFlag
from yolodist.infer.backend import Backend, load_backend
from yolodist.infer.outputs import DetectOutputs
from yolodist.infer.predictor import Predictor, check_img_size
from yolodist.infer.sources import Source, SourceItem
from yolodist.utils.log import colorstr
from yolodist.utils.paths import increment_path

LOGGER = logging.getLogger(__name__)


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


def _class_names(backend: Backend, data_names: list[str] | None) -> list[str]:
    """The weights' class names, or ``--data``'s when the weights carry none (only "0", "1", ...)."""
    names = list(backend.names)
    if data_names and all(n == str(i) for i, n in enumerate(names)):
        names = list(data_names)
    if len(names) < len(backend.names):
        raise BadFlag(f"--data names {len(names)} classes but the weights predict {len(backend.names)}")
    return names


def _predictor(backend: Backend, options: DetectOptions) -> Predictor:
    """A ``Predictor`` with the flags' settings, at the input size the backend takes."""
    imgsz = check_img_size(options.imgsz, backend.stride)
    if backend.fixed_shape and tuple(backend.fixed_shape) != imgsz:
        h, w = backend.fixed_shape
        LOGGER.warning(f"WARNING ⚠️ {options.weights} takes {h}x{w} inputs only; using that instead of --imgsz")
    return Predictor(
        backend,
        imgsz,
        options.conf_thres,
        options.iou_thres,
        options.classes,
        options.agnostic_nms,
        options.max_det,
    )


def run_detect(source: Source, options: DetectOptions, device: torch.device) -> Path:
    """Detect on every image and frame of ``source``; returns the run directory it saved to.

    The weights are loaded before the run directory (project/name, numbered exp, exp2, ... unless
    ``exist_ok``) is created, so a bad weights file leaves no empty run behind.
    """
    backend = load_backend(options.weights, device, options.half)
    names = _class_names(backend, options.data_names)
    predictor = _predictor(backend, options)
    save_dir = increment_path(Path(options.project) / options.name, exist_ok=options.exist_ok, mkdir=True)
    outputs = DetectOutputs(options, names, save_dir)
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
