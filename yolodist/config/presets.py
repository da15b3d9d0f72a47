"""Default profiles: upstream YOLOv5's defaults, and the built-in demo used when no --data is given.

Explicit flags always win. The demo profile exists because upstream's recipe (nominal batch 64,
640 px, 100 epochs) is made for large datasets and GPUs; on the built-in data on a laptop CPU it
would need hours to show anything. A user who names a dataset gets upstream's recipe unchanged.
"""

from __future__ import annotations

from yolodist.errors import BadFlag

BUILTIN_DATA = "shapes.yaml"
TRAIN_PROJECT = "runs/train"
EVOLVE_PROJECT = "runs/evolve"

UPSTREAM = {
    "weights": "yolov5s.pt",
    "cfg": "",
    "hyp": "hyp.scratch-low.yaml",
    "epochs": 100,
    "batch_size": 16,
    "imgsz": 640,
    "nbs": 64,
    "optimizer": "SGD",
}

# Tuned so that `python train.py` finishes in under 10 minutes on 2 CPU cores (see README).
DEMO = {
    "weights": "",
    "cfg": "yolov5n.yaml",
    "hyp": "hyp.shapes-demo.yaml",
    "epochs": 16,
    "batch_size": 16,
    "imgsz": 192,
    "nbs": 16,
    "optimizer": "AdamW",
}


def is_builtin(data: str | None) -> bool:
    return data is None or data in ("shapes", BUILTIN_DATA)


def resolve_profile(flags: dict) -> dict:
    """Fill flags left unset (None) from the demo profile (built-in data) or upstream's defaults."""
    values = dict(flags)
    profile = DEMO if is_builtin(values.get("data")) else UPSTREAM
    if values.get("data") is None:
        values["data"] = BUILTIN_DATA
    for key, default in profile.items():
        if values.get(key) is None:
            values[key] = default
    # A model given only by --cfg trains from scratch; upstream's default weights apply only without it.
    if flags.get("weights") is None and flags.get("cfg"):
        values["weights"] = ""
    if not values["weights"] and not values["cfg"] and not values.get("resume"):
        raise BadFlag("nothing to train: give --cfg yolov5s.yaml (from scratch) or --weights path/to/model.pt")
    return values


def resolve_evolve(flags: dict) -> dict:
    """Upstream's meaning of the flags under --evolve: runs go to runs/evolve unless --project says
    otherwise, and a bare --resume continues the evolution in --project/--name (it sets --exist-ok).
    --resume with a checkpoint path stays set, for TrainConfig to refuse in one line."""
    values = dict(flags)
    if not values.get("evolve"):
        return values
    if values.get("project") == TRAIN_PROJECT:
        values["project"] = EVOLVE_PROJECT
    if values.get("resume") is True:
        values["exist_ok"], values["resume"] = True, False
    return values
