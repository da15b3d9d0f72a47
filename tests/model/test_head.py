"""Detect head and model behaviour: bias priors, decoding, grid cache, fusing, gradients, devices."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from yolodist.models import Detect, Model
from yolodist.models.blocks import Conv

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def nano() -> Model:
    torch.manual_seed(0)
    return Model("yolov5n", nc=4)


def _head(nc: int = 2) -> Detect:
    head = Detect(nc, anchors=[[10, 13, 16, 30], [30, 60, 60, 45]], ch=[8, 16])
    head.stride.copy_(torch.tensor([8.0, 16.0]))
    head.anchors /= head.stride.view(-1, 1, 1)
    return head


def test_bias_priors_from_zero() -> None:
    head = _head(nc=3)
    for conv in head.m:
        torch.nn.init.zeros_(conv.bias)
    head.initialize_biases()
    for conv, s in zip(head.m, (8, 16), strict=True):
        bias = conv.bias.detach().view(head.na, head.no)
        assert torch.all(bias[:, :4] == 0)
        torch.testing.assert_close(bias[:, 4], torch.full((2,), math.log(8 / (640 / s) ** 2)))
        torch.testing.assert_close(bias[:, 5:], torch.full((2, 3), math.log(0.6 / (3 - 0.99999))))


def test_bias_priors_with_class_frequencies() -> None:
    head = _head(nc=2)
    for conv in head.m:
        torch.nn.init.zeros_(conv.bias)
    head.initialize_biases(torch.tensor([30.0, 10.0]))
    bias = head.m[1].bias.detach().view(head.na, head.no)
    torch.testing.assert_close(bias[:, 5:], torch.log(torch.tensor([[0.75, 0.25]] * 2)))
    with pytest.raises(ValueError, match="shape"):
        head.initialize_biases(torch.ones(5))


def test_model_build_applies_priors(nano: Model) -> None:
    # the priors are added to PyTorch's default init, uniform in +-1/sqrt(fan_in)
    for conv, s in zip(nano.detect.m, nano.stride.tolist(), strict=True):
        bound = 1 / math.sqrt(conv.in_channels)
        bias = conv.bias.detach().view(nano.detect.na, -1)
        assert torch.all((bias[:, 4] - math.log(8 / (640 / s) ** 2)).abs() <= bound)
        assert torch.all((bias[:, 5:] - math.log(0.6 / (4 - 0.99999))).abs() <= bound)
        assert torch.all(bias[:, :4].abs() <= bound)


def test_decode_matches_hand_formula() -> None:
    head = _head(nc=2).eval()
    x = [torch.randn(1, 8, 4, 6), torch.randn(1, 16, 2, 3)]
    decoded, raw = head(x)
    assert decoded.shape == (1, 2 * (4 * 6 + 2 * 3), 7)
    # level 1, anchor 1, cell (y=1, x=2): rows are anchor-major, then y, then x
    offset = 2 * 4 * 6
    row = decoded[0, offset + 1 * (2 * 3) + 1 * 3 + 2]
    p = raw[1][0, 1, 1, 2].sigmoid()
    expected_xy = (p[:2] * 2 - 0.5 + torch.tensor([2.0, 1.0])) * 16
    expected_wh = (p[2:4] * 2) ** 2 * torch.tensor([60.0, 45.0])
    torch.testing.assert_close(row[:2], expected_xy)
    torch.testing.assert_close(row[2:4], expected_wh)
    torch.testing.assert_close(row[4:], p[4:])


def test_raw_maps_are_equal_in_train_and_eval() -> None:
    head = _head()
    x = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    train_raw = head(x)
    head.eval()
    _, eval_raw = head(x)
    for a, b in zip(train_raw, eval_raw, strict=True):
        torch.testing.assert_close(a, b)
    assert x[0].shape == (2, 8, 4, 4)  # inputs are not replaced in place


def test_export_flag_and_grid_cache() -> None:
    head = _head().eval()
    x = [torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
    decoded, _ = head(x)
    grid = head._grid(0, 4, 4, torch.device("cpu"), torch.float32)
    head.export = True
    only = head(x)
    assert isinstance(only, torch.Tensor)
    torch.testing.assert_close(only, decoded)
    assert head._grid(0, 4, 4, torch.device("cpu"), torch.float32) is grid
    head(x=[torch.randn(1, 8, 6, 2), torch.randn(1, 16, 3, 1)])
    assert (0, 6, 2, torch.device("cpu"), torch.float32) in head._grids
    assert head.double()(x=[t.double() for t in x]).dtype == torch.float64


def test_autoanchor_style_rewrite_is_used_by_decode() -> None:
    head = _head().eval()
    x = [torch.zeros(1, 8, 2, 2), torch.zeros(1, 16, 1, 1)]
    before = head(x)[0][..., 2:4].clone()
    head.anchors.mul_(2)  # anchors rewritten in place after the grid cache exists
    torch.testing.assert_close(head(x)[0][..., 2:4], before * 2)


def test_check_anchor_order() -> None:
    head = Detect(1, anchors=[[100, 100], [10, 10]], ch=[4, 4])
    head.stride.copy_(torch.tensor([8.0, 16.0]))
    assert head.check_anchor_order()
    assert head.anchors[:, 0, 0].tolist() == [10.0, 100.0]
    assert not head.check_anchor_order()


def test_fuse_matches_unfused_eval(nano: Model) -> None:
    model = copy.deepcopy(nano)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():  # non-trivial statistics so the fold is really exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    model.eval()
    x = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected, _ = model(x)
        fused = model.fuse()
        actual, _ = fused(x)
    assert fused is model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(m.bn is None and m.conv.bias is not None for m in fused.modules() if isinstance(m, Conv))
    assert not any(".bn." in k for k in fused.state_dict())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_backward_gives_finite_gradients(nano: Model) -> None:
    model = copy.deepcopy(nano).train()
    x = torch.rand(2, 3, 64, 64)
    outputs = model(x)
    loss = sum(out.float().pow(2).mean() for out in outputs)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert any(param.grad.abs().sum() > 0 for param in model.parameters())


def test_stride_follows_dtype_and_stays_out_of_state_dict(nano: Model) -> None:
    model = copy.deepcopy(nano).double().eval()
    assert model.stride.dtype == torch.float64 and model.stride.tolist() == [8.0, 16.0, 32.0]
    assert "model.24.stride" not in model.state_dict()
    with torch.no_grad():
        decoded, _ = model(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    assert decoded.dtype == torch.float64 and torch.isfinite(decoded).all()


def test_strict_state_dict_round_trip(nano: Model) -> None:
    fresh = Model("yolov5n", nc=4)
    fresh.load_state_dict(nano.state_dict(), strict=True)
    torch.testing.assert_close(fresh.detect.anchors, nano.detect.anchors)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), nano.parameters(), strict=True))


def test_build_leaves_batchnorm_statistics_fresh(nano: Model) -> None:
    bn = nano.model[0].bn
    assert int(bn.num_batches_tracked) == 0
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
