"""The CUDA paths: AMP training, torch's SyncBatchNorm, NCCL DDP, DataParallel, half-precision inference.

Skipped without a CUDA GPU (the two-GPU tests without two). Run them where there is one:
``pytest -m gpu tests/gpu``. Each test is a short run on the tiny built-in data.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, free_port, run_script

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def train_args(data, tmp_path, name: str, *extra: str) -> list[str]:
    return [
        str(ROOT / "train.py"),
        "--data",
        str(data),
        "--cfg",
        "yolov5n.yaml",
        "--weights",
        "",
        "--img",
        "128",
        "--batch",
        "8",
        "--epochs",
        "2",
        "--workers",
        "2",
        "--project",
        str(tmp_path / "runs"),
        "--name",
        name,
        *extra,
    ]


def last_checkpoint(tmp_path, name: str) -> dict:
    return torch.load(tmp_path / "runs" / name / "weights" / "last.pt", weights_only=True)


def test_cuda_training_uses_amp_and_saves_the_scaler(tmp_path, tiny_shapes):
    # AdamW, because it counts the steps it really took in its state (SGD keeps no count).
    args = train_args(tiny_shapes, tmp_path, "amp", "--device", "0", "--optimizer", "AdamW")
    proc = run_script(args, cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = last_checkpoint(tmp_path, "amp")
    scaler = ckpt["scaler"]
    assert scaler and scaler["scale"] > 0  # an enabled GradScaler (a disabled one saves {}): float16 autocast ran
    # The scale is still a positive number when every step overflowed and was skipped, so count the
    # steps the optimiser really took: AdamW's step count leaves out the updates the scaler skipped
    # (a for-loop optimiser is not called for them; the fused one we use takes found_inf back off).
    steps = {int(state["step"]) for state in ckpt["optimizer"]["state"].values()}
    assert len(steps) == 1 and min(steps) >= 1, steps
    # Each update the scaler skipped halved its scale from 2**16 (it grows only after 2000 good steps).
    # The EMA follows the scaler's skips too, so its update count lies between the real steps and the
    # real steps plus the halvings (a skip for a non-finite loss also halves it, but the EMA skips that).
    skipped = round(math.log2(2.0**16 / scaler["scale"]))
    assert 0 <= skipped and min(steps) + skipped >= ckpt["updates"] >= min(steps), (steps, skipped, ckpt["updates"])
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert "mAP50" in proc.stdout + proc.stderr


# Two ranks on the one GPU, joined by gloo (NCCL refuses two ranks on one device; gloo moves CUDA
# tensors through the host). torch's SyncBatchNorm falls back to plain BatchNorm at world size 1, so
# two ranks are needed for its CUDA path (batch_norm_stats, all_gather, gather_stats_with_counts,
# batch_norm_elemt, and the backward all_reduce) to run at all.
CUDA_SYNCBN_PROBE = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), sys.argv[1]
    device = torch.device("cuda", 0)
    torch.manual_seed(1)
    data = torch.randn(8, 4, 6, 6) * torch.linspace(0.5, 4, 8).view(8, 1, 1, 1) + 1
    data, weights = data.to(device), torch.randn(8, 4, 6, 6).to(device)  # the loss is sum(bn(x) * weights)
    lo, hi = (0, 3) if rank == 0 else (3, 8)  # uneven shards: 3 and 5 samples

    def bn(cls):
        torch.manual_seed(2)
        m = cls(4, momentum=0.3).to(device)
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
        return m

    sync = bn(nn.SyncBatchNorm)
    x = data[lo:hi].clone().requires_grad_()
    y = sync(x)
    (y * weights[lo:hi]).sum().backward()
    grads = torch.cat([sync.weight.grad, sync.bias.grad])
    dist.all_reduce(grads)  # each rank holds its shard's share; DDP would sum them the same way
    ref = bn(nn.BatchNorm2d)
    full = data.clone().requires_grad_()
    want = ref(full)
    (want * weights).sum().backward()
    diff = lambda a, b: (a - b).abs().max().item()
    report = {
        "output": diff(y, want[lo:hi]),
        "input_grad": diff(x.grad, full.grad[lo:hi]),
        "weight_bias_grad": diff(grads, torch.cat([ref.weight.grad, ref.bias.grad])),
        "running_mean": diff(sync.running_mean, ref.running_mean),
        "running_var": diff(sync.running_var, ref.running_var),
        # What plain BatchNorm on this shard alone gives: the gap the comparison must be able to see.
        "unsynced": diff(bn(nn.BatchNorm2d)(data[lo:hi]), want[lo:hi]),
        "keys": list(sync.state_dict()) == list(ref.state_dict()),
    }
    json.dump(report, open(os.path.join(out, f"rank{rank}.json"), "w"))
    torch.save({k: v.cpu() for k, v in sync.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_torch_syncbn_on_cuda_equals_full_batch_batchnorm(tmp_path):
    """torch's SyncBatchNorm (what --sync-bn uses on CUDA), two ranks with uneven shards: outputs, input
    and parameter gradients and running statistics are full-batch BatchNorm2d's, and its state dict
    loads into our CPU synchronised BatchNorm (checkpoints move between them)."""
    from torch import nn

    from yolodist.dist import syncbn

    probe, out = tmp_path / "probe.py", tmp_path / "out"
    probe.write_text(CUDA_SYNCBN_PROBE)
    out.mkdir()
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    proc = run_script([*launch, "--master_port", str(free_port()), str(probe), str(out)], cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((out / f"rank{rank}.json").read_text())
        assert report.pop("keys"), report
        assert report.pop("unsynced") > 1e-2, report  # shard statistics differ visibly from the batch's
        assert max(report.values()) < 1e-4, report  # float32, values of order 1-10
        ours = syncbn.convert(nn.Sequential(nn.BatchNorm2d(4)))
        ours.load_state_dict({f"0.{k}": v for k, v in torch.load(out / f"rank{rank}.pt").items()}, strict=True)


ALL_ROW = re.compile(r"^\s+all\s+\d+\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.MULTILINE)


def metrics(proc) -> list[float]:
    """P, R, mAP50 and mAP50-95 from val.py's "all" row."""
    found = ALL_ROW.findall(proc.stdout + proc.stderr)
    assert len(found) == 1, proc.stdout[-2000:]
    return [float(v) for v in found[0]]


def val_images(data: Path, size: int) -> torch.Tensor:
    """The val images of the tiny set, resized to ``size`` square, as a 0-1 float RGB batch."""
    import cv2
    import numpy as np

    files = sorted((data.parent / "images" / "val").iterdir())
    imgs = [cv2.resize(cv2.imread(str(f))[..., ::-1], (size, size)) for f in files]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def calibrated_checkpoint(tmp_path_factory, tiny_shapes) -> Path:
    """An untrained YOLOv5n whose BatchNorm statistics were measured on the tiny val images.

    With a fresh model's statistics (mean 0, variance 1) the signal fades layer by layer and the
    predictions hardly depend on the image (measured: 2e-4 px between two different images, less than
    float16 changes them), so a half-precision path that mangled its input would still agree with
    float32. Measured statistics keep the activations at unit scale: another image then moves the
    predictions by 6 px and 0.026 in score on average. Objectness is raised so that val.py has boxes to score.
    """
    import yaml
    from torch import nn

    from tests.conftest import write_checkpoint

    names = yaml.safe_load(tiny_shapes.read_text())["names"]
    names = list(names.values()) if isinstance(names, dict) else list(names)
    imgs = val_images(tiny_shapes, 128)

    def calibrate(model: nn.Module) -> None:
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 3.0
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
        model.train()
        model(imgs)
        model.eval()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    return write_checkpoint(tmp_path_factory.mktemp("weights") / "calibrated.pt", names, edit=calibrate)


def mean_differences(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Mean absolute difference of decoded predictions: (boxes in px, objectness and class scores)."""
    assert got.shape == want.shape and torch.isfinite(got).all()
    diff = (got - want).abs()
    return diff[..., :4].mean().item(), diff[..., 4:].mean().item()


def test_half_precision_val_and_export_on_cuda(tmp_path, tiny_shapes, calibrated_checkpoint, monkeypatch):
    from yolodist.infer.backend import load_backend

    weights = tmp_path / "tiny.pt"
    weights.write_bytes(calibrated_checkpoint.read_bytes())
    val = [str(ROOT / "val.py"), "--data", str(tiny_shapes), "--img", "128", "--batch", "8", "--device", "0"]
    full = run_script([*val, "--weights", str(weights)], cwd=tmp_path)
    half = run_script([*val, "--weights", str(weights), "--half"], cwd=tmp_path)
    assert full.returncode == 0 and half.returncode == 0, full.stderr[-2000:] + half.stderr[-2000:]
    args = ["--weights", str(weights), "--include", "torchscript", "onnx", "--img", "128", "--device", "0"]
    proc = run_script([str(ROOT / "export.py"), *args, "--half"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripted = run_script([*val, "--weights", str(tmp_path / "tiny.torchscript"), "--half"], cwd=tmp_path)
    assert scripted.returncode == 0, scripted.stderr[-3000:]
    # mAP50 and mAP50-95 agree with float32 (P and R, read at the best-F1 threshold, may jump). An
    # untrained model scores near 0, so the predictions themselves are compared below.
    for other in (half, scripted):
        assert max(abs(a - b) for a, b in zip(metrics(other)[2:], metrics(full)[2:], strict=True)) <= 0.005
    # The float32 reference without TF32 convolutions, which round as coarsely as float16 does.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    imgs = val_images(tiny_shapes, 128)
    with torch.no_grad():
        reference = load_backend(weights, "cuda:0")
        want = reference(imgs)
        # What the comparison can see: other images (each one's neighbour) move the predictions a lot.
        box, score = mean_differences(reference(imgs.roll(1, 0)), want)
        assert box > 2.0 and score > 0.01, (box, score)
        for path in (weights, tmp_path / "tiny.torchscript"):
            backend = load_backend(path, "cuda:0", half=True)
            assert backend.fp16, path  # it really runs in float16
            # Measured with float16 on the CPU: 0.12 px and 0.0004 (against 6 px and 0.026 for other images).
            box, score = mean_differences(backend(imgs), want)
            assert box < 1.0 and score < 0.004, (path.name, box, score)


@two_gpus
def test_nccl_ddp_with_sync_bn_on_two_gpus(tmp_path, tiny_shapes):
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    args = train_args(tiny_shapes, tmp_path, "nccl", "--device", "0,1", "--sync-bn")
    proc = run_script([*launch, *args], cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Using SyncBatchNorm()" in out and out.count("Starting training") == 1
    assert "model.0.bn.running_mean" in last_checkpoint(tmp_path, "nccl")["model"]


@two_gpus
def test_dataparallel_warns_with_the_torchrun_command(tmp_path, tiny_shapes):
    proc = run_script(train_args(tiny_shapes, tmp_path, "dp", "--device", "0,1"), cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run --nproc_per_node 2" in proc.stdout + proc.stderr
    assert (tmp_path / "runs" / "dp" / "weights" / "last.pt").is_file()
