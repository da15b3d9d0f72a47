"""Images/s of one training dataloader, yolodist's or upstream YOLOv5 7.0's, printed as one JSON line.

    PYTHON bench/loader_rate.py --impl yolodist|upstream --images DIR --img 640 [--batch 16]
                                [--workers 2] [--cache [ram|disk]] [--batches 20] [--warmup 1]
                                [--no-scaled-decode] [--no-simplejpeg] [--hsv-jitter device|loader]

bench/input_pipeline.py runs this once per measurement, with upstream's virtual environment's Python
for ``--impl upstream`` (that environment has no yolodist, so each side imports only its own code).
Both loaders are built as their trainer builds the training loader: augmentation on, mosaic, the
hyperparameters of hyp.scratch-low, shuffled, ``--workers`` worker processes (0: in this process),
yolodist's with the HSV jitter left to the training device (train.py's default on CUDA; ``--hsv-jitter
loader``: in the loader, its default on a CPU; the jitter after batching is not part of this figure),
and with ``--cache`` the RAM image cache (yolodist's ``cache_images="ram"`` made by the dataset's
``prepare_cache()``, upstream's ``cache='ram'``), filled before the loader starts and not timed;
``--cache disk`` the disk cache the same way (yolodist's one file beside the label cache, upstream's
``.npy`` file per image beside the image), kept for the next measurement as for the next training.
The loader is iterated endlessly over epochs, as training does; ``--warmup`` batches are taken first
(worker start-up), then ``--batches`` are timed.

Threads: OpenCV runs sequentially (``cv2.setNumThreads(0)``, upstream's own choice at import) and
torch on one thread in this process; DataLoader workers always run torch on one thread and keep
OpenCV's setting (yolodist's workers set it again). So every process of either side computes on one
thread, and a run with 0 workers measures one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]


def yolodist_loader(args: argparse.Namespace) -> tuple[Iterator, int, float]:
    """yolodist's training loader as yolodist/engine/build.py makes it (one rank), iterated over epochs.

    Returns the batches, the worker count the loader chose and the seconds it took to build (imports not included).
    """
    sys.path.insert(0, str(ROOT))
    from yolodist.config.io import load_hyp
    from yolodist.data import images
    from yolodist.data.dataset import YoloDataset
    from yolodist.data.loader import build_loader
    from yolodist.data.sampler import ShardedBatchSampler

    if not args.simplejpeg:  # loader workers are forked and keep this
        images.simplejpeg = None
    started = time.perf_counter()
    hyp = load_hyp("hyp.scratch-low.yaml")
    dataset = YoloDataset(
        [args.images],
        args.img,
        augment=True,
        hyp=hyp,
        batch_size=args.batch,
        cache_images=args.cache,
        seed=0,
        workers=args.workers,
        prefix="train: ",
        scaled_decode=args.scaled_decode,
        defer_hsv=args.hsv_jitter == "device",
    )
    prepare = getattr(dataset, "prepare_cache", None)
    if args.cache and prepare is not None:  # the node-wide cache is made (or opened) by this call, as the trainer does
        prepare()
    sampler = ShardedBatchSampler(len(dataset), args.batch, rank=0, world=1, seed=0, shuffle=True)
    loader = build_loader(dataset, sampler, workers=args.workers)

    def endless() -> Iterator:
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    return endless(), loader.num_workers, time.perf_counter() - started


def upstream_loader(args: argparse.Namespace) -> tuple[Iterator, int, float]:
    """Upstream's training loader as its train.py makes it (single process, rank -1); as ``yolodist_loader``."""
    import yaml
    import yolov5
    from yolov5.utils.dataloaders import create_dataloader

    started = time.perf_counter()
    hyp = yaml.safe_load((Path(yolov5.__file__).parent / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    loader, _ = create_dataloader(
        str(args.images),
        args.img,
        args.batch,
        32,
        hyp=hyp,
        augment=True,
        cache=args.cache,
        rank=-1,
        workers=args.workers,
        prefix="train: ",
        shuffle=True,
        seed=0,
    )

    def endless() -> Iterator:
        while True:  # its InfiniteDataLoader keeps one underlying iterator: each pass continues it
            yield from loader

    return endless(), loader.num_workers, time.perf_counter() - started


def jpeg_decoder(impl: str) -> str:
    """The library that decoded the training JPEGs (upstream: cv2.imread)."""
    if impl == "upstream":
        return "cv2"
    from yolodist.data import images

    return "cv2" if images.simplejpeg is None else "simplejpeg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("yolodist", "upstream"), required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of training images (labels beside)")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cache", nargs="?", const="ram", choices=("ram", "disk"), help="the image cache (no value: ram)"
    )
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--warmup", type=int, default=1, help="batches before the timing starts")
    parser.add_argument(
        "--hsv-jitter",
        choices=("device", "loader"),
        default="device",
        help="yolodist: leave the HSV jitter to the training device (train.py's default on CUDA) or jitter in "
        "the loader (its default on a CPU)",
    )
    parser.add_argument(
        "--scaled-decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="yolodist: JPEGs shrunk by the decoder, train.py's default (--no-scaled-decode: full decode, then resize)",
    )
    parser.add_argument(
        "--simplejpeg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="yolodist: JPEGs decoded by simplejpeg where installed (--no-simplejpeg: by cv2, as before it)",
    )
    args = parser.parse_args()
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    batches, workers, setup = (yolodist_loader if args.impl == "yolodist" else upstream_loader)(args)
    started = time.perf_counter()
    for _ in range(args.warmup):
        next(batches)
    warmed = time.perf_counter()
    images, batch = 0, None
    for _ in range(args.batches):
        batch = next(batches)
        images += int(batch[0].shape[0])
    seconds = time.perf_counter() - warmed
    result = {
        "impl": args.impl,
        "images_per_s": images / seconds,
        "images": images,
        "seconds": seconds,
        "setup_s": setup,  # dataset scan and loader; a cache made before the first batch fills here
        "warmup_s": warmed - started,
        "workers": workers,
        # whether the batches left the HSV jitter to the training device (yolodist's Batch.hsv tables)
        "hsv_after_batching": getattr(batch, "hsv", None) is not None,
        "jpeg_decoder": jpeg_decoder(args.impl),
        "versions": {"torch": torch.__version__, "cv2": cv2.__version__},
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
