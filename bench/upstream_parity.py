"""Part-by-part parity with upstream YOLOv5 7.0 on the same inputs: loss, gradients, augmentation statistics.

    .cache/accuracy/upstream-venv/bin/python bench/upstream_parity.py [--data YAML] [--img 320] [--samples 2000]

Run it with the Python of the environment ``bench/accuracy.py`` creates (it holds upstream's
``yolov5`` package; this repository's package is imported from the checkout). Three checks:

1. **Initialisation**: upstream's model built after ``torch.manual_seed(s)`` and ours built the same
   way hold the same tensors (largest absolute difference).
2. **Loss and gradients**: upstream's weights copied into our model, one augmented batch through
   both models and both losses (upstream's ``ComputeLoss`` with its scaled gains, ours as the trainer
   builds it); the loss items and the largest relative gradient difference over all tensors.
3. **Augmentation statistics**: ``--samples`` training samples of each pipeline (mosaic, perspective,
   HSV, flips at hyp.scratch-low): labels per image, empty images, share of boxes under 0.25 % of the
   image, mean and median box area, mean pixel value.

Results are printed and written to bench/results/upstream_parity.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def upstream_model(nc: int, seed: int) -> torch.nn.Module:
    import yolov5
    from yolov5.models.yolo import Model

    torch.manual_seed(seed)
    return Model(str(Path(yolov5.__file__).parent / "models" / "yolov5n.yaml"), ch=3, nc=nc)


def our_model(nc: int, seed: int) -> torch.nn.Module:
    from yolodist.models import Model

    torch.manual_seed(seed)
    return Model("yolov5n.yaml", ch=3, nc=nc)


def init_parity(nc: int, seed: int) -> dict:
    theirs, ours = upstream_model(nc, seed).state_dict(), our_model(nc, seed).state_dict()
    worst = max((theirs[k].float() - v.float()).abs().max().item() for k, v in ours.items())
    return {"same_keys": list(theirs) == list(ours), "max_abs_diff": worst}


def batch_of(dataset, size: int):
    from yolodist.data.loader import collate

    return collate([dataset[(0, i)] for i in range(size)])


def loss_parity(dataset, nc: int, img: int, seed: int) -> dict:
    from yolov5.utils.loss import ComputeLoss

    from yolodist.config.schema import Hyp, TrainConfig
    from yolodist.engine.build import LossFn
    from yolodist.engine.loss import reduce_loss

    theirs = upstream_model(nc, seed)
    ours = our_model(nc, seed)
    ours.load_state_dict(theirs.state_dict())
    imgs, targets, _, _ = batch_of(dataset, 16)
    x = imgs.float() / 255
    hyp = Hyp().to_dict()
    nl = 3  # upstream scales its gains in train.py, not in ComputeLoss
    hyp.update(box=hyp["box"] * 3 / nl, cls=hyp["cls"] * nc / 80 * 3 / nl, obj=hyp["obj"] * (img / 640) ** 2 * 3 / nl)
    theirs.hyp, theirs.nc = hyp, nc
    theirs.train()
    ours.train()
    loss_t, items_t = ComputeLoss(theirs)(theirs(x), targets)
    loss_t.backward()
    loss_fn = LossFn(ours, nc, Hyp(), TrainConfig(imgsz=img))
    terms = loss_fn(ours(x), targets)
    loss_o, items_o = reduce_loss(terms, terms.counts, loss_fn.weights, batch_size=len(imgs))
    loss_o.backward()
    grads_t = dict(theirs.named_parameters())
    worst, where = 0.0, ""
    for name, p in ours.named_parameters():
        g = grads_t[name].grad
        diff = ((p.grad - g).abs().max() / g.abs().max().clamp(min=1e-12)).item()
        if diff > worst:
            worst, where = diff, name
    return {
        "loss": [loss_t.item(), loss_o.item()],
        "items_upstream": items_t.tolist(),
        "items_yolodist": items_o.tolist(),
        "grad_max_rel_diff": worst,
        "grad_worst_tensor": where,
    }


def stats(samples) -> dict:
    counts, empty, areas, pixels = [], 0, [], []
    for img, labels in samples:
        counts.append(len(labels))
        empty += len(labels) == 0
        areas.extend((labels[:, 4] * labels[:, 5]).tolist())
        pixels.append(img.float().mean().item())
    areas_a = np.asarray(areas)
    return {
        "labels_per_image": float(np.mean(counts)),
        "labels_per_image_sd": float(np.std(counts)),
        "empty_images": empty,
        "small_box_share": float((areas_a < 0.0025).mean()),
        "mean_box_area": float(areas_a.mean()),
        "median_box_area": float(np.median(areas_a)),
        "mean_pixel": float(np.mean(pixels)),
    }


def upstream_copy(images: Path) -> Path:
    """The split's images and labels copied aside: both loaders name their label cache labels/<split>.cache."""
    target = ROOT / ".cache" / "parity" / "upstream-copy"
    shutil.rmtree(target, ignore_errors=True)
    labels = images.parent.parent / "labels" / images.name
    shutil.copytree(images, target / "images" / images.name)
    shutil.copytree(labels, target / "labels" / images.name, ignore=shutil.ignore_patterns("*.cache"))
    return target / "images" / images.name


def augmentation_parity(images: Path, img: int, n: int) -> dict:
    from yolov5.utils.dataloaders import LoadImagesAndLabels

    from yolodist.config.schema import Hyp
    from yolodist.data.dataset import YoloDataset

    hyp = Hyp()
    ours = YoloDataset([images], img, augment=True, hyp=hyp, seed=0, workers=0)
    theirs = LoadImagesAndLabels(str(upstream_copy(images)), img, 16, augment=True, hyp=hyp.to_dict(), stride=32)
    random.seed(0)  # upstream draws from the process-wide generators
    np.random.seed(0)
    size = len(ours)
    return {
        "upstream": stats(theirs[k % size][:2] for k in range(n)),
        "yolodist": stats(ours[(k // size, k % size)][:2] for k in range(n)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset YAML (default: built-in shapes at --img)")
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "upstream_parity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from yolodist.data.dataset import YoloDataset
    from yolodist.data.spec import load_data_spec
    from yolodist.data.synthetic import ensure_shapes

    yaml_file = args.data or ensure_shapes(
        ROOT / ".cache" / "parity" / "shapes", n_train=512, n_val=128, img_size=args.img, seed=0
    )
    spec = load_data_spec(yaml_file)
    dataset = YoloDataset(spec.train, args.img, augment=True, seed=args.seed, workers=0)
    out = {
        "init": init_parity(spec.nc, args.seed),
        "loss_and_gradients": loss_parity(dataset, spec.nc, args.img, args.seed),
        "augmentation": augmentation_parity(Path(spec.train[0]), args.img, args.samples),
    }
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), **out}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
