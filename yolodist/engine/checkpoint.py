"""Checkpoints: plain state dicts plus readable metadata, written atomically, loaded without pickled code.

Every file we write loads with ``torch.load(path, weights_only=True)``. Loading wraps torch's own
errors, which are unusable as messages (an empty ``EOFError``, ``OSError: [Errno 22]``), into one
sentence that names the file and the problem.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from yolodist import __version__
from yolodist.errors import BadCheckpoint
from yolodist.utils.io import atomic_save

LOGGER = logging.getLogger(__name__)
FORMAT = "yolodist-ckpt"
FORMAT_VERSION = 1


class PickledCheckpoint(BadCheckpoint):
    """The file needs arbitrary pickled objects (e.g. an upstream YOLOv5 checkpoint of whole modules)."""


def build_checkpoint(  # noqa: PLR0913 - every field of the file, by name
    *,
    model_state: dict,
    ema_state: dict | None,
    ema_updates: int,
    optimizer_state: dict | None,
    epoch: int,
    best_fitness: float,
    opt: dict,
    yaml: dict,
    names: list[str],
    hyp: dict,
    extra: dict | None = None,
) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "epoch": int(epoch),
        "best_fitness": float(best_fitness),
        "model": model_state,
        "ema": ema_state,
        "updates": int(ema_updates),
        "optimizer": optimizer_state,
        "opt": opt,
        "yaml": yaml,
        "names": list(names),
        "nc": len(names),
        "hyp": hyp,
        **(extra or {}),
    }


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(ckpt: dict, path: str | Path, keep_previous: bool = True) -> None:
    """Write ``ckpt`` atomically; with ``keep_previous`` the old file survives as ``<stem>.prev.pt``."""
    path = Path(path)
    if keep_previous and path.exists():
        prev = previous_path(path)
        prev.unlink(missing_ok=True)
        os.link(path, prev)  # a second name for the old file; the rename below never touches it
    atomic_save(ckpt, path)


def _describe_failure(path: Path, error: BaseException) -> str:
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "GLOBAL" in text:
        return "contains pickled Python objects, which are never executed"
    if isinstance(error, EOFError | zipfile.BadZipFile) or "central directory" in text or "Errno 22" in text:
        return "is truncated or corrupt (the write may have been interrupted)"
    return f"is not a readable checkpoint ({type(error).__name__})"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load one of our checkpoints safely; every failure is a ``BadCheckpoint`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BadCheckpoint(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise BadCheckpoint(f"checkpoint {path} is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many unrelated types here; each becomes one message
        reason = _describe_failure(path, e)
        if "pickled" in reason:
            raise PickledCheckpoint(
                f"checkpoint {path} {reason}; upstream YOLOv5 .pt files of whole modules are not supported "
                "by this version: export the weights as a state dict or train from scratch"
            ) from None
        raise BadCheckpoint(f"checkpoint {path} {reason}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise BadCheckpoint(f"{path} is not a yolodist or YOLOv5 checkpoint (it has no 'model' state dict)")
    return ckpt


def load_latest_good(path: str | Path) -> tuple[dict, Path]:
    """Load ``path``, or its previous generation when ``path`` is corrupt (a crash during a write)."""
    path = Path(path)
    try:
        return load_checkpoint(path), path
    except BadCheckpoint as first:
        prev = previous_path(path)
        if not prev.is_file():
            raise
        LOGGER.warning(f"{first}; falling back to the previous checkpoint {prev}")
        return load_checkpoint(prev), prev


def transfer_weights(model: nn.Module, state: dict, exclude: list[str] | tuple[str, ...] = ()) -> tuple[int, int]:
    """Copy tensors whose name and shape match (and that no ``exclude`` substring names) into ``model``.

    Returns (transferred, total in the model).
    """
    own = model.state_dict()
    matched = {
        k: v
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape and not any(x in k for x in exclude)
    }
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own)
