"""Training speed against upstream YOLOv5 7.0 on this machine: training-loop images/s and whole-command seconds.

    python bench/train_speed.py [--models yolov5n yolov5s] [--rounds 2] [--variants ...] [--out JSON]

Each variant trains from scratch on the same bytes of the built-in shapes data (320 px, batch 16,
2 dataloader workers, default threads, validation every epoch as a user's command does), one run
at a time, the variants taking turns (A, B, C, A, B, C, ...) so that a slow spell of the machine
lands on all of them alike. Upstream runs through bench/upstream_timed.py in the virtual
environment bench/accuracy.py creates, which times its batch loop the way yolodist's trainer does
("epoch N: ... images/s"). The first epoch (worker start-up, allocator warm-up) is left out of the
loop figure; the whole-command figure is the wall time of the command, start-up and validation
included. Each figure is the median over rounds, with min and max.

Variants (``--variants``): ``upstream``; ``yolodist`` (its defaults); ``contiguous``
(``--no-channels-last``: the memory-format lever off); ``fp32`` (``--amp off``: the precision lever
off; by default only on CPUs with native bfloat16, where ``--amp auto`` picks bfloat16); ``bf16``
(``--amp bf16``, forced: ask for it by name to see what emulated bfloat16 costs elsewhere).
Results go to bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import accuracy
import torch

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"^epoch (\d+): (\d+) images in ([\d.]+) s \(([\d.]+) images/s\)", re.MULTILINE)
VARIANTS = {
    "upstream": None,
    "yolodist": [],
    "contiguous": ["--no-channels-last"],
    "fp32": ["--amp", "off"],
    "bf16": ["--amp", "bf16"],
}


@dataclass(frozen=True)
class ModelSetting:
    n_train: int
    epochs: int


MODELS = {
    "yolov5n": ModelSetting(n_train=512, epochs=3),
    "yolov5s": ModelSetting(n_train=256, epochs=2),  # four times the work per image
}
BATCH, WORKERS = 16, 2


def command(variant: str, model: str, data: dict[str, Path], work: Path, s: accuracy.Setting) -> tuple[list[str], dict]:
    project = work / "runs"
    args = ["--data", str(data["yolodist" if variant != "upstream" else "upstream"]), "--cfg", f"{model}.yaml"]
    args += ["--weights", "", "--img", str(s.img), "--batch", str(s.batch), "--epochs", str(s.epochs)]
    args += ["--workers", str(s.workers), "--device", "cpu", "--noplots", "--project", str(project)]
    args += ["--name", f"{model}-{variant}", "--exist-ok"]
    if variant == "upstream":
        python = accuracy.upstream_python(work)
        return [str(python), str(ROOT / "bench" / "upstream_timed.py"), *args], accuracy.upstream_env(work, None)
    return [sys.executable, str(ROOT / "train.py"), *args, *VARIANTS[variant]], accuracy.base_env(None)


def run_once(variant: str, model: str, data: dict[str, Path], work: Path, s: accuracy.Setting) -> dict:
    epochs = s.epochs
    cmd, env = command(variant, model, data, work, s)
    log = work / "logs" / f"{model}-{variant}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    rates = {int(m[0]): float(m[3]) for m in RATE.findall(text)}
    if proc.returncode or len(rates) < epochs:
        raise SystemExit(f"{variant} {model} failed (exit {proc.returncode}); see {log}")
    loop = [rates[e] for e in range(1, epochs)]  # epoch 0 starts workers and allocators
    return {"images_per_s": statistics.median(loop), "epoch_images_per_s": loop, "command_s": seconds}


def default_variants() -> list[str]:
    """upstream, yolodist, contiguous; and fp32 where ``--amp auto`` picks bfloat16 (native bfloat16 CPUs)."""
    from yolodist.engine.precision import native_bf16

    native = native_bf16(torch.device("cpu"))
    return ["upstream", "yolodist", "contiguous", *(["fp32"] if native else [])]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=default_variants())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--train-images", type=int, default=None, help="default: 512 (yolov5n), 256 (yolov5s)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 3 (yolov5n), 2 (yolov5s); >= 2")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "train_speed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.json")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.models:
        n_train = args.train_images or MODELS[model].n_train
        epochs = max(args.epochs or MODELS[model].epochs, 2)
        setting = accuracy.Setting(
            img=args.img, epochs=epochs, n_train=n_train, n_val=max(n_train // 4, 8), workers=WORKERS, threads=0
        )
        data = accuracy.datasets(f"{model}-{args.img}-{n_train}", setting, work)
        rounds: dict[str, list[dict]] = {v: [] for v in args.variants}
        for r in range(args.rounds):
            for variant in args.variants:
                res = run_once(variant, model, data, work, setting)
                rounds[variant].append(res)
                print(
                    f"{model} round {r} {variant:>10}: {res['images_per_s']:.1f} images/s in the loop, "
                    f"{res['command_s']:.0f} s the command",
                    flush=True,
                )
        for variant, runs in rounds.items():
            results.append(
                {
                    "model": model,
                    "variant": variant,
                    "images_per_s": summary([x["images_per_s"] for x in runs]),
                    "command_s": summary([x["command_s"] for x in runs]),
                    "rounds": runs,
                }
            )
    report(results, args)


def report(results: list[dict], args: argparse.Namespace) -> None:
    header = "loop images/s median [min, max]   command s median [min, max]   vs upstream"
    print(f"\n{'model':>8} {'variant':>10}  {header}")
    for r in results:
        up = next((x for x in results if x["model"] == r["model"] and x["variant"] == "upstream"), None)
        ratio = f"{r['images_per_s']['median'] / up['images_per_s']['median']:.2f}x" if up else "-"
        i, c = r["images_per_s"], r["command_s"]
        print(
            f"{r['model']:>8} {r['variant']:>10}  {i['median']:6.1f} [{i['min']:.1f}, {i['max']:.1f}]"
            f"{'':>14}{c['median']:6.0f} [{c['min']:.0f}, {c['max']:.0f}]{'':>14}{ratio}"
        )
    settings = {"img": args.img, "batch": BATCH, "workers": WORKERS, "train_images": args.train_images}
    accuracy.write_results(args.out, settings, results)


if __name__ == "__main__":
    main()
