"""The measuring code of the CUDA checks (tests/gpu/probes.py), run on the CPU.

The GPU tests can only be run where there is a GPU; what they compute is checked here, on the same
data, so that a GPU run finds its harness working and its tolerances backed by a measurement.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from tests.gpu import probes
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.distributed import syncbn
from yolodist.models import Model


def class_count(data_yaml) -> int:
    return len(yaml.safe_load(data_yaml.read_text())["names"])


@pytest.fixture(scope="module")
def amp_inputs(tiny_shapes):
    torch.manual_seed(probes.AMP_SEED)
    model = Model("yolov5n.yaml", nc=class_count(tiny_shapes))
    batch = probes.shapes_batch(tiny_shapes, "train", 0, 8, 128)
    return model, batch, probes.shapes_batch(tiny_shapes, "train", 8, 8, 128)


def test_amp_float16_step_on_cpu_is_within_the_stated_tolerances(amp_inputs):
    """The CUDA test's comparison with CPU float16 autocast: the figures the tolerances were set from."""
    figures = probes.amp_figures(*amp_inputs)
    probes.check_amp(figures)
    assert figures.loss_rel > 0 and figures.grad_rel > 0  # float16 really ran: float32 would give 0


def test_amp_comparison_fails_when_the_gradients_are_not_unscaled(amp_inputs, monkeypatch):
    """A step whose update would see scaled gradients (2**16 too large) fails the check."""
    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", lambda self, optimizer: None)
    figures = probes.amp_figures(*amp_inputs)
    with pytest.raises(AssertionError):
        probes.check_amp(figures)
    assert figures.grad_rel > 1000


def test_scheduled_updates_walks_warmup_and_epoch_ends():
    # batch 8 of nbs 64: 8 batches per update once warmed up. 2 steps an epoch, 2 epochs: warm-up is
    # cut to half the run (2 iterations). Epoch 0: step 0 updates (window 1), step 1 ends the epoch;
    # epoch 1: step 0 is inside the 8-batch window, step 1 ends the epoch. Three updates.
    cfg = TrainConfig(epochs=2, batch_size=8)
    assert probes.scheduled_updates(cfg, Hyp(), steps_per_epoch=2) == 3
    # Full batches and no warm-up: every batch updates.
    cfg = TrainConfig(epochs=3, batch_size=64, min_warmup_iters=0)
    assert probes.scheduled_updates(cfg, Hyp(warmup_epochs=0.0), steps_per_epoch=5) == 15


def test_steps_per_epoch_reads_the_trainers_lines():
    log = "epoch 0: 16 images in 4.2 s (3.8 images/s)\n...\nepoch 1: 16 images in 5.4 s (3.0 images/s)\n"
    assert probes.steps_per_epoch(log, 8) == 2
    with pytest.raises(AssertionError):
        probes.steps_per_epoch("no epochs here", 8)


def test_our_shard_combination_is_the_full_batch_statistics():
    """Our CpuSyncBatchNorm's rows and combination, on the CUDA test's uneven shards and with an empty one."""
    for shards in (probes.uneven_shards(), [*probes.uneven_shards(), torch.zeros(0, 4, 6, 6)]):
        mean, var, total = probes.our_stats(shards)
        mean_err, var_err = probes.scaled_errors(mean, var, probes.reference_stats(shards))
        assert total == sum(s.shape[0] for s in shards) * 36
        assert mean_err < probes.SYNCBN_STATS_TOL and var_err < probes.SYNCBN_STATS_TOL, (mean_err, var_err)
    # float64 shards combine to float64 precision
    shards = [s.double() for s in probes.uneven_shards()]
    mean, var, _ = probes.our_stats(shards)
    assert max(probes.scaled_errors(mean, var, probes.reference_stats(shards))) < 1e-12
    # and the mistakes the check must see are far outside the tolerance
    assert probes.unsynced_gap(probes.uneven_shards()) > 1e4 * probes.SYNCBN_STATS_TOL


def test_our_normalisation_with_combined_statistics_is_batchnorm_on_the_full_batch():
    shards = probes.uneven_shards()
    full = torch.cat(shards)
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(4, eps=probes.SYNCBN_EPS, momentum=probes.SYNCBN_MOMENTUM)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    mean, var, _ = probes.our_stats(shards)
    got = syncbn.normalise(full, mean, var, bn.eps, bn.weight, bn.bias)
    assert probes.max_abs(got, bn(full)) < probes.SYNCBN_OUTPUT_TOL


def test_the_cuda_kernel_calls_match_torchs_operator_schemas():
    """Without CUDA the kernels refuse the CPU only after parsing their arguments: a wrong argument list
    (one missing, a list for a tensor) would raise a TypeError here instead."""
    x = torch.randn(3, 4, 2, 2)
    rows, counts, running = torch.zeros(2, 4), torch.tensor([8.0, 4.0]), (torch.zeros(4), torch.ones(4))
    calls = [
        lambda: probes.kernel_shard_stats(x, 1e-5),
        lambda: probes.kernel_gather(x, rows, rows + 1, counts, running, 0.1, 1e-5),
        lambda: probes.kernel_normalise(x, torch.ones(4), torch.zeros(4), rows[0], rows[1] + 1, 1e-5),
    ]
    for call in calls:
        with pytest.raises(NotImplementedError, match="'CPU' backend"):
            call()


def emulated_kernels(monkeypatch) -> None:
    """torch's SyncBatchNorm kernels as documented, in plain tensor operations on the CPU."""

    def shard_stats(shard: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        var, mean = torch.var_mean(shard, dim=(0, 2, 3), correction=0)
        return mean, torch.rsqrt(var + eps)

    def gather(full, means, invstds, counts, running, momentum, eps):
        weights = counts[:, None] / counts.sum()
        mean = (weights * means).sum(0)
        var = (weights * (invstds.pow(-2) - eps + (means - mean) ** 2)).sum(0)
        total = counts.sum()
        running[0].mul_(1 - momentum).add_(momentum * mean)
        running[1].mul_(1 - momentum).add_(momentum * var * total / (total - 1))
        return mean, torch.rsqrt(var + eps)

    def normalise(x, weight, bias, mean, invstd, eps):
        shape = (1, -1, 1, 1)
        return (x - mean.view(shape)) * invstd.view(shape) * weight.view(shape) + bias.view(shape)

    monkeypatch.setattr(probes, "kernel_shard_stats", shard_stats)
    monkeypatch.setattr(probes, "kernel_gather", gather)
    monkeypatch.setattr(probes, "kernel_normalise", normalise)


def test_the_cuda_kernel_test_runs_through_with_emulated_kernels(monkeypatch):
    """A dry run of the GPU test's body on the CPU: its shapes, figures and assertions, not torch's kernels."""
    from tests.gpu import test_cuda

    emulated_kernels(monkeypatch)
    monkeypatch.setattr(test_cuda, "KERNEL_DEVICE", torch.device("cpu"))
    figures: dict[str, object] = {}
    test_cuda.test_torch_syncbn_kernels_on_uneven_shards_match_ours_and_batchnorm(figures.__setitem__)
    assert set(figures) == {
        "torch_mean_err",
        "torch_var_err",
        "ours_vs_torch",
        "out_vs_bn",
        "out_vs_ours",
        "running_vs_bn",
        "unsynced_gap",
    }
