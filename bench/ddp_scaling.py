"""Training throughput on 1 vs N processes (CPU, gloo, one thread per process) and the scaling efficiency.

    python bench/ddp_scaling.py [--ranks 1 2] [--img 192] [--batch 16] [--epochs 2] [--workers 0]

Each configuration runs ``train.py`` on the built-in shapes data through ``torch.distributed.run``
(one process runs without the launcher) with the same total batch, so every configuration does the
same work. Throughput is read from the trainer's "epoch N: ... images/s" lines, skipping the first
epoch (warm-up of workers and allocators). Results are printed and written to
bench/results/ddp_scaling.json. Efficiency = throughput(N) / (N x throughput(1)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
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


def run(ranks: int, args: argparse.Namespace, workdir: Path) -> dict:
    train = [
        str(ROOT / "train.py"),
        "--img",
        str(args.img),
        "--batch",
        str(args.batch),
        "--epochs",
        str(args.epochs),
        "--noval",
        "--noautoanchor",
        "--workers",
        str(args.workers),
        "--device",
        "cpu",
        "--project",
        str(workdir / "runs"),
        "--name",
        f"r{ranks}",
        "--exist-ok",
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
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "wall_s": time.time() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--img", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    # 0: each process loads its own data in its one thread, so N processes use exactly N cores.
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    workdir = ROOT / "bench" / "results"
    workdir.mkdir(parents=True, exist_ok=True)
    results = [run(n, args, workdir) for n in args.ranks]
    base = results[0]["images_per_s"] / results[0]["ranks"]
    for r in results:
        r["efficiency"] = r["images_per_s"] / (r["ranks"] * base)
        print(f"{r['ranks']} rank(s): {r['images_per_s']:.1f} images/s, scaling efficiency {r['efficiency']:.0%}")
    out = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "settings": vars(args),
        "results": results,
    }
    (workdir / "ddp_scaling.json").write_text(json.dumps(out, indent=2))
    print(f"written to {workdir / 'ddp_scaling.json'}")


if __name__ == "__main__":
    main()
