"""COCO-format predictions and ground truth, and scoring them with the reference COCO evaluator.

``--save-json`` writes predictions as COCO results (xywh top-left in original pixels). When the
dataset has COCO annotations (``<path>/annotations/instances_val2017.json``, as upstream looks for)
those are the ground truth; otherwise the ground truth is written from the YOLO labels, so every
run can be cross-checked by the reference evaluator (pycocotools, or faster-coco-eval when installed).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from yolodist.errors import BadFlag

LOGGER = logging.getLogger(__name__)


def image_id_for(path: str | Path) -> int | str:
    """COCO's image id: the file stem as an int when it is numeric (COCO's own files), else the stem."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def _xywh(xyxy: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]


def predictions_json(records: Mapping, category_ids: Sequence[int], ids: Mapping[str, int | str]) -> list[dict]:
    """COCO results: one dict per detection; ``records`` maps image path -> ``ImageRecord``."""
    out = []
    for path, rec in records.items():
        for *xyxy, conf, cls in rec.pred.tolist():
            out.append(
                {
                    "image_id": ids[path],
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": _xywh(xyxy),
                    "score": round(float(conf), 5),
                }
            )
    return out


def ground_truth_json(
    records: Mapping, names: Sequence[str], category_ids: Sequence[int], ids: Mapping[str, int | str]
) -> dict:
    """COCO ground truth from YOLO labels (in original pixels) of the validated images."""
    images, annotations = [], []
    for path, rec in records.items():
        h, w = rec.shape
        images.append({"id": ids[path], "file_name": Path(path).name, "height": int(h), "width": int(w)})
        for cls, *xyxy in rec.labels.tolist():
            box = _xywh(xyxy)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": ids[path],
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": int(category_ids[i]), "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def category_ids_from(annotations: dict, nc: int) -> list[int]:
    """Our class index -> the annotation file's category id (COCO's 80 classes use ids 1..90 with gaps)."""
    ids = sorted(int(c["id"]) for c in annotations.get("categories", []))
    if len(ids) != nc:
        raise BadFlag(f"the COCO annotations list {len(ids)} categories but the model has {nc} classes")
    return ids


def _evaluator():
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    except ImportError:
        pass
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    except ImportError:
        raise BadFlag(
            "scoring --save-json output needs a COCO evaluator: pip install pycocotools (or faster-coco-eval)"
        ) from None


def coco_evaluate(gt_json: Path, pred_json: Path, verbose: bool = True) -> tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) of ``pred_json`` against ``gt_json`` by the reference evaluator."""
    coco_cls, eval_cls = _evaluator()
    if not json.loads(Path(pred_json).read_text()):
        return 0.0, 0.0  # the evaluator refuses an empty result list
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = coco_cls(str(gt_json))
        dt = gt.loadRes(str(pred_json))
        ev = eval_cls(gt, dt, "bbox")
        ev.params.imgIds = sorted(gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        ev.summarize()
    if verbose:
        LOGGER.info(buffer.getvalue().rstrip())
    return float(ev.stats[0]), float(ev.stats[1])
