"""Our mAP against the reference COCO evaluator (pycocotools) on the same predictions.

Predictions are simulated from ground truth: every box jittered, some missed, duplicates and
false positives added, confidences that only partly rank true boxes first. Both scorers see exactly
the same records, so any gap is a difference in matching or AP integration.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from yolodist.eval import coco
from yolodist.eval.metrics import match_predictions
from yolodist.eval.validator import IOU_THRESHOLDS, ImageRecord, metrics_from_records

pytest.importorskip("pycocotools")


def _simulate(gt: np.ndarray, rng: np.random.Generator, shape: tuple[int, int], nc: int) -> np.ndarray:
    """Detections [n, 6] (xyxy, conf, cls) for labels ``gt`` [m, 5] (cls, xyxy) of one image."""
    h, w = shape
    dets = []
    for cls, x1, y1, x2, y2 in gt:
        if rng.random() < 0.1:
            continue  # missed
        bw, bh = x2 - x1, y2 - y1
        jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
        box = np.array([x1, y1, x2, y2]) + jitter
        wrong_class = rng.random() < 0.08
        c = (cls + 1) % nc if wrong_class else cls
        dets.append([*box, rng.uniform(0.3, 1.0), c])
        if rng.random() < 0.15:  # a duplicate, lower score
            dets.append([*(box + rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]), rng.uniform(0.05, 0.6), c])
    for _ in range(rng.integers(0, 4)):  # background false positives
        x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
        s = rng.uniform(8, 60)
        dets.append([x, y, min(x + s, w), min(y + s, h), rng.uniform(0.0, 0.7), rng.integers(nc)])
    out = np.array(dets, dtype=np.float64).reshape(-1, 6)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def _records(images: list[tuple[str, tuple[int, int], np.ndarray]], nc: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    records = {}
    for path, shape, gt in images:
        pred = torch.from_numpy(_simulate(gt, rng, shape, nc)).float()
        labels = torch.from_numpy(gt).float().reshape(-1, 5)
        pred = pred[pred[:, 4].argsort(descending=True)]
        correct = match_predictions(pred, labels, IOU_THRESHOLDS)
        records[path] = ImageRecord(shape, pred, labels, correct)
    return records


def _score_both(records: dict, names: list[str], tmp_path) -> tuple[tuple[float, float], tuple[float, float]]:
    ours = metrics_from_records(records, names)
    ids = {p: i for i, p in enumerate(sorted(records))}
    cat = list(range(len(names)))
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(coco.ground_truth_json(records, names, cat, ids)))
    dt_path.write_text(json.dumps(coco.predictions_json(records, cat, ids)))
    ref = coco.coco_evaluate(gt_path, dt_path, verbose=False)
    return (ours.map, ours.map50), ref


def test_agrees_on_builtin_shapes(tmp_path):
    from yolodist.data.shapes_render import render_sample

    names = ["circle", "square", "triangle", "pentagon", "hexagon", "ring", "star", "cross"]
    images = []
    for i in range(60):
        sample = render_sample(i, split="val", img_size=256, seed=3)
        h, w = sample.image.shape[:2]
        lb = np.asarray(sample.labels, dtype=np.float64).reshape(-1, 5)
        xyxy = np.stack(
            [
                (lb[:, 1] - lb[:, 3] / 2) * w,
                (lb[:, 2] - lb[:, 4] / 2) * h,
                (lb[:, 1] + lb[:, 3] / 2) * w,
                (lb[:, 2] + lb[:, 4] / 2) * h,
            ],
            1,
        )
        images.append((f"img{i}.jpg", (h, w), np.concatenate([lb[:, :1], xyxy], 1)))
    (ours_map, ours_50), (ref_map, ref_50) = _score_both(_records(images, len(names), 0), names, tmp_path)
    assert 0.2 < ref_map < 0.95  # a meaningful operating point, not a trivial 0 or 1
    assert abs(ours_map - ref_map) <= 0.01, (ours_map, ref_map)
    assert abs(ours_50 - ref_50) <= 0.01, (ours_50, ref_50)


def test_agrees_on_crowded_small_objects(tmp_path):
    """Dozens of small, often touching objects per image: where greedy matching orders diverge."""
    rng = np.random.default_rng(1)
    names = ["a", "b", "c"]
    images = []
    for i in range(40):
        h, w = 320, 320
        n = int(rng.integers(30, 60))
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(6, 18, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, 320)], 1)
        cls = rng.integers(0, 3, (n, 1)).astype(np.float64)
        images.append((f"crowd{i}.jpg", (h, w), np.concatenate([cls, boxes], 1)))
    records = _records(images, len(names), 1)
    assert max(len(r.pred) for r in records.values()) <= 100  # COCO scores at most 100 per image
    (ours_map, ours_50), (ref_map, ref_50) = _score_both(records, names, tmp_path)
    assert 0.1 < ref_map < 0.95
    assert abs(ours_map - ref_map) <= 0.01, (ours_map, ref_map)
    assert abs(ours_50 - ref_50) <= 0.01, (ours_50, ref_50)


def test_image_ids_follow_coco_file_names():
    assert coco.image_id_for("/data/coco/images/val2017/000000000139.jpg") == 139
    assert coco.image_id_for("a/b/cat_1.png") == "cat_1"


def test_category_ids_map_sorted_annotation_ids():
    ann = {"categories": [{"id": 90}, {"id": 1}, {"id": 3}]}
    assert coco.category_ids_from(ann, 3) == [1, 3, 90]
    with pytest.raises(Exception, match="3 categories but the model has 2"):
        coco.category_ids_from(ann, 2)


def test_dataset_coco_annotations_are_used_with_their_ids(tmp_path):
    """A dataset with COCO annotations (numeric file stems, category ids with gaps) is scored against them."""
    from yolodist.eval.outputs import write_and_score_json

    rng = np.random.default_rng(5)
    images = []
    for i in range(12):
        xy = rng.uniform(0, 200, (4, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 50, (4, 2))], 1)
        images.append(
            (f"/data/images/{1000 + i:012d}.jpg", (256, 256), np.concatenate([rng.integers(0, 2, (4, 1)), boxes], 1))
        )
    records = _records(images, 2, 5)
    names = ["cat", "dog"]
    ids = {p: coco.image_id_for(p) for p in records}
    gt = coco.ground_truth_json(records, names, [17, 18], ids)  # COCO's ids for cat and dog
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    out = tmp_path / "run"
    out.mkdir()
    ref_map, ref_50 = write_and_score_json(records, names, out, "best", tmp_path)
    preds = json.loads((out / "best_predictions.json").read_text())
    assert {p["category_id"] for p in preds} <= {17, 18} and {p["image_id"] for p in preds} <= set(range(1000, 1012))
    assert not (out / "annotations.json").exists()  # the dataset's own annotations were the ground truth
    ours = metrics_from_records(records, names)
    assert abs(ours.map - ref_map) <= 0.01 and abs(ours.map50 - ref_50) <= 0.01
