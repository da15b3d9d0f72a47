"""The benchmarks run end to end and write what they printed (figures are not checked here).

The slow layer's (make test-slow): they are tools that time the trainer, whose every path make test
covers on its own, and they cost two minutes of the 2-core suite.
"""

import json

import pytest
import torch

from tests.conftest import ROOT, run_script
from yolodist.engine.precision import native_bf16

pytestmark = pytest.mark.slow


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_ddp_scaling_bench_writes_its_figures(tmp_path, tiny_shapes):
    out = tmp_path / "results" / "scaling.json"
    args = [str(ROOT / "bench" / "ddp_scaling.py"), "--data", str(tiny_shapes), "--img", "64", "--batch", "4"]
    proc = run_script([*args, "--epochs", "1", "--repeats", "1", "--out", str(out)], cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["batch"], r["ranks"]) for r in results] == [(4, 1), (4, 2)]
    assert all(r["rounds"][0]["images"] == 16 for r in results)  # the 16 training images, once
    assert all(r["min_images_per_s"] <= r["images_per_s"] <= r["max_images_per_s"] for r in results)
    assert all(r["images_per_s"] == r["rounds"][0]["images_per_s"] > 0 for r in results)  # one round: its median
    assert results[0]["efficiency"] == 1.0 and results[1]["efficiency"] > 0
    assert "batch 4, 2 rank(s)" in proc.stdout and "scaling efficiency" in proc.stdout


@pytest.mark.timeout(300)
def test_accuracy_bench_trains_scores_and_reuses_runs(tmp_path):
    """The smoke setting with our trainer only (upstream's venv is too big for the test suite)."""
    out = tmp_path / "accuracy.json"
    args = [str(ROOT / "bench" / "accuracy.py"), "--settings", "smoke", "--seeds", "0", "--trainers", "yolodist"]
    args += ["--work", str(tmp_path / "work"), "--out", str(out)]
    proc = run_script(args, cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]
    assert (row["setting"], row["seed"], row["trainer"]) == ("smoke", 0, "yolodist")
    assert len(row["curves"]["map50"]) == 1  # one epoch
    assert 0 <= row["val_py"]["map50"] <= 1 and 0 <= row["val_py"]["map"] <= row["val_py"]["map50"]
    assert "training yolodist" in proc.stdout and "smoke mean  yolodist" in proc.stdout
    # A finished run is reused: the second call trains nothing.
    again = run_script(args, cwd=tmp_path, timeout=280)
    assert again.returncode == 0 and "training yolodist" not in again.stdout


@pytest.mark.timeout(400)
def test_train_speed_bench_times_each_variant(tmp_path):
    """Our trainer with and without channels-last (upstream's venv is too big for the test suite)."""
    out = tmp_path / "speed.json"
    args = [str(ROOT / "bench" / "train_speed.py"), "--models", "yolov5n", "--variants", "yolodist", "contiguous"]
    args += ["--rounds", "1", "--img", "64", "--train-images", "32", "--epochs", "2"]
    args += ["--work", str(tmp_path / "work"), "--out", str(out)]
    proc = run_script(args, cwd=tmp_path, timeout=380)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in results] == ["yolodist", "contiguous"]
    for r in results:
        (run,) = r["rounds"]
        assert len(run["epoch_images_per_s"]) == 1  # epoch 0 left out
        rate = run["images_per_s"]
        assert rate > 0 and r["images_per_s"] == {"median": rate, "min": rate, "max": rate}
        assert r["command_s"]["min"] > 0
    logs = {v: (tmp_path / "work" / "logs" / f"yolov5n-{v}.log").read_text() for v in ("yolodist", "contiguous")}
    assert "channels-last tensors" in logs["yolodist"] and "contiguous (NCHW) tensors" in logs["contiguous"]


@pytest.mark.timeout(240)
def test_input_pipeline_bench_times_loaders_and_measures_training_memory(tmp_path):
    """Our loader with and without the RAM cache, and one process's training memory (no upstream venv here)."""
    out = tmp_path / "pipeline.json"
    args = [str(ROOT / "bench" / "input_pipeline.py"), "--images", "16", "--source-size", "96", "--sizes", "96"]
    args += ["--workers", "0", "--batches", "2", "--rounds", "1", "--no-upstream"]
    args += ["--memory-img", "96", "--memory-ranks", "1", "--memory-rounds", "1"]
    args += ["--work", str(tmp_path / "work"), "--out", str(out)]
    proc = run_script(args, cwd=tmp_path, timeout=220)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    speed = [r for r in results if r["part"] == "speed"]
    assert [(r["img"], r["workers"], r["cache"]) for r in speed] == [(96, 0, None), (96, 0, "ram"), (96, 0, "disk")]
    for r in speed:
        assert r["upstream"] is None and r["ratio"] is None
        (run,) = r["rounds"]["yolodist"]
        assert run["images"] == 32 and run["images_per_s"] > 0  # 2 timed batches of 16
        assert r["yolodist"] == {"median": run["images_per_s"], "min": run["images_per_s"], "max": run["images_per_s"]}
    # --no-scaled-decode is measured beside the default on JPEGs only (a cache holds decoded pixels).
    assert speed[0]["full-decode"]["median"] > 0 and len(speed[0]["rounds"]["full-decode"]) == 1
    assert speed[1]["full-decode"] is None and not speed[1]["rounds"]["full-decode"]
    # So is cv2's JPEG decode, against simplejpeg's (the default).
    assert speed[0]["rounds"]["cv2-decode"][0]["jpeg_decoder"] == "cv2"
    assert speed[0]["rounds"]["yolodist"][0]["jpeg_decoder"] == "simplejpeg"
    assert all(r["cv2-decode"] is None and not r["rounds"]["cv2-decode"] for r in speed[1:])
    assert speed[2]["full-decode"] is None
    # The disk cache: yolodist's one file beside the label cache, kept for the next run.
    (imcache,) = (tmp_path / "work").rglob("*.imcache")
    assert imcache.parent.name == "labels" and imcache.stat().st_size >= 16 * 96 * 72 * 3
    # The jitter in the loader (train.py's CPU default) beside the default (left to the GPU), on every variant.
    assert all(r["hsv-loader"]["median"] > 0 and len(r["rounds"]["hsv-loader"]) == 1 for r in speed)
    assert all(r["rounds"]["yolodist"][0]["hsv_after_batching"] for r in speed)
    assert not any(r["rounds"]["hsv-loader"][0]["hsv_after_batching"] for r in speed)
    assert "--hsv-jitter loader" in proc.stdout
    memory = [r for r in results if r["part"] == "memory"]
    assert [(r["ranks"], r["cache"]) for r in memory] == [(1, None), (1, "ram")]
    assert all(r["peak_pss_mib"] > 50 and r["processes_at_peak"] >= 1 and r["samples"] >= 1 for r in memory)
    assert all(r["mapped_tmpfs_mib"] >= 0 for r in memory)
    summaries = [r for r in results if r["part"] == "memory_summary"]
    assert [(r["ranks"], r["cache"]) for r in summaries] == [(1, None), (1, "ram")]
    assert all(r["peak_pss_mib"]["min"] <= r["peak_pss_mib"]["median"] <= r["peak_pss_mib"]["max"] for r in summaries)
    (size,) = [r for r in results if r["part"] == "memory_cache_size"]
    assert 0 < size["mib"]["train"] <= 16 * 96 * 96 * 3 / 2**20 and size["mib"]["val"] > 0
    assert "images/s median" in proc.stdout and "peak PSS" in proc.stdout


@pytest.mark.timeout(240)
def test_step_probe_times_each_variant_and_profiles(tmp_path):
    out = tmp_path / "step.json"
    args = [str(ROOT / "bench" / "step_probe.py"), "--img", "64", "--batch", "2", "--steps", "1", "--rounds", "1"]
    args += ["--variants", "eager", "fp32", "--profile", "--layers", "--out", str(out)]
    proc = run_script(args, cwd=tmp_path, timeout=220)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in results] == ["eager", "fp32", "layers"]
    # eager is the trainer's --amp auto: bfloat16 only where the CPU computes it natively
    assert results[0]["precision"] == ("bfloat16" if native_bf16(torch.device("cpu")) else "float32")
    assert results[1]["precision"] == "float32"
    layers = results.pop()["convolutions"]
    assert len(layers) == 60 and layers[0]["input"] == [2, 3, 64, 64]  # YOLOv5n's convolutions, the stem first
    assert all(len(r["ms"]) == 4 and r["fastest"] in r["ms"] and min(r["ms"].values()) > 0 for r in layers)
    assert all(len(r["images_per_s"]) == 1 and r["images_per_s"][0] > 0 for r in results)
    (shares,) = results[0]["shares"]
    assert abs(sum(shares.values()) - 1) < 1e-6 and shares["convolution"] > 0
    assert "shares" not in results[1]  # the profile is of the default step only
