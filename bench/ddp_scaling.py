"""Training throughput on 1 vs N processes (CPU/gloo, one thread per process; or CUDA) and the scaling efficiency.

    python bench/ddp_scaling.py [--ranks 1 2] [--batch 16 64] [--img 192] [--epochs 2] [--workers 0]
                                [--repeats 2] [--device cpu|cuda] [--data YAML] [--out JSON]

Each configuration runs ``train.py`` (YOLOv5n from scratch, on the built-in shapes data unless
``--data``) through ``torch.distributed.run`` (one process runs without the launcher) with the same
total batch, so the configurations of one batch do the same work. With ``--device cuda`` rank i
trains on GPU i (NCCL). Throughput is read from the trainer's "epoch N: ... images/s" lines,
skipping the first epoch (warm-up of workers and allocators). The configurations take turns
(1, 2, 1, 2, ...) for ``--repeats`` rounds, so that a slow spell of a shared machine does not land
on one configuration only, and each is reported by the median of its rounds with their min and
max. Results are printed and written to bench/results/ddp_scaling.json.
Efficiency = median throughput(N) / (N x median throughput(1)) at the same total batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"epoch (\d+): (\d+) images in ([\d.]+) s \(([\d.]+) images/s\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(ranks: int, batch: int, args: argparse.Namespace, workdir: Path) -> dict:
    train = [
        str(ROOT / "train.py"),
        "--img",
        str(args.img),
        "--batch",
        str(batch),
        "--epochs",
        str(args.epochs),
        "--noval",
        "--noautoanchor",
        "--workers",
        str(args.workers),
        "--device",
        "cpu" if args.device == "cpu" else ",".join(str(i) for i in range(ranks)),
        "--project",
        str(workdir / "runs"),
        "--name",
        f"r{ranks}b{batch}",
        "--exist-ok",
        "--cfg",
        "yolov5n.yaml",
        "--weights",
        "",
        *(["--data", str(args.data)] if args.data else []),
    ]
    if ranks > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(ranks),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
        ]
    else:
        launch = [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.time()
    proc = subprocess.run(launch + train, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
    epochs = [tuple(float(x) for x in m.groups()) for m in RATE.finditer(proc.stdout + proc.stderr)]
    measured = [e for e in epochs if e[0] > 0] or epochs
    images = sum(e[1] for e in measured)
    seconds = sum(e[2] for e in measured)
    return {
        "ranks": ranks,
        "batch": batch,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "wall_s": time.time() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--img", type=int, default=192)
    # 16: upstream's default; 64: the guide's multi-GPU commands. Each is the total over all ranks.
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--epochs", type=int, default=2)
    # 0: each process loads its own data in its one thread, so N processes use exactly N cores.
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds, alternating; medians are reported")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: rank i on GPU i")
    parser.add_argument("--data", type=Path, default=None, help="dataset YAML (default: the built-in shapes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ddp_scaling.json")
    args = parser.parse_args()
    workdir = args.out.resolve().parent
    workdir.mkdir(parents=True, exist_ok=True)
    configs = [(batch, n) for batch in args.batch for n in args.ranks]
    rounds: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for i in range(args.repeats):
        for batch, n in configs:
            rounds[batch, n].append(run(n, batch, args, workdir))
            rate = rounds[batch, n][-1]["images_per_s"]
            print(f"round {i + 1}: batch {batch}, {n} rank(s): {rate:.1f} images/s", flush=True)
    results = []
    for batch, n in configs:
        rates = [r["images_per_s"] for r in rounds[batch, n]]
        results.append(
            {
                "ranks": n,
                "batch": batch,
                "images_per_s": statistics.median(rates),
                "min_images_per_s": min(rates),
                "max_images_per_s": max(rates),
                "rounds": rounds[batch, n],
            }
        )
    for r in results:
        base = next(b for b in results if b["batch"] == r["batch"] and b["ranks"] == args.ranks[0])
        r["efficiency"] = r["images_per_s"] * base["ranks"] / (r["ranks"] * base["images_per_s"])
        print(
            f"batch {r['batch']}, {r['ranks']} rank(s): {r['images_per_s']:.1f} images/s "
            f"[{r['min_images_per_s']:.1f}, {r['max_images_per_s']:.1f}], scaling efficiency {r['efficiency']:.0%}"
        )
    out = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results,
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
