"""The GPU's one-rank --sync-bn launch (tests/gpu), on the CPU: a gloo group of one, our CpuSyncBatchNorm.

At world size 1 both synchronised BatchNorms run as plain BatchNorm; what this checks on the CPU is
the launch, the update count and the checkpoint, with the same code the GPU test runs (float32 or, on
a CPU with native bfloat16, bfloat16 autocast: no GradScaler either way).
"""

from __future__ import annotations

import pytest

from tests.gpu.test_cuda import one_rank_sync_bn_run


@pytest.mark.dist
def test_one_rank_torchrun_with_sync_bn_trains_and_saves_on_the_cpu(tmp_path, tiny_shapes):
    figures: dict[str, object] = {}
    one_rank_sync_bn_run(tmp_path, tiny_shapes, "cpu", figures.__setitem__, "--noplots")  # plots: 14 s here
    assert figures == {"scheduled_updates": 3, "applied_updates": 3, "skipped_updates": 0, "ema_updates": 3}
