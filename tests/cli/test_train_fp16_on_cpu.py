"""The GPU's AMP training check, run on the CPU with float16 autocast forced.

The CLI allows ``--amp fp16`` only on CUDA; here the autocast choice is patched to float16, so the
same GradScaler (enabled, initial scale 2**16), the same initialisation and the same short run as
tests/gpu's AMP training test go through the CPU's float16 kernels. It checks the count the GPU test
relies on (every scheduled update applied, read from AdamW's step count), and shows beforehand
whether this run's first updates overflow at the initial scale.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.conftest import ROOT, run_script
from tests.gpu import probes

FLOAT16_TRAIN = textwrap.dedent(
    """
    import sys
    import torch
    from yolodist.engine import precision
    precision.autocast_dtype = lambda mode, device, deterministic=False: torch.float16
    from yolodist.cli.train import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.timeout(300)
def test_float16_training_on_the_cpu_applies_every_scheduled_update(tmp_path, tiny_shapes):
    args = ["--data", str(tiny_shapes), "--cfg", "yolov5n.yaml", "--weights", "", "--img", "128", "--batch", "8"]
    args += ["--epochs", "2", "--workers", "0", "--device", "cpu", "--optimizer", "AdamW"]
    args += ["--project", str(tmp_path / "runs"), "--name", "fp16", "--noplots"]
    proc = run_script(["-c", FLOAT16_TRAIN, *args], cwd=ROOT, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step: float16 autocast" in proc.stdout + proc.stderr
    ckpt = torch.load(tmp_path / "runs" / "fp16" / "weights" / "last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # an enabled GradScaler
    counts = probes.update_counts(proc.stdout + proc.stderr, ckpt)
    # 16 images, batch 8: 2 batches an epoch; warm-up (half the run) then an update at each epoch's end
    assert counts == {"scheduled": 3, "applied": 3, "skipped": 0, "ema": 3}, counts
