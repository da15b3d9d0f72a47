"""Accuracy against upstream YOLOv5 7.0 at identical settings, both runs' best.pt scored by one validator.

    python bench/accuracy.py [--settings 320 192] [--seeds 0 1] [--trainers yolodist upstream full-decode fp32]
                             [--work DIR] [--out JSON]

For each setting and seed, yolodist's ``train.py`` and upstream's ``yolov5 train`` (PyPI package
``yolov5==7.0.14``, installed by this script into ``WORK/upstream-venv`` beside the same torch) train
YOLOv5n from scratch on the same bytes of the built-in shapes data (generated once per setting, one
copy per trainer so that their label caches never meet), with upstream's defaults: SGD,
``hyp.scratch-low.yaml``, nominal batch 64, AutoAnchor on. Both ``best.pt`` are then scored by
yolodist's ``val.py`` (which reads upstream's checkpoints), and upstream's own final validation is
read from its ``results.csv`` for comparison. A finished run is kept and reused, so seeds can be
added later and an interrupted bench continues where it stopped.

Settings (``--settings``):

- ``320``: 512 training / 128 validation images of 320 px, 30 epochs, batch 16, 2 workers, 1 thread.
- ``320from640``: the same training at 320 px from images of 640 px, where train.py's default
  ``--scaled-decode`` lets the JPEG decoder halve them (trainer ``full-decode``: yolodist with
  ``--no-scaled-decode``, the full decode and resize upstream does).
- ``192``: 1,024 / 256 images of 192 px, 14 epochs, batch 16, 1 worker, 1 thread (docs/training.md).
- ``smoke``: 16 / 8 images of 64 px, 1 epoch: checks that the bench runs, not accuracy.

Trainers (``--trainers``): ``yolodist`` (train.py's defaults), ``upstream``, ``full-decode`` (above) and
``fp32`` (yolodist with ``--amp off``: float32 where ``--amp auto`` would pick bfloat16, on CPUs
that compute it natively).

Prints a table per setting and seed and writes everything, per-epoch curves included, to
bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UPSTREAM = "yolov5==7.0.14"
# What upstream 7.0 needs beside torch 2.14 (newer numpy/pandas/OpenCV/setuptools break it).
UPSTREAM_PINS = ["torch==2.14.1", "torchvision==0.29.1", "numpy<2", "pandas<2.3", "opencv-python-headless<4.10"]
UPSTREAM_PINS += ["setuptools<81"]
TRAINERS = ("yolodist", "upstream", "full-decode", "fp32")
TRAINER_FLAGS = {"yolodist": [], "full-decode": ["--no-scaled-decode"], "fp32": ["--amp", "off"]}  # yolodist's
DATA_SIDES = ("yolodist", "upstream")  # one copy of the data per code base
ALL_ROW = re.compile(r"^\s*all\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Setting:
    img: int
    epochs: int
    n_train: int
    n_val: int
    workers: int
    threads: int  # OMP_NUM_THREADS for both trainers: one each, so that --jobs 2 runs fill 2 cores exactly
    batch: int = 16
    source: int | None = None  # the generated images' size (None: img)


SETTINGS = {
    "320": Setting(img=320, epochs=30, n_train=512, n_val=128, workers=2, threads=1),
    "320from640": Setting(img=320, epochs=30, n_train=512, n_val=128, workers=2, threads=1, source=640),
    "192": Setting(img=192, epochs=14, n_train=1024, n_val=256, workers=1, threads=1),
    "smoke": Setting(img=64, epochs=1, n_train=16, n_val=8, workers=0, threads=1, batch=8),
}


def upstream_python(work: Path) -> Path:
    """The upstream venv's python, created on first use (torch comes from the same pins as ours)."""
    venv = work / "upstream-venv"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.is_file():
        print(f"installing {UPSTREAM} into {venv} (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, UPSTREAM, *UPSTREAM_PINS], check=True)
        marker.touch()
    return python


def upstream_env(work: Path, threads: int) -> dict[str, str]:
    """Upstream downloads a font on first use; give it a local one so it runs offline."""
    config = work / "upstream-config"
    config.mkdir(parents=True, exist_ok=True)
    font = config / "Arial.ttf"
    if not font.is_file():
        import matplotlib

        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    env = base_env(threads)
    # Upstream 7.0 loads its own pickled checkpoints with torch.load's old default.
    env.update(YOLOV5_CONFIG_DIR=str(config), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    return env


def base_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def datasets(name: str, s: Setting, work: Path) -> dict[str, Path]:
    """One generated dataset per setting, copied once per trainer; returns each trainer's YAML."""
    from yolodist.data.synthetic import ensure_shapes

    base = work / "data" / name
    size = s.source or s.img
    source = ensure_shapes(base / "shapes", n_train=s.n_train, n_val=s.n_val, img_size=size, seed=0).parent
    out = {}
    for trainer in DATA_SIDES:
        root = base / trainer
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.cache"))
            text = (root / "shapes.yaml").read_text().replace(str(source), str(root))
            (root / "shapes.yaml").write_text(text)
            (root / "done").touch()
        out[trainer] = root / "shapes.yaml"
    return out


def side(trainer: str) -> str:
    """Which copy of the data a trainer reads."""
    return "upstream" if trainer == "upstream" else "yolodist"


def train(trainer: str, name: str, s: Setting, seed: int, data: Path, work: Path) -> Path:
    """Train once (or reuse a finished run); returns the run directory."""
    project = work / "runs" / name
    run_dir = project / f"{trainer}-seed{seed}"
    if (run_dir / "finished").is_file():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--img", str(s.img)]
    args += ["--batch", str(s.batch), "--epochs", str(s.epochs), "--workers", str(s.workers), "--seed", str(seed)]
    args += ["--device", "cpu", "--noplots", "--project", str(project), "--name", run_dir.name]
    if trainer in TRAINER_FLAGS:
        cmd, env = [sys.executable, str(ROOT / "train.py"), *args, *TRAINER_FLAGS[trainer]], base_env(s.threads)
    else:
        python = upstream_python(work)
        cmd, env = [str(python), "-m", "yolov5.train", *args], upstream_env(work, s.threads)
    log = work / "logs" / f"{name}-{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"setting {name}, seed {seed}: training {trainer} (log: {log})", flush=True)
    started = time.time()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode or not (run_dir / "weights" / "best.pt").is_file():
        raise SystemExit(f"{trainer} failed (exit {proc.returncode}); see {log}")
    (run_dir / "finished").write_text(f"{time.time() - started:.0f}\n")
    return run_dir


def score(weights: Path, data: Path, s: Setting, work: Path) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 of ``weights`` by yolodist's val.py."""
    cmd = [sys.executable, str(ROOT / "val.py"), "--weights", str(weights), "--data", str(data)]
    cmd += ["--img", str(s.img), "--batch", "32", "--device", "cpu", "--noplots", "--workers", "0"]
    cmd += ["--project", str(work / "val"), "--name", "v", "--exist-ok"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=base_env(None), check=False)
    found = ALL_ROW.findall(proc.stdout + proc.stderr)
    if proc.returncode or not found:
        raise SystemExit(f"val.py failed on {weights}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    p, r, map50, map_ = (float(x) for x in found[-1][2:])
    return {"map50": map50, "map": map_, "precision": p, "recall": r}


def curves(run_dir: Path) -> dict[str, list[float]]:
    """Per-epoch mAP@0.5 and mAP@0.5:0.95 from a run's results.csv (both trainers use upstream's columns)."""
    with (run_dir / "results.csv").open() as fh:
        rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(fh)]
    return {
        "map50": [float(r["metrics/mAP_0.5"]) for r in rows],
        "map": [float(r["metrics/mAP_0.5:0.95"]) for r in rows],
    }


def own_best(c: dict[str, list[float]]) -> dict[str, float]:
    """The trainer's own validation of its best epoch (fitness 0.1 mAP@0.5 + 0.9 mAP@0.5:0.95)."""
    best = max(range(len(c["map"])), key=lambda i: 0.1 * c["map50"][i] + 0.9 * c["map"][i])
    return {"epoch": best, "map50": c["map50"][best], "map": c["map"][best]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["320", "192"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(DATA_SIDES))
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (each uses its setting's threads)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "accuracy", help="data, venv and runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if "upstream" in args.trainers:
        upstream_python(work)  # before any training starts, so that parallel jobs never race to create it
    data = {name: datasets(name, SETTINGS[name], work) for name in args.settings}
    # Both trainers of one (setting, seed) are neighbours in the queue, so they share the machine alike.
    tasks = [(name, seed, t) for name in args.settings for seed in args.seeds for t in args.trainers]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        run_dirs = list(
            pool.map(lambda k: train(k[2], k[0], SETTINGS[k[0]], k[1], data[k[0]][side(k[2])], work), tasks)
        )
    results = []
    for (name, seed, trainer), run_dir in zip(tasks, run_dirs, strict=True):
        s = SETTINGS[name]
        c = curves(run_dir)
        row = {"setting": name, "seed": seed, "trainer": trainer, "run": str(run_dir)}
        row |= {"val_py": score(run_dir / "weights" / "best.pt", data[name]["yolodist"], s, work)}
        row |= {"own_validation": own_best(c), "curves": c}
        row["train_s"] = float((run_dir / "finished").read_text())
        results.append(row)
    report(results, args)


def report(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{'setting':>8} {'seed':>4} {'trainer':>9}  val.py mAP@0.5 / @0.5:0.95   own validation   train s")
    for r in results:
        v, o = r["val_py"], r["own_validation"]
        print(
            f"{r['setting']:>8} {r['seed']:>4} {r['trainer']:>9}  {v['map50']:.3f} / {v['map']:.3f}"
            f"{'':>17}{o['map50']:.3f} / {o['map']:.3f}   {r['train_s']:.0f}"
        )
    for name in dict.fromkeys(r["setting"] for r in results):
        means = {}
        for trainer in args.trainers:
            rows = [r["val_py"] for r in results if r["setting"] == name and r["trainer"] == trainer]
            if rows:
                means[trainer] = (sum(x["map50"] for x in rows) / len(rows), sum(x["map"] for x in rows) / len(rows))
                print(f"{name:>8} mean {trainer:>9}  {means[trainer][0]:.3f} / {means[trainer][1]:.3f}")
    write_results(args.out, {name: vars(SETTINGS[name]) for name in args.settings}, results)


def write_results(path: Path, settings: dict, results: list[dict]) -> None:
    """The bench's JSON: the command that made it, the machine, the settings and the results."""
    out = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "settings": settings,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
