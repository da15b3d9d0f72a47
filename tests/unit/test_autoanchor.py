"""AutoAnchor: best possible recall, k-means + evolution, and the check that replaces poor anchors."""

import numpy as np
import torch

from yolodist.engine import autoanchor


def test_bpr_and_kmeans():
    wh = np.array([[10, 10], [20, 20], [40, 40], [80, 80]], dtype=float)
    assert autoanchor.best_possible_recall(wh, wh, thr=4.0)[0] == 1.0
    assert autoanchor.best_possible_recall(np.array([[1000.0, 1000.0]]), wh, thr=4.0)[0] == 0.0
    rng = np.random.default_rng(0)
    clusters = np.concatenate([rng.normal(c, 1.0, size=(50, 2)) for c in (10, 50, 200)])
    anchors = autoanchor.kmean_anchors(clusters, n=3, img_size=256, thr=4.0, gen=50, rng=np.random.default_rng(1))
    np.testing.assert_allclose(anchors.mean(1), [10, 50, 200], rtol=0.25)


def test_check_anchors_keeps_good_and_replaces_bad():
    stride = torch.tensor([8.0, 16.0, 32.0])
    labels = [np.array([[0, 0.5, 0.5, w, w]]) for w in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)] * 5
    shapes = np.full((len(labels), 2), 640.0)
    good = torch.tensor(
        [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]],
        dtype=torch.float32,
    ) / stride.view(-1, 1, 1)
    rng = np.random.default_rng(0)
    assert autoanchor.check_anchors(labels, shapes, good, stride, 4.0, 640, rng) is None
    bad = torch.full((3, 3, 2), 100.0)  # 800-3200 px anchors for 13-510 px boxes
    new = autoanchor.check_anchors(labels, shapes, bad, stride, 4.0, 640, np.random.default_rng(0))
    assert new is not None and new.shape == (3, 3, 2)
    again = autoanchor.check_anchors(labels, shapes, bad, stride, 4.0, 640, np.random.default_rng(0))
    torch.testing.assert_close(new, again)  # deterministic for a seed
    px = (new * stride.view(-1, 1, 1)).reshape(-1, 2)
    assert torch.all(px.prod(1)[1:] >= px.prod(1)[:-1])  # small anchors on the fine level


def test_bpr_and_anchors_above_threshold_by_hand():
    anchors = torch.tensor([[10.0, 10.0], [30.0, 30.0]])
    wh = np.array([[10.0, 10.0], [20.0, 20.0], [130.0, 25.0]])
    # Ratios min(r, 1/r) worst over w, h: box 1 -> 1.0, 0.33; box 2 -> 0.5, 0.67; box 3 -> 0.08, 0.23.
    bpr, aat = autoanchor.best_possible_recall(anchors, wh, thr=4.0)  # above 0.25 counts
    assert bpr == 2 / 3
    assert aat == (2 + 2 + 0) / 3


def test_kmeans_without_evolution_finds_cluster_centres():
    rng = np.random.default_rng(3)
    centres = np.array([[12.0, 8.0], [40.0, 60.0], [150.0, 90.0], [300.0, 320.0]])
    sizes = (200, 20, 80, 5)  # unequal clusters: a single random start can merge the small ones
    wh = np.concatenate([rng.normal(c, c * 0.02, size=(k, 2)) for c, k in zip(centres, sizes, strict=True)])
    wh = np.concatenate([wh, [[1.0, 1.5]] * 50])  # under 2 px: ignored, as upstream
    anchors = autoanchor.kmean_anchors(wh, n=4, img_size=640, gen=0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(anchors, centres, rtol=0.03)


def test_evolution_is_deterministic_and_never_worse():
    rng = np.random.default_rng(0)
    wh = rng.uniform(4, 300, size=(400, 2))
    a = autoanchor.kmean_anchors(wh, n=6, gen=200, rng=np.random.default_rng(7))
    b = autoanchor.kmean_anchors(wh, n=6, gen=200, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    start = autoanchor.kmean_anchors(wh, n=6, gen=0, rng=np.random.default_rng(7))
    fit = autoanchor._fitness  # the evolution's objective
    assert fit(a, wh, 4.0) >= fit(start, wh, 4.0)
    assert np.all(np.diff(a.prod(1)) >= 0)  # sorted by area
    same = autoanchor.kmean_anchors(np.full((30, 2), 16.0), n=3, gen=10, rng=rng)  # zero spread: no NaN
    assert np.isfinite(same).all()


def test_check_anchors_accepts_box_rows_and_logs(caplog):
    stride = torch.tensor([8.0, 16.0, 32.0])
    wh = np.array([[0.02, 0.03], [0.05, 0.05], [0.1, 0.2], [0.3, 0.2], [0.5, 0.6], [0.9, 0.7]] * 5)
    shapes = np.array([[640.0, 480.0]] * len(wh))
    bad = torch.full((3, 3, 2), 0.05)  # sub-pixel anchors
    with caplog.at_level("INFO", logger="yolodist.engine.autoanchor"):
        new = autoanchor.check_anchors(wh, shapes, bad, stride, 4.0, 320, np.random.default_rng(0))
    assert new is not None
    assert "poor fit" in caplog.text and "Done" in caplog.text
    px = (new * stride.view(-1, 1, 1)).reshape(-1, 2).numpy()
    sizes = autoanchor.label_sizes(wh, shapes, 320, np.random.default_rng(0))
    assert autoanchor.best_possible_recall(px, sizes, 4.0)[0] > 0.98
    # [k, 2] per-image arrays work like [k, 5] YOLO rows: only the last two columns are read.
    rows = [np.concatenate([np.zeros((1, 3)), w[None]], 1) for w in wh]
    torch.testing.assert_close(
        autoanchor.label_sizes(rows, shapes, 320, np.random.default_rng(1)),
        autoanchor.label_sizes([w[None] for w in wh], shapes, 320, np.random.default_rng(1)),
    )
