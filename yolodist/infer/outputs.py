"""What detect.py saves and shows: annotated images and videos, label files, predictions.csv, crops."""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from yolodist.errors import BadData
from yolodist.infer.annotate import annotate, crop_box, save_crop
from yolodist.infer.sources import SourceItem
from yolodist.ops.boxes import xyxy2xywh
from yolodist.utils.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # predict.py imports this module: a run-time import back would be circular
    from yolodist.infer.predict import DetectOptions

LOGGER = logging.getLogger(__name__)


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


class DetectOutputs:
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
