"""Matching, AP, confusion matrix and fitness on cases small enough to check by hand."""

import numpy as np
import pytest
import torch

from yolodist.eval.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, match_predictions

IOUV = torch.linspace(0.5, 0.95, 10)


def test_ap_toy_case_by_hand():
    # Two labels; predictions by confidence: TP, FP, TP. Recall 0.5, 0.5, 1; precision 1, 0.5, 2/3.
    # The precision envelope is 1 up to recall 0.5, then 2/3: AP = 0.5 * 1 + 0.5 * 2/3 = 5/6, less
    # the half-step the 101-point rule loses at recall 1 (as COCO's interpolation in YOLOv5).
    tp = np.array([[True], [False], [True]])
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(2))
    assert result.ap[0, 0] == pytest.approx(5 / 6, abs=0.01)
    ap, _, _ = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(5 / 6, abs=0.01)


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
