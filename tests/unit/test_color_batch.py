"""The HSV jitter after batching (``--hsv-jitter device``): bit for bit the loader's jitter, sample by sample."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.unit.test_dataset import make_set
from yolodist.augment.color import apply_hsv_table, augment_hsv, hsv_table
from yolodist.augment.color_batch import hsv_batch
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.data.dataset import YoloDataset
from yolodist.data.loader import build_loader, collate
from yolodist.data.sampler import ShardedBatchSampler
from yolodist.engine.inputs import hsv_on_device
from yolodist.errors import BadFlag

GAINS = (0.015, 0.7, 0.4)  # hyp.scratch-low's


def _cpu_jitter(rgb: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The loader's path: the jitter on the BGR image, then RGB."""
    bgr = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return cv2.cvtColor(apply_hsv_table(bgr, table), cv2.COLOR_BGR2RGB)


def _as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_every_colour_is_jittered_as_the_loader_jitters_it():
    """All 2^24 RGB colours, four images of 2048 x 2048 with their own table each (extreme gains included,
    so that saturation and value clip and hue wraps), against OpenCV on the CPU."""
    code = np.arange(1 << 24, dtype=np.uint32)
    cube = np.stack([code >> 16, (code >> 8) & 255, code & 255], axis=-1).astype(np.uint8).reshape(4, 2048, 2048, 3)
    rng = np.random.default_rng(0)
    tables = [hsv_table(rng, *gains) for gains in (GAINS, GAINS, (0.5, 0.9, 0.9), (0.0, 0.0, 0.9))]
    out = hsv_batch(_as_batch(list(cube)), torch.from_numpy(np.stack(tables)))
    assert out.dtype == torch.uint8 and out.is_contiguous(memory_format=torch.channels_last)
    for k in range(4):
        expected = _cpu_jitter(cube[k], tables[k])
        assert np.array_equal(out[k].permute(1, 2, 0).numpy(), expected), k


def test_each_image_gets_its_own_table():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    tables = [hsv_table(np.random.default_rng(s), *GAINS) for s in range(5)]
    out = hsv_batch(_as_batch([image] * 5), torch.from_numpy(np.stack(tables)))
    for k in range(5):
        assert np.array_equal(out[k].permute(1, 2, 0).numpy(), _cpu_jitter(image, tables[k]))
    assert len({out[k].numpy().tobytes() for k in range(5)}) == 5


def test_tables_draw_as_augment_hsv_and_none_without_gains():
    img = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    table = hsv_table(np.random.default_rng(7), *GAINS)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert np.array_equal(apply_hsv_table(img.copy(), table), augment_hsv(img.copy(), np.random.default_rng(7), *GAINS))
    rng = np.random.default_rng(3)
    assert hsv_table(rng, 0, 0, 0) is None
    assert rng.random() == np.random.default_rng(3).random()  # nothing drawn


def test_wrong_dtypes_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        hsv_batch(torch.zeros((1, 3, 4, 4)), torch.zeros((1, 256, 3), dtype=torch.uint8))


@pytest.fixture
def datasets(tmp_path):
    src = make_set(tmp_path, n=8)
    hyp = Hyp().replace(flipud=0.5, mixup=0.5)  # every branch: mosaic, mixup, letterbox, both flips
    made = {}
    for defer in (False, True):
        made[defer] = YoloDataset([src], 64, augment=True, hyp=hyp, seed=3, defer_hsv=defer)
    return made


def test_a_deferred_sample_jittered_after_batching_is_the_loaders_sample(datasets):
    keys = [(e, i) for e in range(4) for i in range(8)]
    loader = collate([datasets[False][k] for k in keys])
    deferred = collate([datasets[True][k] for k in keys])
    assert loader.hsv is None and deferred.hsv.shape == (len(keys), 256, 3)
    assert not torch.equal(deferred.imgs, loader.imgs)  # the jitter really was left out
    assert torch.equal(hsv_batch(deferred.imgs, deferred.hsv), loader.imgs)
    assert torch.equal(deferred.targets, loader.targets) and deferred.paths == loader.paths


def _wide_and_tall(root, n=8):
    """n images alternately 2:1 and 1:2, so that --rect batches are not square."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (40, 80) if i % 2 else (80, 40)
        cv2.imwrite(str(root / "images" / f"{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        (root / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    return root / "images"


@pytest.mark.parametrize(("img", "stride", "tolerance"), [(128, 32, 0), (120, 8, 1)])
def test_rect_samples_too(tmp_path, img, stride, tolerance):
    """Exact at every training shape (multiples of the stride, 32). OpenCV's own 8-bit HSV-to-RGB rounds
    the last pixels of a row that is not a multiple of its 32-pixel vector width differently, by one level
    (its scalar tail); the tables hold its vector result, so there the two may differ by one level."""
    src = _wide_and_tall(tmp_path)
    kw = dict(augment=True, rect=True, batch_size=4, stride=stride, seed=1)
    plain, deferred = (YoloDataset([src], img, defer_hsv=d, **kw) for d in (False, True))
    worst, shapes = 0, set()
    for first in (0, 4):
        keys = [(e, first + j) for e in range(3) for j in range(4)]
        a, b = collate([plain[k] for k in keys]), collate([deferred[k] for k in keys])
        shapes.add(tuple(a.imgs.shape[2:]))
        worst = max(worst, int((hsv_batch(b.imgs, b.hsv).int() - a.imgs.int()).abs().max()))
    assert shapes == {(64, img), (img, 64)}
    assert worst == tolerance


def test_tables_cross_from_loader_workers(datasets):
    """Workers send the tables with the batch; the same batches as the loader's own jitter."""
    batches = {}
    for defer, ds in datasets.items():
        sampler = ShardedBatchSampler(len(ds), 4, rank=0, world=1, seed=0)
        batches[defer] = list(build_loader(ds, sampler, workers=2))
    for a, b in zip(batches[False], batches[True], strict=True):
        assert torch.equal(hsv_batch(b.imgs, b.hsv), a.imgs)


def test_no_jitter_in_the_hyperparameters_defers_nothing(tmp_path):
    src = make_set(tmp_path, n=4)
    hyp = Hyp().replace(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    ds = YoloDataset([src], 64, augment=True, hyp=hyp, defer_hsv=True)
    assert collate([ds[(0, i)] for i in range(4)]).hsv is None
    val = YoloDataset([src], 64, augment=False, defer_hsv=True)  # validation has no jitter to defer
    assert val[0][4] is None


@pytest.mark.parametrize(
    ("place", "device", "on_device"),
    [("auto", "cpu", False), ("auto", "cuda", True), ("loader", "cuda", False), ("device", "cpu", True)],
)
def test_where_the_jitter_runs(place, device, on_device):
    assert hsv_on_device(place, torch.device(device)) is on_device


def test_an_unknown_place_is_refused_in_one_line():
    with pytest.raises(BadFlag, match="--hsv-jitter must be one of auto, loader, device"):
        TrainConfig(hsv_jitter="gpu")
