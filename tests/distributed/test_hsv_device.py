"""--hsv-jitter device: the loader leaves the colour jitter to the training device; the run is the same run."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import concurrently, run_script
from tests.distributed.test_ddp import assert_same_trajectory, invariance_args, load_last, torchrun

pytestmark = pytest.mark.dist


@pytest.mark.timeout(420)
def test_the_jitter_on_the_device_trains_the_same_run(tmp_path, tiny_shapes):
    """One process with the jitter in the loader, one with it on the device (loader workers sending the
    tables), and two ranks with it on the device: the same weights bit for bit in one process, the same
    trajectory over two ranks, and the same train_batch plots (the jittered images)."""
    common = invariance_args(tiny_shapes, tmp_path)
    plotted = [arg for arg in common if arg != "--noplots"]
    loader, device, two = concurrently(
        lambda: run_script([*plotted, "--hsv-jitter", "loader", "--name", "loader"], cwd=tmp_path),
        lambda: run_script([*plotted, "--hsv-jitter", "device", "--workers", "2", "--name", "device"], cwd=tmp_path),
        lambda: torchrun([*common, "--hsv-jitter", "device", "--sync-bn", "--name", "two"], cwd=tmp_path),
    )
    for proc in (loader, device, two):
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_last(tmp_path, "loader"), load_last(tmp_path, "device")
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    assert_same_trajectory(a, load_last(tmp_path, "two"))
    runs = tmp_path / "runs"
    for name in ("train_batch0.jpg", "train_batch1.jpg"):
        assert (runs / "loader" / name).read_bytes() == (runs / "device" / name).read_bytes(), name
