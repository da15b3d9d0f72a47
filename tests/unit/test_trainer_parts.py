"""Small trainer pieces: early stopping, multi-scale agreement, freezing, warm-up, the update schedule."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from yolodist.config.schema import Hyp, TrainConfig
from yolodist.engine.build import freeze_layers, warmup_iterations
from yolodist.engine.epoch import ends_window, warmup_accumulation
from yolodist.engine.inputs import multi_scale_size
from yolodist.engine.trainer import EarlyStopping
from yolodist.models import Model
from yolodist.utils.seed import seed_everything


def test_early_stopping_patience():
    stop = EarlyStopping(patience=2)
    assert [stop(e, f) for e, f in enumerate([0.1, 0.3, 0.2, 0.25])] == [False, False, False, True]
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))


# Sizes for epochs 1 and 2, steps 0-39, computed in a separate process that is rank 1 of 2 and has its
# own global random state: what another rank would compute.
_SIZES_ON_ANOTHER_RANK = """
import json, random, sys
import numpy as np, torch
random.seed(99); np.random.seed(99); torch.manual_seed(99)
from yolodist.config.schema import TrainConfig
from yolodist.engine.inputs import multi_scale_size
cfg = TrainConfig(imgsz=320, seed=3)
print(json.dumps([[multi_scale_size(cfg, epoch, step, 32) for step in range(40)] for epoch in (1, 2)]))
"""


def test_multi_scale_size_is_keyed_by_step_not_rank():
    cfg, stride = TrainConfig(imgsz=320, seed=3), 32

    def sizes(epoch: int, config: TrainConfig = cfg) -> list[int]:
        return [multi_scale_size(config, epoch, step, stride) for step in range(40)]

    seed_everything(0)
    here = [sizes(1), sizes(2)]
    # The process-wide random state (seeded otherwise, then drawn from) does not enter.
    seed_everything(12345)
    random.random()
    np.random.rand(7)
    torch.rand(3)
    assert [sizes(1), sizes(2)] == here
    # Nor does the rank: another process, launched as rank 1 of 2, computes the same sizes.
    env = {**os.environ, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "PYTHONHASHSEED": "7"}
    other = subprocess.run(
        [sys.executable, "-c", _SIZES_ON_ANOTHER_RANK], env=env, capture_output=True, text=True, timeout=120
    )
    assert other.returncode == 0, other.stderr[-2000:]
    assert json.loads(other.stdout) == here
    # The size changes from step to step, and with the epoch and the seed.
    assert len(set(here[0])) >= 6 and here[0] != here[1]
    assert sizes(1, TrainConfig(imgsz=320, seed=4)) != here[0]
    # Upstream's range: a multiple of the stride in [0.5 * imgsz, 1.5 * imgsz + stride), both ends reached.
    every = here[0] + here[1]
    assert all(s % stride == 0 and 160 <= s < 320 * 1.5 + stride for s in every), every
    assert min(every) < 224 and max(every) > 416, every


def test_freeze_layers():
    model = Model("yolov5n.yaml", nc=2)
    freeze_layers(model, (2,))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("model.0.", "model.1.")) for n in frozen)
    freeze_layers(model, (0,))
    assert all(p.requires_grad for p in model.parameters())
    freeze_layers(model, (3, 5))
    assert {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad} == {"3", "5"}


def test_warmup_length_as_upstream():
    cfg = TrainConfig(epochs=100)
    assert warmup_iterations(cfg, Hyp(warmup_epochs=3), 10) == 100  # at least 100 iterations
    assert warmup_iterations(cfg, Hyp(warmup_epochs=3), 1000) == 3000
    assert warmup_iterations(TrainConfig(epochs=2), Hyp(warmup_epochs=3), 10) == 10  # at most half the run
    assert warmup_iterations(cfg, Hyp(warmup_epochs=0), 10) == 100  # upstream warms up 100 iterations even then


def upstream_updates(steps: int, epochs: int, accumulate_at) -> list[tuple[int, int, int]]:
    """Upstream 7.0's rule: update once ``accumulate`` batches passed since the last update (counted
    over the whole run); gradients zeroed at every epoch start. Returns (epoch, batch, batches summed)."""
    out, last = [], -1
    for epoch in range(epochs):
        summed = 0  # zero_grad at the epoch start drops an unfinished window
        for i in range(steps):
            n = i + steps * epoch
            summed += 1
            if n - last >= accumulate_at(n):
                out.append((epoch, i, summed))
                last, summed = n, 0
    return out


def our_updates(steps: int, epochs: int, accumulate_at) -> list[tuple[int, int, int]]:
    out = []
    for epoch in range(epochs):
        last, summed = -1, 0
        for i in range(steps):
            summed += 1
            if ends_window(i, last, accumulate_at(i + steps * epoch), steps):
                out.append((epoch, i, summed))
                last, summed = i, 0
    return out


@pytest.mark.parametrize("steps", [32, 64, 12])
def test_update_schedule_is_upstreams_after_warmup(steps):
    """Warm-up ramps the window from 1 to 4 batches over 100 batches; in every epoch after it, every 4th
    batch updates, as upstream. During warm-up an epoch boundary may fall inside a window: we update
    there with the batches so far, upstream drops them (at most one such update per epoch)."""
    warmup, epochs = 100, 12

    def accumulate_at(n):
        return warmup_accumulation(n, warmup, 4) if n <= warmup else 4

    assert [warmup_accumulation(n, 100, 4) for n in (0, 16, 17, 50, 83, 84, 100)] == [1, 1, 2, 2, 3, 4, 4]
    ours, theirs = our_updates(steps, epochs, accumulate_at), upstream_updates(steps, epochs, accumulate_at)
    first = next(e for e in range(epochs) if e * steps > warmup)
    assert [u for u in ours if u[0] >= first] == [u for u in theirs if u[0] >= first]
    assert all(summed == 4 for e, _, summed in ours if e >= first)
    extra = len(ours) - len(theirs)
    assert 0 <= extra <= first
    assert sum(u[2] for u in ours) == steps * epochs  # every batch's gradient is used


def test_an_unfinished_window_updates_at_the_epoch_end():
    """10 batches, windows of 4: we update after batches 3, 7 and 9 (two batches) every epoch; upstream
    drops batches 8-9 and updates after 2 batches of the next epoch (the documented difference)."""
    ours, theirs = our_updates(10, 2, lambda n: 4), upstream_updates(10, 2, lambda n: 4)
    assert ours == [(0, 3, 4), (0, 7, 4), (0, 9, 2), (1, 3, 4), (1, 7, 4), (1, 9, 2)]
    assert theirs == [(0, 3, 4), (0, 7, 4), (1, 1, 2), (1, 5, 4), (1, 9, 4)]
