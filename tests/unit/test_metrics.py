"""Matching, AP, confusion matrix and fitness on cases small enough to check by hand."""

import numpy as np
import pytest
import torch

from yolodist.eval.metrics import (
    ConfusionMatrix,
    Metrics,
    ap_per_class,
    compute_ap,
    fitness,
    match_predictions,
    smooth,
)

IOUV = torch.linspace(0.5, 0.95, 10)


def test_ap_toy_case_by_hand():
    # Two labels; predictions by confidence: TP, FP, TP. Recall 0.5, 0.5, 1; precision 1, 0.5, 2/3.
    # The precision envelope is 1 up to recall 0.5, then 2/3. COCO samples it at the 101 recall
    # thresholds 0, 0.01, ..., 1: the 51 up to 0.50 read 1, the 50 above read 2/3.
    exact = (51 * 1 + 50 * 2 / 3) / 101
    tp = np.array([[True], [False], [True]])
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(2))
    assert result.ap[0, 0] == pytest.approx(exact, abs=1e-9)
    ap, mpre, mrec = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(exact, abs=1e-9)
    np.testing.assert_allclose(mpre, [1, 1, 2 / 3, 2 / 3, 0])  # the precision envelope
    # Recall never reached earns nothing (upstream's interpolation to recall 1 would credit it).
    ap_half, _, _ = compute_ap(np.array([0.25, 0.5]), np.array([1.0, 1.0]))
    assert ap_half == pytest.approx(51 / 101, abs=1e-12)
    np.testing.assert_allclose(mrec, [0, 0.5, 0.5, 1, 1])
    # Confidence order matters, not input order.
    shuffled = ap_per_class(tp[[2, 0, 1]], np.array([0.7, 0.9, 0.8]), np.zeros(3), np.zeros(2))
    assert shuffled.ap[0, 0] == pytest.approx(exact, abs=1e-9)


def test_perfect_and_empty_predictions():
    perfect = ap_per_class(np.ones((4, 10), bool), np.linspace(0.9, 0.6, 4), np.zeros(4), np.zeros(4))
    assert perfect.ap.mean() == pytest.approx(1.0, abs=0.006)
    assert perfect.p[0] == pytest.approx(1.0) and perfect.r[0] == pytest.approx(1.0)
    missed = ap_per_class(np.zeros((3, 10), bool), np.array([0.9, 0.5, 0.1]), np.ones(3), np.zeros(2))
    assert missed.ap.sum() == 0  # predictions of another class only


def test_match_is_greedy_and_unique():
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]], dtype=torch.float32)
    dets = torch.tensor(
        [
            [0, 0, 10, 10, 0.9, 0],  # exact match of label 0
            [0, 0, 10, 9, 0.8, 0],  # duplicate of label 0 (IoU 0.9): must not count
            [20, 20, 30, 30, 0.7, 1],  # right place, wrong class
            [21, 21, 30, 30, 0.6, 0],  # label 1, IoU 0.81
        ]
    )
    correct = match_predictions(dets, labels, IOUV)
    assert correct[:, 0].tolist() == [True, False, False, True]
    assert correct[0].all()  # IoU 1 passes every threshold
    assert correct[3, :7].all() and not correct[3, 7:].any()  # 0.81 >= 0.5..0.8, < 0.85
    assert not match_predictions(dets[:0], labels, IOUV).any()


def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.9, 0], [50, 50, 60, 60, 0.9, 1]])
    cm.process_batch(dets, labels)
    expected = np.zeros((3, 3))
    expected[0, 0] = 1  # class 0 correct
    expected[0, 1] = 1  # class 1 predicted as 0
    expected[1, 2] = 1  # a class-1 box on background
    np.testing.assert_array_equal(cm.matrix, expected)
    cm.process_batch(None, labels)
    assert cm.matrix[2, 0] == 1 and cm.matrix[2, 1] == 1


def test_fitness_weights():
    assert fitness(np.array([0.3, 0.4, 0.5, 0.25])) == pytest.approx(0.1 * 0.5 + 0.9 * 0.25)


def test_fitness_on_a_table_of_results():
    table = np.array([[0.9, 0.9, 0.2, 0.1], [0.1, 0.1, 0.6, 0.4]])
    np.testing.assert_allclose(fitness(table), [0.02 + 0.09, 0.06 + 0.36])


def test_metrics_summary_two_classes():
    # Class 0: one label, found (AP ~1). Class 2: two labels, one found at a lower confidence than a
    # false positive. Class 1 is absent from the targets and gets the overall mAP in maps().
    tp = np.array([[True] * 10, [False] * 10, [True] * 10])
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 2, 2]), np.array([0, 2, 2]))
    assert result.classes.tolist() == [0, 2]
    m = Metrics(result)
    # Class 2: FP then TP gives recall [0, 0.5], precision [0, 0.5]; the envelope is 0.5 for the 51
    # recall thresholds up to 0.5 and 0 beyond: 51 * 0.5 / 101. Class 0 is perfect: 1.
    assert result.ap[:, 0] == pytest.approx([1.0, 25.5 / 101], abs=1e-9)
    assert m.map50 == pytest.approx((1.0 + 25.5 / 101) / 2)
    assert m.map == pytest.approx(result.ap.mean())
    assert (m.mp, m.mr) == pytest.approx((result.p.mean(), result.r.mean()))
    np.testing.assert_allclose(m.maps(3), [result.ap[0].mean(), m.map, result.ap[1].mean()])
    assert m.fitness() == pytest.approx(0.1 * m.map50 + 0.9 * m.map)
    assert Metrics(ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))).map == 0.0


def test_match_predictions_one_to_one_per_threshold():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=gen) * 50
    dets = torch.cat([xy, xy + 20 + torch.rand(40, 2, generator=gen) * 5, torch.rand(40, 1, generator=gen)], 1)
    dets = torch.cat([dets, torch.randint(0, 2, (40, 1), generator=gen).float()], 1)
    labels = torch.cat([torch.randint(0, 2, (10, 1), generator=gen).float(), dets[:10, :4] + 1], 1)
    correct = match_predictions(dets, labels, IOUV)
    assert correct.shape == (40, 10) and correct.dtype == torch.bool
    per_class = torch.bincount(labels[:, 0].long(), minlength=2)
    for k in range(10):
        for c in (0, 1):
            assert correct[dets[:, 5] == c, k].sum() <= per_class[c]
    assert correct[:, 0].sum() >= correct[:, -1].sum() and correct[:, 0].any()


def test_confusion_matrix_duplicates_and_tp_fp():
    cm = ConfusionMatrix(nc=2)
    labels = torch.tensor([[1, 0, 0, 10, 10]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 1], [0, 0, 10, 9, 0.8, 1], [0, 0, 10, 10, 0.1, 0]])
    cm.process_batch(dets, labels)  # one match, one duplicate (false positive), one under conf
    assert cm.matrix[1, 1] == 1 and cm.matrix[1, 2] == 1 and cm.matrix.sum() == 2
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [0, 1] and fp.tolist() == [0, 1]
    cm.process_batch(dets, labels[:0])  # no labels: every confident detection is a false positive
    assert cm.matrix[1, 2] == 3


def test_smooth_keeps_length_and_constants():
    y = np.full(100, 0.3)
    np.testing.assert_allclose(smooth(y, 0.1), y)
    spike = np.zeros(101)
    spike[50] = 1.0
    out = smooth(spike, 0.05)
    assert out.shape == (101,) and out.sum() == pytest.approx(1.0) and out.max() < 1


def test_matching_is_in_confidence_order_as_coco():
    # One label; a confident detection at IoU 0.6 and a weaker duplicate at IoU 0.9. COCO gives the
    # label to the confident one at 0.5 (and the duplicate is a false positive there); at 0.7 only
    # the duplicate qualifies.
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0]])
    dets = torch.tensor([[0.0, 0.0, 10.0, 6.0, 0.9, 0.0], [0.0, 0.0, 10.0, 9.0, 0.5, 0.0]])
    correct = match_predictions(dets, labels, torch.tensor([0.5, 0.7]))
    assert correct.tolist() == [[True, False], [False, True]]


def test_contested_and_uncontested_matches_together():
    # Two labels far apart: one has a single detection, the other two overlapping detections.
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [0, 50.0, 50.0, 60.0, 60.0]])
    dets = torch.tensor(
        [
            [50.0, 50.0, 60.0, 60.0, 0.3, 0.0],  # alone on label 2
            [0.0, 0.0, 10.0, 10.0, 0.8, 0.0],  # label 1, confident
            [0.0, 0.0, 10.0, 9.5, 0.9, 0.0],  # label 1, more confident: takes it
            [0.0, 0.0, 10.0, 10.0, 0.7, 1.0],  # right box, wrong class
        ]
    )
    correct = match_predictions(dets, labels, torch.tensor([0.5]))
    assert correct[:, 0].tolist() == [True, False, True, False]


def test_validation_summary_is_the_metrics_summary():
    # Validation's overall figures and fitness come from Metrics and fitness(), not a second formula.
    from yolodist.eval.validator import ImageRecord, metrics_from_records

    gen = torch.Generator().manual_seed(3)
    records = {}
    for i in range(6):
        cls = torch.randint(0, 3, (8, 1), generator=gen).float()
        xy = torch.rand(8, 2, generator=gen) * 40
        labels = torch.cat([cls, xy, xy + 10 + torch.rand(8, 2, generator=gen) * 10], 1)
        jitter = torch.rand(8, 4, generator=gen) * 6
        pred = torch.cat([labels[:, 1:] + jitter, torch.rand(8, 1, generator=gen), labels[:, :1]], 1)
        pred[::3, 5] = (pred[::3, 5] + 1) % 3  # some detections of the wrong class
        records[f"{i}.jpg"] = ImageRecord((64, 64), pred, labels, match_predictions(pred, labels, IOUV))
    result = metrics_from_records(records, ["a", "b", "c", "d"])
    summary = Metrics(result.ap)
    assert (result.precision, result.recall, result.map50, result.map) == summary.mean_results()
    np.testing.assert_array_equal(result.maps, summary.maps(4))
    assert result.map == np.mean([c["map"] for c in result.per_class])  # exactly: the table's own mean
    assert result.fitness == fitness(np.array(summary.mean_results())) == 0.1 * result.map50 + 0.9 * result.map
