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
