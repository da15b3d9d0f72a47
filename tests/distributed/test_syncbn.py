"""CpuSyncBatchNorm: conversion in one process, and full-batch equivalence over real gloo ranks.

One torchrun job (2 ranks) runs the C1, C3 and C4 probes of RELIABILITY.md and writes what it saw;
the tests below check it. The 1-process reference is computed by rank 0 on the full batch.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from yolodist.distributed import syncbn
from yolodist.distributed.syncbn import CpuSyncBatchNorm

PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP
    from yolodist.distributed import syncbn
    from yolodist.distributed.env import detect
    from yolodist.distributed.session import session

    OUT = Path(sys.argv[1])

    def net(dtype):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).to(dtype)

    def full_batch(dtype):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(8, 3, 6, 6, generator=g, dtype=torch.float64)
        # Samples of very different scale and offset, so per-rank statistics differ a lot.
        scale = torch.linspace(0.5, 4, 8, dtype=torch.float64).view(8, 1, 1, 1)
        return (x * scale + torch.linspace(-2, 3, 8, dtype=torch.float64).view(8, 1, 1, 1)).to(dtype)

    def sgd_steps(model, opt, x, n_global, scale, steps=5):
        for _ in range(steps):
            loss = model(x).pow(2).sum() / n_global * scale
            opt.zero_grad()
            loss.backward()
            opt.step()

    def rel_diff(a, b):
        return max(
            ((a[k].double() - b[k].double()).norm() / max(a[k].double().norm().item(), 1e-6)).item()
            for k in a if a[k].is_floating_point()
        )

    def c1(env, dtype, sync):
        data = full_batch(dtype)
        shard = data.chunk(env.world_size)[env.rank]
        model = net(dtype)
        # The optimiser is built before the conversion, as the trainer does.
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ddp = DDP(syncbn.convert(model) if sync else model)
        sgd_steps(ddp, opt, shard, data.numel(), env.world_size)  # DDP averages gradients: times world
        got = ddp.module.state_dict()
        if env.rank != 0:
            return None
        ref = net(dtype)
        sgd_steps(ref, torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9), data, data.numel(), 1.0)
        return {"rel": rel_diff(ref.state_dict(), got), "keys": list(got) == list(ref.state_dict())}

    def c3(env, momentum, empty_every):
        bn, ref = syncbn.convert(nn.BatchNorm2d(3, momentum=momentum)), nn.BatchNorm2d(3, momentum=momentum)
        out_diff = torch.zeros(())
        for step in range(20):
            g = torch.Generator().manual_seed(100 + step)
            a = torch.randn(2, 3, 4, 4, generator=g) * 0.1 + 5
            n1 = 0 if empty_every and step % empty_every == 0 else 3
            b = torch.randn(n1, 3, 4, 4, generator=g) * 20 - 3
            out = bn(a if env.rank == 0 else b)
            out.square().sum().backward()  # the backward all-reduce must not hang on an empty shard
            want = ref(torch.cat([a, b]))
            mine = want[:2] if env.rank == 0 else want[2:]
            out_diff = torch.maximum(out_diff, (out - mine).abs().max() if out.numel() else out_diff)
        return {"sync": bn.state_dict(), "ref": ref.state_dict(), "out_diff": out_diff.detach()}

    def c4(env):
        data = full_batch(torch.float32)
        ddp = DDP(syncbn.convert(net(torch.float32)))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        sgd_steps(ddp, opt, data.chunk(env.world_size)[env.rank], data.numel(), env.world_size, steps=1)
        if env.rank == 0:
            torch.save(ddp.module.state_dict(), OUT / "c4.pt")

    env = detect("cpu")
    with session(env, 60):
        result = {f"c1_{name}_{'sync' if sync else 'plain'}": c1(env, dtype, sync)
                  for name, dtype in (("f32", torch.float32), ("f64", torch.float64)) for sync in (True, False)}
        torch.save({"momentum": c3(env, 0.1, 0), "cumulative": c3(env, None, 0), "empty": c3(env, 0.1, 3)},
                   OUT / f"c3_rank{env.rank}.pt")
        c4(env)
        if env.rank == 0:
            (OUT / "result.json").write_text(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def probe_out(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("syncbn")
    script = out / "probe.py"
    script.write_text(PROBE)
    proc = torchrun([str(script), str(out)], timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=1e-3, momentum=0.03), nn.SiLU(), nn.BatchNorm1d(4))


# ----------------------------------------------------------------------------- one process


def test_convert_replaces_batchnorm2d_and_shares_its_tensors():
    model = _small_net()
    bn = model[1]
    converted = syncbn.convert(model)
    assert converted is model and isinstance(model[1], CpuSyncBatchNorm) and type(model[3]) is nn.BatchNorm1d
    assert (model[1].eps, model[1].momentum, model[1].affine, model[1].track_running_stats) == (1e-3, 0.03, True, True)
    assert model[1].weight is bn.weight and model[1].running_var is bn.running_var
    assert isinstance(syncbn.convert(nn.BatchNorm2d(2)), CpuSyncBatchNorm)
    reverted = syncbn.revert(model)
    assert type(reverted[1]) is nn.BatchNorm2d and reverted[1].weight is bn.weight


def test_optimiser_built_before_convert_updates_the_converted_module():
    model = _small_net()[:2]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    syncbn.convert(model)
    before = model[1].weight.detach().clone()
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    opt.step()
    assert not torch.equal(before, model[1].weight.detach())


@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_a_process_group_it_is_batchnorm2d(momentum):
    ref = nn.BatchNorm2d(3, momentum=momentum)
    bn = syncbn.convert(nn.BatchNorm2d(3, momentum=momentum))
    for step in range(3):
        x = torch.randn(4, 3, 5, 5) * (step + 1) + step
        torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.state_dict(), ref.state_dict())
    bn.eval(), ref.eval()
    torch.testing.assert_close(bn(x), ref(x))
    with pytest.raises(ValueError, match="4D"):
        bn(torch.randn(2, 3, 5))


def test_state_dict_keys_dtypes_shapes_are_batchnorm2d():
    plain = _small_net().state_dict()
    converted = syncbn.convert(_small_net()).state_dict()
    assert list(converted) == list(plain)
    assert all(converted[k].dtype == plain[k].dtype and converted[k].shape == plain[k].shape for k in plain)


# ----------------------------------------------------------------------------- two gloo ranks


@pytest.mark.dist
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("dtype", "tolerance"), [("f32", 1e-5), ("f64", 1e-12)])
def test_c1_ddp_with_sync_bn_equals_one_process_full_batch(probe_out, dtype, tolerance):
    result = json.loads((probe_out / "result.json").read_text())
    sync, plain = result[f"c1_{dtype}_sync"], result[f"c1_{dtype}_plain"]
    assert sync["keys"]
    assert sync["rel"] <= tolerance, sync
    assert plain["rel"] > 1e-3, plain  # negative control: per-rank BatchNorm is a different computation


@pytest.mark.dist
@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", ["momentum", "cumulative", "empty"])
def test_c3_running_stats_with_uneven_shards_equal_the_concatenated_batch(probe_out, case):
    for rank in (0, 1):
        got = torch.load(probe_out / f"c3_rank{rank}.pt", weights_only=True)[case]
        assert float(got["out_diff"]) < 1e-5, got["out_diff"]
        torch.testing.assert_close(got["sync"], got["ref"])
        assert int(got["sync"]["num_batches_tracked"]) == 20


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_c4_trained_state_dict_loads_strictly_into_batchnorm2d_and_torch_syncbn(probe_out):
    state = torch.load(probe_out / "c4.pt", weights_only=True)
    assert int(state["1.num_batches_tracked"]) == 1
    for target in (_plain_toy(), nn.SyncBatchNorm.convert_sync_batchnorm(_plain_toy())):
        target.load_state_dict(state, strict=True)
        mine = target.state_dict()
        assert list(mine) == list(state)
        assert all(mine[k].dtype == state[k].dtype and mine[k].shape == state[k].shape for k in state)
        torch.testing.assert_close(mine, state, rtol=0, atol=0)


def _plain_toy() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
