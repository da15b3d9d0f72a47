"""The CUDA paths: AMP training, torch's SyncBatchNorm, NCCL DDP, DataParallel, half-precision inference.

Skipped without a CUDA GPU (the two-GPU tests without two). Run them where there is one:
``pytest -m gpu tests/gpu``. Each test is a short run on the tiny built-in data.
"""

from __future__ import annotations

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
    proc = run_script(train_args(tiny_shapes, tmp_path, "amp", "--device", "0"), cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = last_checkpoint(tmp_path, "amp")
    assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0  # an enabled GradScaler: float16 autocast ran
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert "mAP50" in proc.stdout + proc.stderr


def test_torch_syncbn_on_cuda_equals_batchnorm_at_world_size_one(tmp_path):
    # torch's SyncBatchNorm is what --sync-bn uses on CUDA; on one rank it must be BatchNorm2d exactly,
    # and its state dict must load into our CPU synchronised BatchNorm (checkpoints move between them).
    from torch import nn

    from yolodist.dist import syncbn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).cuda()
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).cuda()
    )
    sync.load_state_dict(net.state_dict())
    x = torch.randn(8, 3, 16, 16, device="cuda")
    torch.testing.assert_close(sync(x), net(x))
    torch.testing.assert_close(sync[1].running_var, net[1].running_var)
    ours = syncbn.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    ours.load_state_dict({k: v.cpu() for k, v in sync.state_dict().items()}, strict=True)


def test_half_precision_val_and_export_on_cuda(tmp_path, tiny_shapes, tiny_checkpoint):
    val = [str(ROOT / "val.py"), "--data", str(tiny_shapes), "--img", "128", "--batch", "8", "--device", "0"]
    full = run_script([*val, "--weights", str(tiny_checkpoint)], cwd=tmp_path)
    half = run_script([*val, "--weights", str(tiny_checkpoint), "--half"], cwd=tmp_path)
    assert full.returncode == 0 and half.returncode == 0, full.stderr[-2000:] + half.stderr[-2000:]
    exported = tmp_path / "tiny.pt"
    exported.write_bytes(tiny_checkpoint.read_bytes())
    args = ["--weights", str(exported), "--include", "torchscript", "onnx", "--img", "128", "--device", "0"]
    proc = run_script([str(ROOT / "export.py"), *args, "--half"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripted = run_script([*val, "--weights", str(tmp_path / "tiny.torchscript"), "--half"], cwd=tmp_path)
    assert scripted.returncode == 0, scripted.stderr[-3000:]
    assert "all" in scripted.stdout + scripted.stderr


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
