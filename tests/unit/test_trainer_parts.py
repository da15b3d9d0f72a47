"""Small trainer pieces: early stopping, multi-scale agreement, freezing, warm-up, the update schedule."""

import pytest

from yolodist.config.schema import Hyp, TrainConfig
from yolodist.engine.build import freeze_layers, warmup_iterations
from yolodist.engine.inputs import multi_scale_size
from yolodist.engine.trainer import EarlyStopping, ends_window, warmup_accumulation
from yolodist.models import Model


def test_early_stopping_patience():
    stop = EarlyStopping(patience=2)
    assert [stop(e, f) for e, f in enumerate([0.1, 0.3, 0.2, 0.25])] == [False, False, False, True]
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))


def test_multi_scale_size_is_keyed_by_step_not_rank():
    cfg = TrainConfig(imgsz=320, seed=3)
    sizes = [multi_scale_size(cfg, 1, step, 32) for step in range(20)]
    assert sizes == [multi_scale_size(cfg, 1, step, 32) for step in range(20)]  # any rank computes the same
    assert all(s % 32 == 0 and 160 <= s <= 480 for s in sizes) and len(set(sizes)) > 3


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
