"""One entry point for "give me weights from this file": our checkpoints and upstream YOLOv5 ones.

``load_weights`` returns a checkpoint in our layout (see ``state``) whatever the file's origin;
``load_model`` turns it into an inference-ready ``Model`` (EMA weights when present, float32, eval).
train, val, detect and export all go through here, so a format is supported everywhere or nowhere.
``transfer_weights`` seeds a model being trained with the tensors of a file that fit it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from yolodist.checkpoint.files import PickledCheckpoint, load_checkpoint
from yolodist.checkpoint.state import TrainingState
from yolodist.checkpoint.upstream import load_upstream
from yolodist.errors import BadCheckpoint
from yolodist.models import Model
from yolodist.utils.download import download, release_url, url_basename

LOGGER = logging.getLogger(__name__)


def resolve_weights(weights: str) -> Path:
    """A local weights file for ``--weights``: a path, an http(s) URL, or a known upstream release name.

    A URL is fetched into the current folder under its own name (reused when already there); a missing
    ``yolov5s.pt``-style name is fetched from the release (``$YOLODIST_RELEASE_URL`` overrides the base).
    """
    if urlsplit(weights).scheme.lower() in ("http", "https"):
        path = Path(url_basename(weights) or "weights.pt")
        if not path.is_file():
            LOGGER.info(f"Downloading {weights} to {path.absolute()}")
            download(weights, path)
        return path
    path = Path(weights)
    if path.is_file():
        return path
    url = release_url(path.name)
    if url is not None:
        LOGGER.info(f"Downloading {url} to {path.absolute()}")
        return download(url, path)
    hint = ""
    if path.suffix == ".pt" and path.parent == Path("."):
        hint = (
            " Pretrained files are published at https://github.com/ultralytics/yolov5/releases"
            f" (e.g. v7.0/{path.name}):"
            f" download it and pass its path, or train from scratch with --cfg {path.stem}.yaml --weights ''."
        )
    raise BadCheckpoint(f"weights file {weights!r} not found.{hint}")


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint at ``path`` in our layout, without executing anything from the file.

    A file of pickled modules (upstream YOLOv5) goes to the allowlisted upstream reader; anything it
    asks for outside that list is refused with ``BadCheckpoint`` before it is unpickled.
    """
    try:
        return load_checkpoint(path, map_location)
    except PickledCheckpoint:
        pass  # handled below, outside the except block, so a refusal does not chain this error
    ckpt = load_upstream(path, map_location)
    LOGGER.info(f"Loaded upstream YOLOv5 checkpoint {path} ({len(ckpt['model'])} tensors)")
    return ckpt


def transfer_weights(model: nn.Module, state: dict, exclude: Sequence[str] = ()) -> tuple[int, int]:
    """Copy into ``model`` the tensors of ``state`` whose name and shape match its own.

    A name containing any ``exclude`` substring is skipped (upstream excludes "anchor" when the
    cfg or hyp gives anchors). Values are cast to the model's dtype by ``load_state_dict``.
    Returns (transferred, total in the model) for "Transferred 349/349 items from yolov5s.pt".
    """
    own = model.state_dict()
    if isinstance(exclude, str):  # a lone "anchor" would otherwise be matched letter by letter
        exclude = (exclude,)

    def wanted(k: str, v: object) -> bool:
        shape_ok = k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
        return shape_ok and not any(x in k for x in exclude)

    matched = {k: v for k, v in state.items() if wanted(k, v)}
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own)


def transfer_start_weights(model: nn.Module, state: TrainingState, source: str, exclude: Sequence[str] = ()) -> None:
    """Seed ``model`` with the matching weights of ``state`` (as float32) and say how many fit."""
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state.model.items()}
    done, total = transfer_weights(model, weights, exclude=exclude)
    LOGGER.info(f"Transferred {done}/{total} items from {source}")


def _is_fused(state: dict) -> bool:
    """A state saved after ``fuse()``: Conv blocks carry a conv bias and no BatchNorm."""
    return any(k.endswith(".conv.bias") for k in state) and not any(".bn." in k for k in state)


def model_from_checkpoint(ckpt: TrainingState | dict, source: str | Path = "checkpoint") -> Model:
    """A float32 ``Model`` in eval mode holding the checkpoint's EMA weights (else its model weights).

    Upstream and yolodist store Detect's anchors the same way (grid units: pixels / stride) under the
    same names, so the state dict loads as is; the strides measured here must equal the file's.
    """
    ckpt = ckpt if isinstance(ckpt, TrainingState) else TrainingState.from_dict(ckpt, source)
    cfg = ckpt.yaml
    if not isinstance(cfg, dict):
        raise BadCheckpoint(f"{source} holds no model description (no 'yaml'); it cannot be rebuilt")
    state = ckpt.ema or ckpt.model
    nc = int(ckpt.nc or cfg.get("nc"))
    model = Model(cfg, ch=int(cfg.get("ch", 3)), nc=nc)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if _is_fused(state):
        model.fuse()
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or misshapen:
        raise BadCheckpoint(
            f"{source} does not match the model it describes ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(misshapen)} misshapen tensors, e.g. {(missing or unexpected or misshapen)[0]}); the file is damaged"
        )
    model.load_state_dict(state)
    stride = ckpt.stride
    if isinstance(stride, list | tuple) and [float(s) for s in stride] != model.stride.tolist():
        raise BadCheckpoint(
            f"{source} was made with strides {list(stride)} but its model description gives "
            f"{model.stride.tolist()}; the file is damaged"
        )
    names = ckpt.names or [str(i) for i in range(nc)]
    model.names = list(names.values()) if isinstance(names, dict) else list(names)
    return model.float().eval()


def load_model(path: str | Path, device: str | torch.device = "cpu", fuse: bool = True) -> Model:
    """An inference-ready model from a weights file (ours or upstream's), on ``device``."""
    model = model_from_checkpoint(load_weights(path), path)
    if fuse:
        model.fuse()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)
