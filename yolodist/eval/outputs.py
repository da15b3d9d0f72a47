"""Files validation writes on request: YOLO-format prediction labels and COCO JSON (scored)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from yolodist.errors import BadFlag
from yolodist.eval import coco
from yolodist.ops.boxes import xyxy2xywh
from yolodist.utils.io import atomic_write_text

LOGGER = logging.getLogger(__name__)
COCO_ANNOTATIONS = Path("annotations") / "instances_val2017.json"  # where upstream looks, under the data root


def write_txt(records: dict, labels_dir: Path, save_conf: bool) -> int:
    """One ``<stem>.txt`` per image: ``cls cx cy w h [conf]`` normalised to the original image."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    for path, rec in records.items():
        h, w = rec.shape
        pred = rec.pred.numpy()
        boxes = xyxy2xywh(pred[:, :4].astype(np.float64)) / np.array([w, h, w, h])
        lines = []
        for box, conf, cls in zip(boxes, pred[:, 4], pred[:, 5], strict=True):
            row = (int(cls), *box, conf) if save_conf else (int(cls), *box)
            lines.append(("%g " * len(row)).rstrip() % row)
        atomic_write_text(labels_dir / f"{Path(path).stem}.txt", "".join(f"{line}\n" for line in lines))
    return len(records)


def write_and_score_json(
    records: dict, names: list[str], save_dir: Path, weights_stem: str, data_root: Path
) -> tuple[float, float] | None:
    """``<weights stem>_predictions.json``, scored by the reference COCO evaluator.

    The ground truth is the dataset's COCO annotations when it has them, else made from its labels
    (``annotations.json`` in ``save_dir``). Returns (mAP@0.5:0.95, mAP@0.5), or None without an evaluator.
    """
    annotations = data_root / COCO_ANNOTATIONS
    if annotations.is_file():
        gt_path = annotations
        ids = {p: coco.image_id_for(p) for p in records}
        category_ids = coco.category_ids_from(json.loads(annotations.read_text()), len(names))
    else:
        ids = {p: i for i, p in enumerate(sorted(records))}
        category_ids = list(range(len(names)))
        gt_path = save_dir / "annotations.json"
        atomic_write_text(gt_path, json.dumps(coco.ground_truth_json(records, names, category_ids, ids)))
    pred_path = save_dir / f"{weights_stem}_predictions.json"
    atomic_write_text(pred_path, json.dumps(coco.predictions_json(records, category_ids, ids)))
    LOGGER.info(f"\nEvaluating COCO mAP with {pred_path} against {gt_path}...")
    try:
        return coco.coco_evaluate(gt_path, pred_path)
    except BadFlag as e:
        LOGGER.warning(f"COCO scoring skipped: {e}")
        return None
