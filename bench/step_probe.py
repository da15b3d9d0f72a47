"""The training step alone (no data loading): images/s of forward, loss, backward, optimiser and EMA.

    python bench/step_probe.py [--model yolov5n] [--img 320] [--batch 16] [--steps 10] [--rounds 2]
                               [--variants eager contiguous fp32 compile] [--profile] [--layers] [--out JSON]

What bench/train_speed.py's loop figure is made of, lever by lever, on one fixed random batch (96
boxes over 6 classes): ``eager`` is train.py's default step (channels-last, and ``--amp auto``'s
precision: bfloat16 autocast on CPUs that compute it natively, float32 elsewhere), ``contiguous``
the same with NCHW tensors, ``fp32`` the same in float32 (``--amp off``; the same as ``eager`` on
CPUs without native bfloat16), ``compile`` the eager step with the model under ``torch.compile``
(inductor; its compile time, the first step, is reported apart, from an empty inductor cache each
time: what a machine's first training pays; later runs reuse the cache and compile in seconds).
Each measurement is a fresh process with torch's default threads: 3 warm-up steps, then
``--steps`` timed; the variants take turns for ``--rounds`` rounds, and each figure is the median
with min and max. ``--profile`` adds the share of
the step's time by kind of operator (convolutions, normalisation and activation, the rest), from
torch's profiler over 3 eager steps. ``--layers`` then times every convolution of the model alone,
forward and backward at its own input shape, in the four implementations torch has on a CPU: oneDNN
and torch's own im2col path, each channels-last and NCHW (median of 3 after 2 warm-ups), and prints
which is fastest per layer. Results go to bench/results/step_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("eager", "contiguous", "fp32", "compile")
KINDS = {"convolution": ("conv",), "batch norm and SiLU": ("batch_norm", "silu")}


def build_step(args: argparse.Namespace, variant: str):
    """A closure doing one training step as the trainer does, and the precision it computes in."""
    sys.path.insert(0, str(ROOT))
    import torch

    from yolodist.config.io import load_hyp
    from yolodist.engine.ema import ModelEMA
    from yolodist.engine.loss import YoloLoss, reduce_loss
    from yolodist.engine.optim import build_optimizer
    from yolodist.engine.precision import autocast_dtype
    from yolodist.models import Model

    torch.manual_seed(0)
    layout = torch.contiguous_format if variant == "contiguous" else torch.channels_last
    model = Model(f"{args.model}.yaml", ch=3, nc=6).train().to(memory_format=layout)
    hyp = load_hyp("hyp.scratch-low.yaml")
    loss_fn = YoloLoss(model.detect.anchors, 6, hyp, img_size=args.img)
    optimizer = build_optimizer(model, "SGD", hyp.lr0, hyp.momentum, hyp.weight_decay)
    ema = ModelEMA(model)
    dtype = autocast_dtype("off" if variant == "fp32" else "auto", torch.device("cpu"))
    net = torch.compile(model) if variant == "compile" else model
    imgs = torch.rand(args.batch, 3, args.img, args.img).contiguous(memory_format=layout)
    g = torch.Generator().manual_seed(0)
    nt = args.batch * 6
    targets = torch.cat(
        [
            torch.randint(0, args.batch, (nt, 1), generator=g).float(),
            torch.randint(0, 6, (nt, 1), generator=g).float(),
            torch.rand(nt, 2, generator=g) * 0.8 + 0.1,
            torch.rand(nt, 2, generator=g) * 0.2 + 0.02,
        ],
        1,
    )

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):  # as the trainer's step
            terms = loss_fn([p.float() for p in net(imgs)], targets)
        loss, _ = reduce_loss(terms, terms.counts, loss_fn.weights, batch_size=args.batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    return step, str(dtype or torch.float32).removeprefix("torch.")


def measure(args: argparse.Namespace) -> dict:
    """One variant in this process: first-step seconds, images/s, and (eager, --profile) the operator shares."""
    step, precision = build_step(args, args.variant)
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    result = {"variant": args.variant, "first_step_s": first, "precision": precision}
    result["images_per_s"] = args.steps * args.batch / (time.perf_counter() - started)
    if args.profile and args.variant == "eager":
        result["shares"] = operator_shares(step)
    return result


def operator_shares(step) -> dict[str, float]:
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(3):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    shares = {kind: 0.0 for kind in KINDS} | {"everything else": 0.0}
    for e in events:
        kind = next((k for k, words in KINDS.items() if any(w in e.key for w in words)), "everything else")
        shares[kind] += e.self_cpu_time_total / total
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov5n")
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS), help="none: --layers only")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--layers", action="store_true", help="time each convolution alone in each implementation")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement, in a child
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step_probe.json")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args)), flush=True)
        return
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--img", str(args.img)]
            cmd += ["--batch", str(args.batch), "--steps", str(args.steps)] + (["--profile"] if args.profile else [])
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)  # a cold compile every time
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            if proc.returncode or not lines:
                raise SystemExit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            res = json.loads(lines[-1])
            runs[variant].append(res)
            rate, first, precision = res["images_per_s"], res["first_step_s"], res["precision"]
            print(f"round {r} {variant:>10}: {rate:.1f} images/s, first step {first:.1f} s, {precision}", flush=True)
    report(runs, args)


def report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import accuracy

    results = []
    print(f"\n{'variant':>10}  images/s median [min, max]   first step s median   precision")
    for variant, rs in runs.items():
        rates = [x["images_per_s"] for x in rs]
        first = statistics.median(x["first_step_s"] for x in rs)
        precision = rs[0]["precision"]
        spread = f"{statistics.median(rates):6.1f} [{min(rates):.1f}, {max(rates):.1f}]"
        print(f"{variant:>10}  {spread}{'':>12}{first:5.1f}{'':>17}{precision}")
        results.append({"variant": variant, "precision": precision, "images_per_s": rates})
        results[-1]["first_step_s"] = [x["first_step_s"] for x in rs]
        for shares in (x["shares"] for x in rs if "shares" in x):
            print("            " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
            results[-1].setdefault("shares", []).append(shares)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "variant")}
    if args.layers:
        results.append({"variant": "layers", "convolutions": conv_layers(args)})
    accuracy.write_results(args.out, settings, results)


def conv_layers(args: argparse.Namespace) -> list[dict]:
    """Milliseconds of each convolution's forward + backward in each implementation (in this process)."""
    sys.path.insert(0, str(ROOT))
    import torch
    from torch import nn

    from yolodist.models import Model

    model = Model(f"{args.model}.yaml", ch=3, nc=6)
    seen: list[tuple[nn.Conv2d, tuple]] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, tuple(i[0].shape)))) for m in convs]
    with torch.no_grad():
        model(torch.rand(args.batch, 3, args.img, args.img))
    for h in hooks:
        h.remove()
    impls = {"onednn nhwc": (True, True), "onednn nchw": (True, False), "im2col nhwc": (False, True)}
    impls["im2col nchw"] = (False, False)
    rows = []
    for i, (conv, shape) in enumerate(seen):
        times = {name: conv_ms(conv, shape, i > 0, *how) for name, how in impls.items()}
        rows.append({"input": list(shape), "out_channels": conv.out_channels, "kernel": conv.kernel_size[0]})
        rows[-1] |= {"stride": conv.stride[0], "ms": times, "fastest": min(times, key=times.get)}
        name = f"{shape[1]}->{conv.out_channels} k{conv.kernel_size[0]} s{conv.stride[0]} at {shape[2]}x{shape[3]}"
        print(
            f"{name:>26}  " + "  ".join(f"{k} {v:6.1f}" for k, v in times.items()) + f"  fastest: {rows[-1]['fastest']}"
        )
    torch.backends.mkldnn.enabled = True
    return rows


def conv_ms(conv, shape: tuple, input_grad: bool, onednn: bool, nhwc: bool) -> float:
    import torch
    from torch import nn

    torch.backends.mkldnn.enabled = onednn
    layout = torch.channels_last if nhwc else torch.contiguous_format
    c = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    c = c.to(memory_format=layout)
    x = torch.rand(shape).contiguous(memory_format=layout).requires_grad_(input_grad)  # the image needs no gradient
    times = []
    for _ in range(5):
        started = time.perf_counter()
        c(x).sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:]) * 1000


if __name__ == "__main__":
    main()
