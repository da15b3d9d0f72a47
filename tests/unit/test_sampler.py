"""ShardedBatchSampler: ranks simulated in one process (STYLE habit 5)."""

from __future__ import annotations

import pytest
import torch

from yolodist.data.loader import collate, num_workers
from yolodist.data.sampler import ShardedBatchSampler


def all_ranks(n, batch, world, **kw):
    return [ShardedBatchSampler(n, batch, rank=r, world=world, **kw) for r in range(world)]


@pytest.mark.parametrize("n", [11, 12, 24, 5])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_union_of_rank_slices_is_the_world1_batch(n, world):
    batch = 6
    single = list(ShardedBatchSampler(n, batch, seed=3))
    ranks = [list(s) for s in all_ranks(n, batch, world, seed=3)]
    assert {len(r) for r in ranks} == {len(single)}  # same number of steps everywhere
    for k, global_batch in enumerate(single):
        merged = [item for r in ranks for item in r[k]]  # rank order = contiguous slices
        if len(global_batch) >= world:
            assert merged == global_batch  # the same samples, each once, also in a partial last batch
        else:
            assert set(merged) == set(global_batch)  # fewer samples than ranks: some repeat (padding)
        sizes = [len(r[k]) for r in ranks]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_index_each_epoch_and_epochs_differ(world):
    n, batch = 23, 6
    samplers = all_ranks(n, batch, world, seed=0)
    orders = []
    for epoch in (0, 1):
        seen = []
        for s in samplers:
            s.set_epoch(epoch)
            for b in s:
                assert {e for e, _ in b} == {epoch}
                seen += [i for _, i in b]
        assert set(seen) == set(range(n))
        assert len(seen) == n  # nothing repeated: 23 = 3 x 6 + 5, and 5 samples cover up to 3 ranks
        orders.append(seen)
    assert orders[0] != orders[1]


def test_same_seed_same_order_and_shuffle_off_is_arange():
    a, b = ShardedBatchSampler(10, 2, seed=7), ShardedBatchSampler(10, 2, seed=7)
    assert list(a) == list(b) and list(a) != list(ShardedBatchSampler(10, 2, seed=8))
    plain = [i for batch in ShardedBatchSampler(10, 4, shuffle=False) for _, i in batch]
    assert plain[:10] == list(range(10))


def test_drop_last_and_padding():
    assert len(ShardedBatchSampler(10, 4, drop_last=True)) == 2
    assert len(ShardedBatchSampler(10, 4)) == 3
    assert len(ShardedBatchSampler(3, 4, drop_last=True)) == 0
    assert [i for _, i in list(ShardedBatchSampler(10, 4, shuffle=False))[-1]] == [8, 9]  # as upstream: partial
    s = ShardedBatchSampler(10, 4, shuffle=False, rank=1, world=2)
    assert [i for _, i in list(s)[-1]] == [9]  # the partial batch [8, 9] split one each
    assert s.pad_mask(2) == [False] and s.pad_mask(0) == [False, False]
    # 9 samples, batch 4, 2 ranks: the last batch is [8] alone; rank 1 repeats it, marked as padding.
    last = [list(ShardedBatchSampler(9, 4, shuffle=False, rank=r, world=2))[-1] for r in (0, 1)]
    assert last == [[(0, 8)], [(0, 8)]]
    assert ShardedBatchSampler(9, 4, shuffle=False, rank=1, world=2).pad_mask(2) == [True]
    assert ShardedBatchSampler(9, 4, shuffle=False, rank=0, world=2).pad_mask(2) == [False]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_rect_batches_stay_inside_one_dataset_batch(world):
    n, batch = 13, 4  # the last dataset batch holds only index 12
    for s in all_ranks(n, batch, world, shuffle=False):
        for k, b in enumerate(s):
            assert {i // batch for _, i in b} == {k}


def test_bad_batch_or_rank():
    with pytest.raises(ValueError, match="multiple"):
        ShardedBatchSampler(10, 5, world=2)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(10, 4, rank=2, world=2)


def test_collate_adds_image_index():
    img = torch.zeros((3, 8, 8), dtype=torch.uint8)
    lb = torch.tensor([[0, 1, 0.5, 0.5, 0.1, 0.1]])
    batch = [(img, lb, "a", None, None), (img, torch.zeros((0, 6)), "b", None, None)]
    batch.append((img, lb.repeat(2, 1), "c", None, None))
    imgs, targets, paths, shapes, hsv = collate(batch)
    assert imgs.shape == (3, 3, 8, 8) and paths == ("a", "b", "c") and shapes == (None, None, None) and hsv is None
    assert targets[:, 0].tolist() == [0, 2, 2] and targets.dtype == torch.float32
    assert lb[0, 0] == 0  # inputs untouched


def test_collate_stacks_channels_last_with_the_same_values():
    hwc = torch.randint(0, 255, (4, 6, 8, 3), dtype=torch.uint8)
    chw_views = [x.permute(2, 0, 1) for x in hwc]  # what the dataset gives: [3, H, W] over HWC memory
    plain = [x.contiguous() for x in chw_views]
    for samples in (chw_views, plain, [chw_views[0], plain[1], chw_views[2], plain[3]]):
        imgs = collate([(im, torch.zeros((0, 6)), "p", None, None) for im in samples])[0]
        assert imgs.shape == (4, 3, 6, 8) and imgs.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(imgs, torch.stack(plain))


def test_collate_stacks_the_deferred_hsv_tables_in_sample_order():
    tables = [torch.full((256, 3), k, dtype=torch.uint8) for k in range(3)]
    img = torch.zeros((3, 8, 8), dtype=torch.uint8)
    batch = collate([(img, torch.zeros((0, 6)), str(k), None, t) for k, t in enumerate(tables)])
    assert batch.hsv.shape == (3, 256, 3) and batch.hsv.dtype == torch.uint8
    assert batch.hsv[:, 0, 0].tolist() == [0, 1, 2]


def test_num_workers_is_capped():
    assert num_workers(8, 1) == 0
    assert num_workers(8, 2) <= 2 and num_workers(0, 16) == 0


def test_neighbouring_seeds_share_no_epochs_order():
    """A generator seeded with seed + epoch gave seed 1's epoch 0 the order of seed 0's epoch 1."""
    orders = {
        (seed, epoch): tuple(ShardedBatchSampler(64, 8, seed=seed).order(epoch).tolist())
        for seed in range(4)
        for epoch in range(4)
    }
    assert len(set(orders.values())) == len(orders)
    # Still a pure function of (seed, epoch): every rank and every restart draws the same order.
    assert ShardedBatchSampler(64, 8, rank=1, world=2, seed=3).order(2).tolist() == list(orders[3, 2])
