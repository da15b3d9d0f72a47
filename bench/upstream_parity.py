"""Part-by-part parity with upstream YOLOv5 7.0 on the same inputs: loss, gradients, augmentation statistics.

    .cache/accuracy/upstream-venv/bin/python bench/upstream_parity.py [--data YAML] [--img 320] [--samples 2000]

Run it with the Python of the environment ``bench/accuracy.py`` creates (it holds upstream's
``yolov5`` package; this repository's package is imported from the checkout). Three checks:

1. **Initialisation**: upstream's model built after ``torch.manual_seed(s)`` and ours built the same
   way: the largest absolute difference over the parameters, and over the buffers.
2. **Loss and gradients**: upstream's weights copied into our model, one augmented batch through
   both models and both losses (upstream's ``ComputeLoss`` with its scaled gains, ours as the trainer
   builds it); the loss items and the largest relative gradient difference over all tensors.
3. **Optimiser updates in lockstep**: both trainers start from upstream's initial weights and take
   the same ``--batches`` fixed augmented batches per epoch for ``--epochs`` epochs: ours through its
   own ``train_one_epoch`` (warm-up, accumulation, clipping, fused SGD, EMA, LR schedule), upstream's
   through its optimiser, EMA and loss classes driven by the update rules of its ``train.py`` (linear
   warm-up of lr and momentum over max(3 epochs, 100) batches, an update once ``accumulate`` batches
   have passed since the last one, gradients zeroed at every epoch start, clip at norm 10). Reported:
   the relative L2 distance between the two trainers' weights and EMAs, and, as the yardstick, the
   same distance between two upstream runs whose initial weights differ by 1e-6 relative noise
   (early training amplifies float32 rounding; a difference in the recipe shows as a distance well
   above the yardstick's).
4. **Augmentation statistics**: ``--samples`` training samples of each pipeline (mosaic, perspective,
   HSV, flips at hyp.scratch-low): labels per image, empty images, share of boxes under 0.25 % of the
   image, mean and median box area, mean pixel value.

Results are printed and written to bench/results/upstream_parity.json.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    """Parameters and buffers apart: upstream's stride probe leaves BatchNorm statistics behind, ours not."""
    theirs, ours = upstream_model(nc, seed), our_model(nc, seed)
    t_state, params = theirs.state_dict(), {k for k, _ in ours.named_parameters()}

    def worst(keys) -> float:
        return max((t_state[k].float() - ours.state_dict()[k].float()).abs().max().item() for k in keys)

    buffers = [k for k in ours.state_dict() if k not in params]
    return {
        "same_keys": list(t_state) == list(ours.state_dict()),
        "parameters_max_abs_diff": worst(params),
        "buffers_max_abs_diff": worst(buffers),
    }


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


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.flatten().double() for v in model.state_dict().values() if v.is_floating_point()])


def distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    fa, fb = flat(a), flat(b)
    return ((fa - fb).norm() / fb.norm()).item()


def upstream_updates(model, batches: list[list], hyp: dict, img: int, epochs_total: int, warmup_floor: int = 100):
    """Upstream 7.0's update rules over fixed batches, with its own optimiser, EMA and loss classes."""
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import ModelEMA, smart_optimizer

    nominal, batch = 64, len(batches[0][0][0])
    accumulate = max(round(nominal / batch), 1)
    hyp = dict(hyp, weight_decay=hyp["weight_decay"] * batch * accumulate / nominal)
    optimizer = smart_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    factor = lambda e: (1 - e / epochs_total) * (1.0 - hyp["lrf"]) + hyp["lrf"]  # noqa: E731 (linear schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
    scheduler.last_epoch = -1  # as upstream's train.py does right after (start_epoch - 1): epoch e runs at lf(e - 1)
    ema = ModelEMA(model)
    nl, nc = 3, model.yaml["nc"]
    model.nc = nc
    model.hyp = dict(hyp, box=hyp["box"] * 3 / nl, cls=hyp["cls"] * nc / 80 * 3 / nl)
    model.hyp["obj"] = hyp["obj"] * (img / 640) ** 2 * 3 / nl
    loss_fn = ComputeLoss(model)
    per_epoch = len(batches[0])
    warmup = max(round(hyp["warmup_epochs"] * per_epoch), warmup_floor)
    last = -1
    for epoch, epoch_batches in enumerate(batches):
        model.train()
        optimizer.zero_grad()
        for i, (imgs, targets, *_) in enumerate(epoch_batches):
            n = i + per_epoch * epoch
            if n <= warmup:
                accumulate = max(1, np.interp(n, [0, warmup], [1, nominal / batch]).round())
                for j, group in enumerate(optimizer.param_groups):
                    start = hyp["warmup_bias_lr"] if j == 0 else 0.0
                    group["lr"] = np.interp(n, [0, warmup], [start, group["initial_lr"] * factor(epoch)])
                    group["momentum"] = np.interp(n, [0, warmup], [hyp["warmup_momentum"], hyp["momentum"]])
            loss, _ = loss_fn(model(imgs.float() / 255), targets)
            loss.backward()
            if n - last >= accumulate:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                optimizer.step()
                optimizer.zero_grad()
                ema.update(model)
                last = n
        scheduler.step()
    return model, ema


def our_updates(
    yaml_file: Path, state: dict, batches: list[list], img: int, epochs_total: int, work: Path, hyp: dict, floor: int
):
    """Our own trainer (``setup`` + ``train_one_epoch``) over the same fixed batches."""
    from yolodist.config.io import dump_yaml
    from yolodist.config.schema import TrainConfig
    from yolodist.distributed.env import detect
    from yolodist.engine.build import warmup_iterations
    from yolodist.engine.epoch import train_one_epoch
    from yolodist.engine.run import setup

    work.mkdir(parents=True, exist_ok=True)
    (work / "hyp.yaml").write_text(dump_yaml(hyp))
    cfg = TrainConfig(
        data=str(yaml_file), cfg="yolov5n.yaml", weights="", imgsz=img, batch_size=len(batches[0][0][0]),
        epochs=epochs_total, workers=0, device="cpu", noplots=True, noautoanchor=True, hyp=str(work / "hyp.yaml"),
        min_warmup_iters=floor, project=str(work), name="lockstep", exist_ok=True,
    )  # fmt: skip
    run, progress = setup(cfg, detect("cpu"))
    # setup() sized warm-up for the dataset's own loader; these epochs are the fixed batches.
    run = dataclasses.replace(run, warmup_iters=warmup_iterations(cfg, run.hyp, len(batches[0])))
    run.model.load_state_dict(state)
    run.ema.ema.load_state_dict(state)
    for epoch, epoch_batches in enumerate(batches):
        run.data.train_loader = epoch_batches  # a list of collated batches is all the epoch loop needs
        train_one_epoch(run, progress, epoch)
        run.optim.scheduler.step()
    return run.model, run.ema


def update_parity(yaml_file: Path, dataset, nc: int, args: argparse.Namespace) -> dict:
    """``--batches`` per epoch for ``--epochs``, with ``--warmup-epochs`` of warm-up (upstream's 3 with
    its 100-batch floor; any other value drops the floor in both trainers, so that a short check
    reaches the epochs after warm-up) on an LR schedule ``--schedule-epochs`` long."""
    img, seed, per_epoch, epochs = args.img, args.seed, args.batches, args.epochs
    warmup, schedule = args.warmup_epochs, args.schedule_epochs
    from yolodist.config.schema import Hyp
    from yolodist.data.loader import collate

    order = [torch.randperm(len(dataset), generator=torch.Generator().manual_seed(e)) for e in range(epochs)]
    batches = [
        [collate([dataset[(e, int(j))] for j in order[e][k * 16 : (k + 1) * 16]]) for k in range(per_epoch)]
        for e in range(epochs)
    ]
    hyp = Hyp(warmup_epochs=warmup).to_dict()
    floor = 100 if warmup == 3 else 0
    theirs = upstream_model(nc, seed)
    start = {k: v.clone() for k, v in theirs.state_dict().items()}
    control = upstream_model(nc, seed)
    with torch.no_grad():
        for p in control.parameters():
            p.mul_(1 + 1e-6 * torch.randn_like(p))
    theirs, theirs_ema = upstream_updates(theirs, batches, hyp, img, schedule, floor)
    control, control_ema = upstream_updates(control, batches, hyp, img, schedule, floor)
    work = ROOT / ".cache" / "parity" / "runs"
    ours, ours_ema = our_updates(yaml_file, start, batches, img, schedule, work, hyp, floor)
    return {
        "batches": per_epoch * epochs,
        "warmup_epochs": warmup,
        "schedule_epochs": schedule,
        "updates": [theirs_ema.updates, ours_ema.updates],
        "weights_rel_l2": distance(ours, theirs),
        "ema_rel_l2": distance(ours_ema.ema, theirs_ema.ema),
        "yardstick_weights_rel_l2": distance(control, theirs),
        "yardstick_ema_rel_l2": distance(control_ema.ema, theirs_ema.ema),
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


CHECKS = ("init", "loss_and_gradients", "updates", "augmentation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset YAML (default: built-in shapes at --img)")
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=12, help="fixed batches per epoch in the lockstep check")
    parser.add_argument("--epochs", type=int, default=3, help="epochs in the lockstep check")
    parser.add_argument("--warmup-epochs", type=float, default=3.0, help="lockstep warm-up (3: upstream's, floor 100)")
    parser.add_argument("--schedule-epochs", type=int, default=30, help="length of the lockstep's LR schedule")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
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
    checks = {
        "init": lambda: init_parity(spec.nc, args.seed),
        "loss_and_gradients": lambda: loss_parity(dataset, spec.nc, args.img, args.seed),
        "updates": lambda: update_parity(yaml_file, dataset, spec.nc, args),
        "augmentation": lambda: augmentation_parity(Path(spec.train[0]), args.img, args.samples),
    }
    out = {name: checks[name]() for name in args.checks}
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), **out}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
