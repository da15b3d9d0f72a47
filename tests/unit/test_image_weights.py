"""--image-weights: class and image weights, the weighted sampler order, and mosaic partners in real workers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from yolodist.config.schema import Hyp
from yolodist.data.dataset import YoloDataset
from yolodist.data.image_weights import class_counts, class_weights, epoch_image_weights, image_weights
from yolodist.data.loader import build_loader
from yolodist.data.sampler import ShardedBatchSampler


def boxes(*classes: int) -> np.ndarray:
    out = np.full((len(classes), 5), 0.5, dtype=np.float32)
    out[:, 0] = classes
    return out


# Class 0 has 3 boxes, class 1 one, class 2 none; image 3 has no box.
LABELS = [boxes(0, 0), boxes(0, 1), boxes(1), boxes(), boxes(0)]


def test_class_weights_are_normalised_inverse_counts():
    assert class_counts(LABELS, 3).tolist() == [4, 2, 0]
    # counts (4, 2, 0 -> 1): inverses 1/4, 1/2, 1; normalised by 7/4
    assert np.allclose(class_weights(LABELS, 3), [1 / 7, 2 / 7, 4 / 7])
    assert class_counts([boxes(0, 5)], 3).tolist() == [1, 0, 0]  # a class beyond nc is not counted


def test_image_weight_sums_its_boxes_class_weights():
    w = image_weights(LABELS, 3, np.array([0.1, 0.3, 0.6]))
    assert np.allclose(w, [0.2, 0.4, 0.3, 0.0, 0.1])


def test_epoch_weights_follow_the_last_map():
    fresh = epoch_image_weights(LABELS, 3, np.zeros(3))
    assert np.allclose(fresh, image_weights(LABELS, 3, class_weights(LABELS, 3)))
    # Class 1 perfectly detected: images with only class 1 are not drawn any more, class 0 dominates.
    learned = epoch_image_weights(LABELS, 3, np.array([0.5, 1.0, 0.0]))
    assert np.allclose(learned, np.array([2, 1, 0, 0, 1]) * (1 / 7) * 0.25)
    # Nothing to prefer: draw every image equally, instead of failing on an all-zero distribution.
    assert epoch_image_weights([boxes(), boxes()], 3, np.zeros(3)).tolist() == [1.0, 1.0]
    assert epoch_image_weights(LABELS, 3, np.ones(3)).tolist() == [1.0] * 5


def drawn(sampler: ShardedBatchSampler) -> list[int]:
    return [i for batch in sampler for _, i in batch]


def test_weighted_order_is_one_global_draw_sliced_over_ranks():
    n, batch, weights = 40, 8, np.linspace(0.0, 1.0, 40)
    single = ShardedBatchSampler(n, batch, seed=5)
    single.set_weights(weights)
    ranks = [ShardedBatchSampler(n, batch, rank=r, world=2, seed=5) for r in range(2)]
    for s in ranks:
        s.set_weights(weights)
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        one = list(single)
        two = [list(s) for s in ranks]
        assert [a + b for a, b in zip(*two, strict=True)] == one  # every rank slices the same draw
    order = drawn(single)
    assert len(order) == n and 0 not in order  # weight 0: never drawn
    assert len(set(order)) < n  # with replacement
    single.set_epoch(0)
    assert drawn(single) != order  # epochs draw anew
    plain = ShardedBatchSampler(n, batch, seed=5)
    plain.set_epoch(0)
    assert sorted(drawn(plain)) == list(range(n))  # without weights: a permutation, as before


def test_weighted_draws_follow_the_weights():
    n = 4
    sampler = ShardedBatchSampler(n, 4, seed=0)
    sampler.set_weights(np.array([1.0, 2.0, 3.0, 0.0]))
    counts = Counter()
    for epoch in range(600):
        sampler.set_epoch(epoch)
        counts.update(drawn(sampler))
    total = sum(counts.values())
    assert counts[3] == 0
    for i, p in enumerate((1 / 6, 2 / 6, 3 / 6)):
        assert abs(counts[i] / total - p) < 0.02, counts


def test_bad_weights_are_refused():
    sampler = ShardedBatchSampler(3, 3)
    for bad in (np.ones(2), np.array([1.0, -1.0, 1.0]), np.array([np.nan, 1, 1]), np.zeros(3)):
        with pytest.raises(ValueError):
            sampler.set_weights(bad)


class CountingDataset(YoloDataset):
    """Counts which images the samples load, in shared memory, so worker processes report back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loads = torch.zeros(len(self), dtype=torch.int64).share_memory_()

    def load_image(self, i: int):
        self.loads[i] += 1
        return super().load_image(i)


def test_persistent_workers_draw_mosaic_partners_by_each_epochs_weights(tiny_shapes):
    images = sorted((tiny_shapes.parent / "images" / "train").iterdir())
    hyp = Hyp(mosaic=1.0, mixup=0.0)
    dataset = CountingDataset([tiny_shapes.parent / "images" / "train"], 64, augment=True, hyp=hyp, image_weights=True)
    assert len(dataset) == len(images)
    sampler = ShardedBatchSampler(len(dataset), 4, seed=0)
    loader = build_loader(dataset, sampler, workers=2)
    assert loader.num_workers == 2 and loader.persistent_workers

    def epoch(e: int) -> torch.Tensor:
        dataset.loads.zero_()
        sampler.set_epoch(e)
        for _ in loader:
            pass
        return dataset.loads.clone()

    # (Counts are lower bounds: a partner equal to the sample is not loaded again, and two workers may
    # increment the same counter at once.)
    spread = epoch(0)  # no weights yet: partners uniform
    assert (spread > 0).sum() > len(dataset) // 2, spread.tolist()
    favourite = 3
    weights = np.zeros(len(dataset))
    weights[favourite] = 1.0
    sampler.set_weights(weights)
    dataset.set_draw_weights(weights)
    # The same worker processes now load only the favourite: as the sample and as all three partners.
    loads = epoch(1)
    assert loads.nonzero().flatten().tolist() == [favourite], loads.tolist()


def test_draw_weights_need_a_dataset_made_for_them(tiny_shapes):
    dataset = YoloDataset([tiny_shapes.parent / "images" / "train"], 64)
    with pytest.raises(RuntimeError, match="image_weights=True"):
        dataset.set_draw_weights(np.ones(len(dataset)))
