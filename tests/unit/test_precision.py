"""Which precision and memory layout a step trains with, and that the step really uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yolodist.config.schema import Hyp, TrainConfig
from yolodist.distributed.env import DistEnv
from yolodist.engine import precision, step
from yolodist.engine.ema import ModelEMA
from yolodist.engine.inputs import network_input
from yolodist.engine.loss import YoloLoss
from yolodist.errors import BadFlag
from yolodist.eval.validator import _memory_format
from yolodist.models import Model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU reports ``names`` as its feature flags."""

    def set_flags(*names: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(names))

    return set_flags


def test_auto_uses_bfloat16_only_on_cpus_that_compute_it_natively(flags):
    flags("avx2", "fma")
    assert precision.autocast_dtype("auto", CPU) is None
    flags("avx512f", "avx512_bf16")
    assert precision.autocast_dtype("auto", CPU) is torch.bfloat16
    flags("amx_tile", "amx_bf16")
    assert precision.autocast_dtype("auto", CPU) is torch.bfloat16
    # --deterministic keeps auto in float32: its runs are compared bit for bit.
    assert precision.autocast_dtype("auto", CPU, deterministic=True) is None


def test_explicit_modes_and_cuda(flags):
    flags("avx2")
    assert precision.autocast_dtype("bf16", CPU) is torch.bfloat16  # forced, also where it is emulated
    flags("amx_bf16")
    assert precision.autocast_dtype("off", CPU) is None
    assert precision.autocast_dtype("auto", CUDA) is torch.float16  # upstream's AMP
    assert precision.autocast_dtype("bf16", CUDA) is torch.bfloat16
    assert precision.autocast_dtype("fp16", CUDA) is torch.float16
    with pytest.raises(BadFlag, match="--amp fp16 needs a CUDA device"):
        precision.autocast_dtype("fp16", CPU)


def test_only_float16_needs_a_grad_scaler():
    assert precision.needs_scaler(torch.float16)
    assert not precision.needs_scaler(torch.bfloat16) and not precision.needs_scaler(None)


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="Linux reports CPU flags in /proc/cpuinfo")
def test_cpu_flags_reads_this_machine():
    flags = precision.cpu_flags()
    if not flags:
        pytest.skip("this CPU reports no 'flags' line (not x86)")
    assert flags <= set(Path("/proc/cpuinfo").read_text().split())


def test_bad_amp_mode_is_a_flag_error():
    with pytest.raises(BadFlag, match="--amp must be one of"):
        TrainConfig(amp="half")


@pytest.mark.parametrize("batch_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("channels_last", [True, False])
def test_network_input_has_the_configured_layout(channels_last, batch_layout):
    imgs = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8).contiguous(memory_format=batch_layout)
    x = network_input(imgs, TrainConfig(channels_last=channels_last), 32, 0, 0)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert x.is_contiguous() != channels_last
    assert torch.equal(x, imgs.float() / 255)


def test_validation_batches_follow_the_models_layout():
    model = Model("yolov5n.yaml", nc=3)
    assert _memory_format(model) == torch.contiguous_format
    assert _memory_format(model.to(memory_format=torch.channels_last)) == torch.channels_last


def _context(autocast: torch.dtype | None, channels_last: bool) -> step.StepContext:
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=3).train().to(memory_format=precision.memory_format(channels_last))
    loss = YoloLoss(model.detect.anchors, 3, Hyp(), img_size=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return step.StepContext(model, model, loss, optimizer, scaler, ModelEMA(model), DistEnv(), 2, autocast=autocast)


def _batch(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    imgs = torch.rand(2, 3, 64, 64).contiguous(memory_format=precision.memory_format(channels_last))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2]])
    return imgs, targets


def _step(autocast: torch.dtype | None, channels_last: bool) -> tuple[dict, list[torch.dtype]]:
    """One update; returns the weights after it and the dtypes the convolutions computed in."""
    ctx = _context(autocast, channels_last)
    seen: list[torch.dtype] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        for m in ctx.model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    step.train_step(ctx, *_batch(channels_last), update=True)
    for h in hooks:
        h.remove()
    return {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}, seen


def _rel(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(float((a[k] - b[k]).float().norm() ** 2) for k in keys) ** 0.5
    return num / sum(float(a[k].float().norm() ** 2) for k in keys) ** 0.5


def test_the_step_computes_in_the_chosen_precision_and_layout():
    reference, dtypes = _step(None, channels_last=False)
    assert set(dtypes) == {torch.float32}
    channels_last, dtypes = _step(None, channels_last=True)
    assert set(dtypes) == {torch.float32}
    # The layout changes the order of float32 sums, nothing else.
    assert 0 < _rel(reference, channels_last) < 1e-5
    bf16, dtypes = _step(torch.bfloat16, channels_last=True)
    assert set(dtypes) == {torch.bfloat16}
    assert all(v.dtype == reference[k].dtype for k, v in bf16.items())  # float32 master weights
    assert 1e-6 < _rel(reference, bf16) < 1e-2  # bfloat16 rounding: visible, and small
