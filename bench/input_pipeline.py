"""Input pipeline against upstream YOLOv5 7.0: training dataloader images/s, and a short training's node memory.

    python bench/input_pipeline.py [--parts speed memory] [--images 256] [--source-size 640]
                                   [--sizes 320 640] [--sources jpeg ram disk] [--workers 2]
                                   [--batches 20] [--rounds 3]
                                   [--memory-ranks 1 2] [--memory-rounds 3] [--no-upstream]
                                   [--work DIR] [--out JSON]

Data: the built-in shapes data, ``--images`` training images of ``--source-size`` px JPEG, generated
once under ``--work`` and copied once per side (bench/accuracy.py's ``datasets``), so both read the
same bytes and their label caches never meet.

Part ``speed``: images/s of the training dataloader (augmentation and mosaic on, hyp.scratch-low,
batch 16, shuffled) as each trainer builds it, measured by bench/loader_rate.py in a fresh process
per measurement, yolodist's with our Python and upstream's with the Python of the virtual
environment bench/accuracy.py creates (``--upstream-venv``; when it is missing only yolodist is
measured, and ``--no-upstream`` skips it on purpose). Variants: every ``--sizes`` image size, with
0 workers (loading in the training process itself, so the figure is per core) and with
``--workers`` workers, reading (``--sources``) the JPEG files, the RAM image cache (yolodist's
``cache_images="ram"``, filled by the dataset's ``prepare_cache()`` before the loader starts, as the
trainer does; upstream's ``cache='ram'``, filled by its dataset's constructor) or the disk image cache
(``"disk"`` on both sides, made the same way; yolodist's one file of resized images beside the label
cache, upstream's ``.npy`` per image of the decoded full-size image beside it; both are kept, as for
the next training, and on a machine with free memory both are read from the page cache). yolodist is measured
as train.py trains on a GPU by default: the HSV jitter left to the GPU after batching, JPEGs at least
twice the image size shrunk by the decoder; every variant also with ``--hsv-jitter loader`` (the
jitter in the loader, train.py's default on a CPU), and the JPEG variants with ``--no-scaled-decode``
(full decode, then resize) and with cv2 decoding the JPEGs instead of simplejpeg ("cv2 decode"). Every
process of either side computes on one thread: OpenCV sequential, torch one thread, ``OMP_NUM_THREADS=1``.
After one warm-up batch (worker start-up), ``--batches`` batches are timed. The two sides take turns
within each variant, the first of the pair swapping every round, for ``--rounds`` rounds; each
figure is the median over rounds with min and max, never the best round, and the ratio is
yolodist's median over upstream's.

Part ``memory``: the peak PSS summed over every process of one real training command (launcher,
ranks, dataloader workers): yolodist's ``train.py``, YOLOv5n from scratch, 1 epoch on the same
data at ``--memory-img`` px, batch 8, 2 workers per rank, on the CPU, with and without ``--cache
ram``, as one process and as 2 ranks through ``torch.distributed.run``. The process tree is read
from /proc (Linux) every 0.2 s. PSS divides each shared page among the processes that map it, so the
sum counts a page once; but it counts only pages a process has touched, so the peak size of the
shared-memory (tmpfs) files the tree maps, where yolodist's ``--cache ram`` lives, is reported
beside it, as is the RAM cache's own size (each image at its resized shape, 3 bytes a pixel).

Results go to bench/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import accuracy
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RATE_SCRIPT = ROOT / "bench" / "loader_rate.py"
PARTS = ("speed", "memory")
# "hsv-loader": yolodist with --hsv-jitter loader (train.py's default on a CPU);
# "full-decode": yolodist with --no-scaled-decode, "cv2-decode": yolodist decoding JPEGs with cv2 instead of
# simplejpeg (JPEG variants only: a cache holds decoded pixels).
IMPLS = ("yolodist", "hsv-loader", "full-decode", "cv2-decode", "upstream")
JPEG_ONLY = ("full-decode", "cv2-decode")
SOURCES = ("jpeg", "ram", "disk")  # the files, the RAM image cache, the disk image cache
COLUMNS = {
    "yolodist": "yolodist",
    "hsv-loader": "--hsv-jitter loader",
    "full-decode": "--no-scaled-decode",
    "cv2-decode": "cv2 decode",
}
BATCH = 16
MEMORY_BATCH, MEMORY_WORKERS, MEMORY_MODEL = 8, 2, "yolov5n.yaml"
MIB = 2**20


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def parse_parts(values: list[str]) -> list[str]:
    """``--parts speed memory`` or ``--parts speed,memory``."""
    parts = [p for v in values for p in v.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return [p for p in PARTS if p in parts]


def find_upstream(venv: Path) -> Path | None:
    """The upstream venv's python if bench/accuracy.py finished installing it there, else None (never installs)."""
    python = venv / "bin" / "python"
    return python if python.is_file() and (venv / ".installed").is_file() else None


# ---------------------------------------------------------------------------------------------- speed


def loader_rate(
    impl: str, images: Path, img: int, workers: int, source: str, args: argparse.Namespace, upstream: Path | None
) -> dict:
    """One measurement by bench/loader_rate.py in a fresh process; its JSON line."""
    flags = ["--impl", impl, "--images", str(images), "--img", str(img), "--batch", str(BATCH)]
    flags += ["--workers", str(workers), "--batches", str(args.batches), "--warmup", "1"]
    flags += ["--cache", source] if source != "jpeg" else []
    if impl == "full-decode":
        flags = ["--impl", "yolodist", *flags[2:], "--no-scaled-decode"]
    if impl == "hsv-loader":
        flags = ["--impl", "yolodist", *flags[2:], "--hsv-jitter", "loader"]
    if impl == "cv2-decode":
        flags = ["--impl", "yolodist", *flags[2:], "--no-simplejpeg"]
    if impl == "upstream":
        python, env = upstream, accuracy.upstream_env(args.work, 1)
        env["PIN_MEMORY"] = "False"  # upstream pins by default; yolodist's loader does not, and no GPU reads these
    else:
        python, env = Path(sys.executable), accuracy.base_env(1)
    proc = subprocess.run([str(python), str(RATE_SCRIPT), *flags], env=env, capture_output=True, text=True, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"{impl} loader ({' '.join(flags)}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def variant_name(img: int, workers: int, source: str) -> str:
    return f"{img}px {workers}w {source}"


def upstream_disk_copy(root: Path) -> Path:
    """A copy of upstream's side of the data for its disk cache.

    Upstream reads an image's ``.npy`` whenever one lies beside it, cache or not, so the disk cache's
    files must never sit beside the JPEGs its other variants read.
    """
    copy = root.with_name(root.name + "-disk-cache")
    if not (copy / "done").is_file():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.npy", "*.cache"))
        (copy / "done").touch()
    return copy


def measure_speed(data: dict[str, Path], args: argparse.Namespace, upstream: Path | None) -> list[dict]:
    impls = [i for i in IMPLS if i != "upstream" or upstream]
    roots = {impl: data[impl if impl == "upstream" else "yolodist"].parent for impl in impls}
    if upstream and "disk" in args.sources:
        roots["upstream-disk"] = upstream_disk_copy(roots["upstream"])
    workers = sorted({0, args.workers})
    variants = [(img, w, source) for img in args.sizes for w in workers for source in args.sources]
    runs: dict[tuple, dict[str, list[dict]]] = {v: {i: [] for i in impls} for v in variants}
    for r in range(args.rounds):
        order = impls if r % 2 == 0 else impls[::-1]
        for v in variants:
            for impl in order:
                if impl in JPEG_ONLY and v[2] != "jpeg":
                    continue
                root = roots["upstream-disk" if impl == "upstream" and v[2] == "disk" else impl]
                res = loader_rate(impl, root / "images" / "train", *v, args, upstream)
                runs[v][impl].append(res)
                print(f"round {r} {variant_name(*v):>16} {impl:>9}: {res['images_per_s']:7.1f} images/s", flush=True)
    results = []
    for (img, w, source), by_impl in runs.items():
        row = {"part": "speed", "img": img, "workers": w, "cache": None if source == "jpeg" else source}
        for impl in IMPLS:
            rates = [x["images_per_s"] for x in by_impl.get(impl, [])]
            row[impl] = summary(rates) if rates else None
        up = row["upstream"]
        row["ratio"] = row["yolodist"]["median"] / up["median"] if up else None
        row["rounds"] = by_impl
        results.append(row)
    return results


# ---------------------------------------------------------------------------------------------- memory


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants now (a child whose parent has gone is not found: none here)."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended while listed
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children[ppid].append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid``: shared pages divided among their users, so the tree's sum counts each once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):  # ended, or a kernel thread
        pass
    return 0


def tmpfs_mounts() -> list[str]:
    with open("/proc/mounts") as fh:
        return [fields[1] for fields in (line.split() for line in fh) if len(fields) > 2 and fields[2] == "tmpfs"]


def mapped_tmpfs_bytes(pids: list[int], mounts: list[str]) -> int:
    """Bytes held by the files on tmpfs (shared memory) that the processes map, each file once.

    A tmpfs file's pages are node memory whether or not a process has touched them, while PSS only
    counts the pages each process has touched: this is reported beside the PSS, not added to it.
    """
    files = set()
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and any(fields[5].startswith(f"{m}/") for m in mounts):
                files.add(fields[5])  # a deleted file reads "path (deleted)": stat fails and skips it
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += os.stat(f).st_blocks * 512
    return total


class PeakPss(threading.Thread):
    """Samples the summed PSS of a process tree every ``interval`` s and keeps the peak (and that of its tmpfs)."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak, self.peak_processes, self.peak_tmpfs, self.samples = 0, 0, 0, 0
        self.mounts = tmpfs_mounts()
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            tree = process_tree(self.root)
            total = sum(pss_bytes(p) for p in tree)
            self.peak_tmpfs = max(self.peak_tmpfs, mapped_tmpfs_bytes(tree, self.mounts))
            self.samples += 1
            if total > self.peak:
                self.peak, self.peak_processes = total, len(tree)
            if self.done.wait(self.interval):
                return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_memory(ranks: int, cache: bool, data: Path, args: argparse.Namespace) -> dict:
    """Peak summed PSS of one short training of yolodist's train.py."""
    name = f"memory-r{ranks}-{'ram' if cache else 'jpeg'}"
    train = [str(ROOT / "train.py"), "--data", str(data), "--cfg", MEMORY_MODEL, "--weights", ""]
    train += ["--img", str(args.memory_img), "--batch", str(MEMORY_BATCH), "--epochs", "1"]
    train += ["--workers", str(MEMORY_WORKERS), "--device", "cpu", "--noplots", *(["--cache", "ram"] if cache else [])]
    train += ["--project", str(args.work / "runs"), "--name", name, "--exist-ok"]
    launch = [sys.executable]
    if ranks > 1:
        launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
        launch += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    log = args.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [*launch, *train], cwd=args.work, env=accuracy.base_env(1), stdout=fh, stderr=subprocess.STDOUT
        )
        sampler = PeakPss(proc.pid)
        sampler.start()
        code = proc.wait()
        sampler.done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(f"training ({name}) failed (exit {code}); see {log}")
    return {
        "part": "memory",
        "ranks": ranks,
        "cache": "ram" if cache else None,
        "peak_pss_mib": sampler.peak / MIB,
        "processes_at_peak": sampler.peak_processes,
        "mapped_tmpfs_mib": sampler.peak_tmpfs / MIB,
        "samples": sampler.samples,
        "command_s": seconds,
    }


def cache_mib(images: Path, img: int) -> float:
    """What a RAM cache of ``images`` holds: each image resized to ``img`` on its long side, 3 bytes a pixel."""
    total = 0
    for f in sorted(images.iterdir()):
        with Image.open(f) as im:
            w, h = im.size  # the header only
        r = img / max(w, h)
        total += math.ceil(w * r) * math.ceil(h * r) * 3
    return total / MIB


def measure_memory(data: Path, args: argparse.Namespace) -> list[dict]:
    """Every configuration once per round, in turn (a peak moves with timing: report the median)."""
    results = []
    for r in range(args.memory_rounds):
        for ranks in args.memory_ranks:
            for cache in (False, True) if r % 2 == 0 else (True, False):
                res = train_memory(ranks, cache, data, args) | {"round": r}
                results.append(res)
                print(
                    f"round {r} memory {ranks} rank(s), {'--cache ram' if cache else 'no cache':>11}: peak PSS "
                    f"{res['peak_pss_mib']:.0f} MiB ({res['processes_at_peak']} processes; shared-memory files "
                    f"mapped: {res['mapped_tmpfs_mib']:.0f} MiB), {res['command_s']:.0f} s",
                    flush=True,
                )
    for ranks in args.memory_ranks:
        for cache in (None, "ram"):
            peaks = [m["peak_pss_mib"] for m in results if m["ranks"] == ranks and m["cache"] == cache]
            results.append({"part": "memory_summary", "ranks": ranks, "cache": cache, "peak_pss_mib": summary(peaks)})
    root = data.parent / "images"
    sizes = {split: cache_mib(root / split, args.memory_img) for split in ("train", "val")}
    results.append({"part": "memory_cache_size", "img": args.memory_img, "mib": sizes})
    return results


# ---------------------------------------------------------------------------------------------- report


def report(results: list[dict], args: argparse.Namespace, upstream: Path | None) -> None:
    speed = [r for r in results if r["part"] == "speed"]
    if speed:
        print("\nimages/s median [min, max]; 0 workers = per core")
        print(f"{'variant':>16}  " + "  ".join(f"{COLUMNS.get(i, i):>24}" for i in IMPLS) + "  ratio")
        for r in speed:
            cells = []
            for impl in IMPLS:
                s = r[impl]
                cells.append(f"{s['median']:7.1f} [{s['min']:.1f}, {s['max']:.1f}]" if s else "-")
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
            name = variant_name(r["img"], r["workers"], r["cache"] or "jpeg")
            print(f"{name:>16}  " + "  ".join(f"{c:>24}" for c in cells) + f"  {ratio}")
    memory = [r for r in results if r["part"] == "memory_summary"]
    if memory:
        where = f"--img {args.memory_img}, batch {MEMORY_BATCH}"
        print(f"\npeak PSS of the whole training, MiB, median [min, max] ({where})")
        for r in memory:
            s = r["peak_pss_mib"]
            label = "--cache ram" if r["cache"] else "no cache"
            print(f"{r['ranks']} rank(s) {label:>11}: {s['median']:8.0f} [{s['min']:.0f}, {s['max']:.0f}]")
        size = next(r for r in results if r["part"] == "memory_cache_size")["mib"]
        print(f"the cache's own size: train {size['train']:.0f} MiB, val {size['val']:.0f} MiB")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings |= {"batch": BATCH, "upstream_python": str(upstream) if upstream else None}
    settings |= {"threads": "1 per process (cv2.setNumThreads(0), torch.set_num_threads(1), OMP_NUM_THREADS=1)"}
    settings |= {"memory": {"batch": MEMORY_BATCH, "workers": MEMORY_WORKERS, "model": MEMORY_MODEL}}
    accuracy.write_results(args.out, settings, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), help="speed, memory (spaces or commas)")
    parser.add_argument("--images", type=int, default=256, help="training images generated")
    parser.add_argument("--source-size", type=int, default=640, help="width of the generated JPEGs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="training image sizes (speed)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES), help="what the loader reads")
    parser.add_argument("--workers", type=int, default=2, help="the N of the 0-vs-N worker variants")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-upstream", action="store_true", help="measure yolodist only")
    parser.add_argument("--upstream-venv", type=Path, default=ROOT / ".cache" / "accuracy" / "upstream-venv")
    parser.add_argument("--memory-img", type=int, default=640)
    parser.add_argument("--memory-ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-rounds", type=int, default=3, help="alternating rounds of the memory runs")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "input_pipeline", help="data, logs, runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "input_pipeline.json")
    args = parser.parse_args()
    args.parts = parse_parts(args.parts)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    upstream = None
    if "speed" in args.parts and not args.no_upstream:
        upstream = find_upstream(args.upstream_venv)
        if upstream is None:
            print(
                f"no upstream environment at {args.upstream_venv} (bench/accuracy.py --trainers upstream "
                "creates it): measuring yolodist only",
                flush=True,
            )
    n_val = max(8, args.images // 8)
    setting = accuracy.Setting(
        img=args.source_size, epochs=1, n_train=args.images, n_val=n_val, workers=args.workers, threads=1
    )
    data = accuracy.datasets(f"{args.source_size}-{args.images}", setting, args.work)
    results = []
    if "speed" in args.parts:
        results += measure_speed(data, args, upstream)
    if "memory" in args.parts:
        results += measure_memory(data["yolodist"], args)
    report(results, args, upstream)


if __name__ == "__main__":
    main()
