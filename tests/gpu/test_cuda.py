"""The CUDA paths: AMP training, torch's SyncBatchNorm, NCCL DDP, DataParallel, half-precision inference.

Skipped without a CUDA GPU (the two-GPU tests without two). Run them where there is one:
``pytest -m gpu tests/gpu``, or ``bash bench/gpu_check.sh`` for them and the throughput bench in one
table. Each test is a short run on the tiny built-in data, and records what it measured with
``record_property`` (the table's figures). What the comparisons compute lives in probes.py, which
tests/unit/test_gpu_probes.py runs on the CPU.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, free_port, run_script, val_images
from tests.gpu import probes

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


def record(record_property, figures: dict) -> None:
    """Figures for bench/gpu_table.py, recorded before the assertions so that a failure shows them too."""
    for name, value in figures.items():
        record_property(name, value)


def class_count(data: Path) -> int:
    import yaml

    return len(yaml.safe_load(data.read_text())["names"])


def check_every_update_applied(proc, ckpt: dict, record_property) -> None:
    """Zero updates skipped: the optimiser really stepped as often as the run scheduled, and so did the EMA.

    The runs use AdamW because it counts the steps it really took (SGD keeps no count); the fused
    AdamW takes the increment back for an update the GradScaler skipped (found_inf).
    """
    counts = probes.update_counts(proc.stdout + proc.stderr, ckpt)
    record(record_property, {f"{k}_updates": v for k, v in counts.items()})
    # A skip at the first update(s) means float16 gradients overflowed at the scaler's initial 2**16
    # (each skip halves the scale): measured near the limit on the CPU (probes.py, seeds 2, 3, 6).
    scale = (ckpt.get("scaler") or {}).get("scale")
    assert counts["skipped"] == 0, f"{counts}: updates skipped, GradScaler scale now {scale}"
    assert counts["ema"] == counts["scheduled"], counts  # no non-finite loss either


def test_cuda_training_uses_amp_and_skips_no_update(tmp_path, tiny_shapes, record_property):
    args = train_args(tiny_shapes, tmp_path, "amp", "--device", "0", "--optimizer", "AdamW")
    proc = run_script(args, cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step: float16 autocast" in proc.stdout + proc.stderr
    ckpt = last_checkpoint(tmp_path, "amp")
    scaler = ckpt["scaler"]
    assert scaler and scaler["scale"] > 0  # an enabled GradScaler (a disabled one saves {}): float16 autocast ran
    check_every_update_applied(proc, ckpt, record_property)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert "mAP50" in proc.stdout + proc.stderr


def test_amp_float16_step_matches_float32_on_one_batch(tiny_shapes, record_property):
    """The trainer's step under float16 autocast against float32 (TF32 off) on the same batch and weights:
    loss terms, every gradient, each parameter's gradient; tolerances and their measurement in probes.py."""
    from yolodist.models import Model

    torch.manual_seed(probes.AMP_SEED)
    model = Model("yolov5n.yaml", nc=class_count(tiny_shapes)).to("cuda:0")
    batch = probes.shapes_batch(tiny_shapes, "train", 0, 8, 128)
    figures = probes.amp_figures(model, batch, probes.shapes_batch(tiny_shapes, "train", 8, 8, 128))
    record(record_property, figures.as_dict())
    probes.check_amp(figures)


def test_hsv_jitter_on_cuda_is_the_loaders(tiny_shapes, record_property):
    """--hsv-jitter device (the default on CUDA): the training batch jittered on the GPU equals the one the
    loader jitters on the CPU, bit for bit; the time it takes on the GPU for a 16 x 640 px batch."""
    import time

    import numpy as np

    from yolodist.augment.color import hsv_table
    from yolodist.augment.color_batch import hsv_batch
    from yolodist.config.schema import Hyp
    from yolodist.data.dataset import YoloDataset
    from yolodist.data.loader import collate
    from yolodist.data.spec import load_data_spec

    spec = load_data_spec(tiny_shapes)
    sets = {d: YoloDataset(spec.train, 128, augment=True, hyp=Hyp(), seed=2, defer_hsv=d) for d in (False, True)}
    keys = [(e, i) for e in range(3) for i in range(len(sets[True]))]
    loader, deferred = (collate([sets[d][k] for k in keys]) for d in (False, True))
    started = time.perf_counter()
    on_gpu = hsv_batch(deferred.imgs.to("cuda:0"), deferred.hsv.to("cuda:0")).cpu()  # also builds the tables
    build_s = time.perf_counter() - started
    imgs = torch.randint(0, 256, (16, 3, 640, 640), dtype=torch.uint8, device="cuda:0")
    imgs = imgs.contiguous(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    tables = torch.from_numpy(np.stack([hsv_table(rng, 0.015, 0.7, 0.4) for _ in range(16)])).to("cuda:0")
    times = []
    for _ in range(20):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        hsv_batch(imgs, tables)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    mismatched = int((on_gpu != loader.imgs).sum())
    figures = {"hsv_tables_s": build_s, "hsv_batch16x640_ms": 1e3 * sorted(times)[10], "mismatched": mismatched}
    record(record_property, figures)
    assert mismatched == 0


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


def test_torch_syncbn_on_cuda_equals_full_batch_batchnorm(tmp_path, record_property):
    """torch's SyncBatchNorm (what --sync-bn uses on CUDA), two ranks with uneven shards: outputs, input
    and parameter gradients and running statistics are full-batch BatchNorm2d's, and its state dict
    loads into our CPU synchronised BatchNorm (checkpoints move between them)."""
    from torch import nn

    from yolodist.distributed import syncbn

    probe, out = tmp_path / "probe.py", tmp_path / "out"
    probe.write_text(CUDA_SYNCBN_PROBE)
    out.mkdir()
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    proc = run_script([*launch, "--master_port", str(free_port()), str(probe), str(out)], cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    diffs = [v for r in reports for k, v in r.items() if k not in ("keys", "unsynced")]
    record(record_property, {"max_diff": max(diffs), "unsynced": min(r["unsynced"] for r in reports)})
    for rank, report in enumerate(reports):
        assert report.pop("keys"), report
        assert report.pop("unsynced") > 1e-2, report  # shard statistics differ visibly from the batch's
        assert max(report.values()) < 1e-4, report  # float32, values of order 1-10
        ours = syncbn.convert(nn.Sequential(nn.BatchNorm2d(4)))
        ours.load_state_dict({f"0.{k}": v for k, v in torch.load(out / f"rank{rank}.pt").items()}, strict=True)


# tests/unit/test_gpu_probes.py swaps in the CPU and emulated kernels, to dry-run the test below.
KERNEL_DEVICE = torch.device("cuda", 0)


def test_torch_syncbn_kernels_on_uneven_shards_match_ours_and_batchnorm(record_property):
    """torch's CUDA SyncBatchNorm kernels, fed three simulated ranks of 1, 2 and 5 samples in one
    process: the global mean and variance they gather equal our CpuSyncBatchNorm's combination and the
    float64 statistics of the whole batch; their normalised output equals ours and BatchNorm2d's on
    the whole batch; their running statistics equal BatchNorm2d's. Tolerances in probes.py."""
    from torch import nn

    from yolodist.distributed import syncbn

    device, eps, momentum = KERNEL_DEVICE, probes.SYNCBN_EPS, probes.SYNCBN_MOMENTUM
    shards = probes.uneven_shards()
    full = torch.cat(shards)
    want = probes.reference_stats(shards)
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(4, eps=eps, momentum=momentum).to(device)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    with probes.full_float32():
        stats = [probes.kernel_shard_stats(shard.to(device), eps) for shard in shards]
        means, invstds = torch.stack([m for m, _ in stats]), torch.stack([i for _, i in stats])
        counts = torch.tensor([float(s.numel() // s.shape[1]) for s in shards], device=device)
        running = (torch.zeros(4, device=device), torch.ones(4, device=device))
        mean, invstd = probes.kernel_gather(full.to(device), means, invstds, counts, running, momentum, eps)
        torch_out = probes.kernel_normalise(full.to(device), bn.weight, bn.bias, mean, invstd, eps)
        bn_out = bn(full.to(device))
    torch_var = probes.variance_from_invstd(invstd, eps)
    our_mean, our_var, total = probes.our_stats(shards)
    our_out = syncbn.normalise(full, our_mean, our_var, eps, bn.weight.detach().cpu(), bn.bias.detach().cpu())
    mean_err, var_err = probes.scaled_errors(mean, torch_var, want)
    figures = {
        "torch_mean_err": mean_err,
        "torch_var_err": var_err,
        "ours_vs_torch": max(probes.scaled_errors(our_mean, our_var, (mean.double().cpu(), torch_var.cpu()))),
        "out_vs_bn": probes.max_abs(torch_out, bn_out),
        "out_vs_ours": probes.max_abs(torch_out, our_out),
        "running_vs_bn": max(probes.max_abs(running[0], bn.running_mean), probes.max_abs(running[1], bn.running_var)),
        "unsynced_gap": probes.unsynced_gap(shards),
    }
    record(record_property, figures)
    assert total == counts.sum().item()
    assert figures["unsynced_gap"] > 1e4 * probes.SYNCBN_STATS_TOL, figures  # the mistakes would show
    stats_figures = ("torch_mean_err", "torch_var_err", "ours_vs_torch", "running_vs_bn")
    assert max(figures[k] for k in stats_figures) < probes.SYNCBN_STATS_TOL, figures
    assert max(figures["out_vs_bn"], figures["out_vs_ours"]) < probes.SYNCBN_OUTPUT_TOL, figures


def one_rank_sync_bn_run(
    tmp_path: Path, data: Path, device: str, record_property, *extra: str, env: dict | None = None
) -> str:
    """torchrun, one process, --sync-bn, AdamW: it must train, apply every scheduled update and save a
    checkpoint that our Model loads (BatchNorm2d's keys). Returns the log. The CPU suite runs it with
    --device cpu (tests/cli/test_one_rank_sync_bn.py)."""
    from yolodist.models import Model

    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1"]
    args = train_args(data, tmp_path, "one", "--device", device, "--sync-bn", "--optimizer", "AdamW", *extra)
    proc = run_script([*launch, "--master_port", str(free_port()), *args], cwd=tmp_path, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Using SyncBatchNorm()" in out and "1 process(es) x 8 images" in out, out[-3000:]
    ckpt = last_checkpoint(tmp_path, "one")
    check_every_update_applied(proc, ckpt, record_property)
    model = Model("yolov5n.yaml", nc=class_count(data))
    model.load_state_dict(ckpt["model"], strict=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    return out


def test_one_rank_nccl_launch_with_sync_bn_trains_and_saves(tmp_path, tiny_shapes, record_property):
    """One GPU under torchrun: an NCCL group of one, torch's SyncBatchNorm (which runs as plain BatchNorm
    at world size 1, torch's own fallback), float16 autocast."""
    # NCCL logs its communicator's set-up: the proof that the group is NCCL's.
    out = one_rank_sync_bn_run(tmp_path, tiny_shapes, "0", record_property, env={"NCCL_DEBUG": "INFO"})
    assert "NCCL INFO" in out and "step: float16 autocast" in out, out[-3000:]


ALL_ROW = re.compile(r"^\s+all\s+\d+\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.MULTILINE)


def metrics(proc) -> list[float]:
    """P, R, mAP50 and mAP50-95 from val.py's "all" row."""
    found = ALL_ROW.findall(proc.stdout + proc.stderr)
    assert len(found) == 1, proc.stdout[-2000:]
    return [float(v) for v in found[0]]


def mean_differences(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Mean absolute difference of decoded predictions: (boxes in px, objectness and class scores)."""
    assert got.shape == want.shape and torch.isfinite(got).all()
    diff = (got - want).abs()
    return diff[..., :4].mean().item(), diff[..., 4:].mean().item()


def test_half_precision_val_and_export_on_cuda(tmp_path, tiny_shapes, calibrated_checkpoint, record_property):
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
    map_diffs = {
        name: max(abs(a - b) for a, b in zip(metrics(other)[2:], metrics(full)[2:], strict=True))
        for name, other in (("half_map_diff", half), ("torchscript_map_diff", scripted))
    }
    record(record_property, map_diffs)
    assert max(map_diffs.values()) <= 0.005, map_diffs
    imgs = val_images(tiny_shapes, 128)
    want = float32_reference(weights, imgs)
    with torch.no_grad():
        for path in (weights, tmp_path / "tiny.torchscript"):
            backend = load_backend(path, "cuda:0", half=True)
            assert backend.fp16, path  # it really runs in float16
            box, score = mean_differences(backend(imgs), want)
            record(record_property, {f"{path.suffix[1:]}_box_px": box, f"{path.suffix[1:]}_score": score})
            assert box < HALF_BOX_PX and score < HALF_SCORE, (path.name, box, score)


# float16 against float32, mean over all predictions. Measured with float16 on the CPU: 0.12 px and
# 0.0004, against 6 px and 0.026 for other images (float32_reference checks that gap each time).
HALF_BOX_PX, HALF_SCORE = 1.0, 0.004
# float32 ONNX on onnxruntime's CUDA provider against float32 PyTorch. Measured on the CPU (onnxruntime's
# CPU provider against PyTorch): 8e-5 px and 3e-7, largest score difference 4e-5. 0.01 px and 2e-5
# are 12 and 20 times below float16's differences (TF32, with float16's 10-bit significand, would
# land near those) and over 60 times above float32's, room for cuDNN's other algorithms.
ONNX32_BOX_PX, ONNX32_SCORE, ONNX32_SCORE_MAX = 0.01, 2e-5, 1e-3


def float32_reference(weights: Path, imgs: torch.Tensor) -> torch.Tensor:
    """The checkpoint's float32 predictions on CUDA without TF32 (which rounds as coarsely as float16),
    after checking that other images (each one's neighbour) move them far more than any tolerance here."""
    from yolodist.infer.backend import load_backend

    with probes.full_float32(), torch.no_grad():
        reference = load_backend(weights, "cuda:0")
        want = reference(imgs)
        box, score = mean_differences(reference(imgs.roll(1, 0)), want)
    assert box > 2.0 and score > 0.01, (box, score)
    return want


def export(weights: Path, *extra: str) -> Path:
    args = ["--weights", str(weights), "--include", "onnx", "--img", "128", "--device", "0", *extra]
    proc = run_script([str(ROOT / "export.py"), *args], cwd=weights.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return weights.with_suffix(".onnx")


def test_onnx_export_on_onnxruntime_cuda_matches_float32(tmp_path, tiny_shapes, calibrated_checkpoint, record_property):
    """The exported ONNX files on onnxruntime's CUDA provider: float32 (TF32 off) against float32 PyTorch
    within float32's tolerance; float16 (--half) and float32 through our OnnxBackend (onnxruntime's
    defaults, TF32 allowed) within float16's."""
    import numpy as np

    ort = pytest.importorskip("onnxruntime")
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider ({', '.join(providers)})")
    from yolodist.infer.backend import load_backend

    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp16").mkdir()
    for folder in ("fp32", "fp16"):
        (tmp_path / folder / "tiny.pt").write_bytes(calibrated_checkpoint.read_bytes())
    onnx32, onnx16 = export(tmp_path / "fp32" / "tiny.pt"), export(tmp_path / "fp16" / "tiny.pt", "--half")
    imgs = val_images(tiny_shapes, 128)
    want = float32_reference(tmp_path / "fp32" / "tiny.pt", imgs)
    cuda = ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})
    session = ort.InferenceSession(str(onnx32), providers=[cuda, "CPUExecutionProvider"])
    # onnxruntime falls back to the CPU when its CUDA libraries do not load: make sure it did not.
    assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()
    name = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {name: img[None]})[0] for img in imgs.numpy()])  # exported for batch 1
    got = torch.from_numpy(got).to(want.device)
    box, score = mean_differences(got, want)
    score_max = (got - want)[..., 4:].abs().max().item()
    record(record_property, {"onnx32_box_px": box, "onnx32_score": score, "onnx32_score_max": score_max})
    assert box < ONNX32_BOX_PX and score < ONNX32_SCORE and score_max < ONNX32_SCORE_MAX, (box, score, score_max)
    for path, label in ((onnx16, "onnx16"), (onnx32, "onnx32_backend")):
        backend = load_backend(path, "cuda:0")
        assert backend.session.get_providers()[0] == "CUDAExecutionProvider", backend.session.get_providers()
        assert backend.fp16 == (path is onnx16)
        box, score = mean_differences(backend(imgs), want)
        record(record_property, {f"{label}_box_px": box, f"{label}_score": score})
        assert box < HALF_BOX_PX and score < HALF_SCORE, (label, box, score)


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
