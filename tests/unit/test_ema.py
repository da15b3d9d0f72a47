"""ModelEMA: upstream's decay ramp, the update formula, integer buffers, convergence, state round trip."""

import math

import pytest
import torch
from torch import nn

from yolodist.engine.ema import ModelEMA


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        (0, 0.0),
        (1, 0.9999 * (1 - math.exp(-1 / 2000))),  # ~0.0005: the first update mostly copies
        (2000, 0.9999 * (1 - 1 / math.e)),  # ~0.632 at tau
        (20_000, 0.9999 * (1 - math.exp(-10))),
    ],
)
def test_decay_ramp_values(updates, expected):
    ema = ModelEMA(tiny(), decay=0.9999, tau=2000)
    assert ema.decay_at(updates) == pytest.approx(expected, rel=1e-12)


def test_copy_is_detached_eval_and_independent():
    model = tiny().train()
    ema = ModelEMA(model, updates=5)
    assert ema.updates == 5 and not ema.ema.training and model.training
    assert not any(p.requires_grad for p in ema.ema.parameters())
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(ema.ema[0].weight, model[0].weight)  # a copy, not shared storage


def test_update_formula_on_params_and_float_buffers():
    model = tiny()
    ema = ModelEMA(model, decay=0.999, tau=10, updates=3)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    model.train()
    model(torch.randn(4, 3, 8, 8))  # moves BatchNorm's running stats and counter
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model)
    assert ema.updates == 4
    d = ema.decay_at(4)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(ema.state_dict()[key], d * before[key] + (1 - d) * value)
        else:
            assert torch.equal(ema.state_dict()[key], value), key  # num_batches_tracked copied
    assert ema.ema[1].num_batches_tracked.item() == 1
    assert not any(p.requires_grad for p in ema.ema.parameters())


def test_converges_to_a_fixed_model_and_tracks_slowly():
    model = tiny()
    ema = ModelEMA(model, decay=0.9, tau=1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    gap0 = (ema.ema[0].weight - 2.0).abs().max().item()
    ema.update(model)
    gap1 = (ema.ema[0].weight - 2.0).abs().max().item()
    assert 0 < gap1 < gap0  # one step moves towards the model, not onto it
    for _ in range(300):
        ema.update(model)
    torch.testing.assert_close(ema.ema[0].weight, torch.full_like(model[0].weight, 2.0))
    torch.testing.assert_close(ema.ema[1].bias, torch.full_like(model[1].bias, 2.0))


def test_average_of_a_moving_model_lags_behind():
    model = nn.Linear(1, 1, bias=False)
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # ramp finished at once: d == 0.5
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.ema.weight.fill_(0.0)
        for value in (1.0, 2.0, 3.0):
            model.weight.fill_(value)
            ema.update(model)
    # 0 -> 0.5 -> 1.25 -> 2.125
    assert ema.ema.weight.item() == pytest.approx(2.125)


def test_state_dict_round_trip_and_updates():
    model = tiny()
    ema = ModelEMA(model)
    for _ in range(3):
        ema.update(model)
    other = ModelEMA(tiny())
    other.load_state_dict(ema.state_dict(), updates=ema.updates)
    assert other.updates == 3
    for key, value in ema.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    assert set(ema.state_dict()) == set(model.state_dict())


def test_mismatched_model_is_a_clear_error():
    ema = ModelEMA(tiny())
    with pytest.raises(ValueError, match="unwrapped model"):
        ema.update(nn.Sequential(nn.Linear(2, 2)))


def test_double_precision_model_keeps_ema_dtype():
    model = tiny()
    ema = ModelEMA(model)
    ema.update(model.double())  # a cast model: the average keeps its own dtype
    assert ema.ema[0].weight.dtype == torch.float32


def expected_after_update(ema: ModelEMA, model: nn.Module) -> dict[str, torch.Tensor]:
    d = ema.decay_at(ema.updates + 1)
    before = ema.state_dict()
    return {
        k: d * before[k] + (1 - d) * v.to(before[k].dtype) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("change", ["new_tensor", "cast", "moved_in_place"])
def test_updates_follow_the_model_after_its_tensors_change(change):
    # The pairing of EMA and model tensors is kept between updates; it must notice replaced tensors.
    model = tiny()
    ema = ModelEMA(model, decay=0.9, tau=1, updates=10)
    ema.update(model)
    if change == "new_tensor":
        model[0].weight.data = torch.randn_like(model[0].weight)
    elif change == "cast":
        model.double()
    else:
        with torch.no_grad():
            model[2].bias.add_(5.0)  # same storage: the kept pairing sees the new values
    expected = expected_after_update(ema, model)
    ema.update(model)
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_loading_a_state_then_updating_uses_the_loaded_values():
    model = tiny()
    ema = ModelEMA(model, decay=0.9, tau=1, updates=10)
    ema.update(model)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in ema.state_dict().items()}
    ema.load_state_dict(other)
    expected = expected_after_update(ema, model)
    ema.update(model)
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)
