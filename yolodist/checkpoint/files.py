"""Checkpoint files: written atomically with a previous generation kept, loaded without pickled code.

Opening a checkpoint never runs code: files load with ``weights_only=True`` (layout in ``state``).
Loading wraps torch's own errors, which are unusable as messages (an empty ``EOFError``,
``OSError: [Errno 22]``, a KeyError ``'101'`` for a text file), into one sentence that names the
file and the problem (RELIABILITY finding 9, test F12). A file that needs pickled classes, such as
an upstream YOLOv5 ``.pt`` holding whole modules, raises ``PickledCheckpoint`` so the caller can
hand it to the upstream reader.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from yolodist.checkpoint.state import TrainingState, check_format
from yolodist.errors import BadCheckpoint
from yolodist.utils.io import atomic_copy, atomic_save

LOGGER = logging.getLogger(__name__)
_ZIP_MAGIC = b"PK\x03\x04"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class PickledCheckpoint(BadCheckpoint):
    """The file needs pickled Python objects (e.g. an upstream YOLOv5 checkpoint of whole modules).

    Nothing from it was executed. ``global_name`` is the first class or function it asked for.
    """

    def __init__(self, message: str, path: Path | None = None, global_name: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.global_name = global_name


def previous_path(path: str | Path) -> Path:
    """Where the previous generation of ``path`` is kept: last.pt -> last.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(ckpt: TrainingState | dict, path: str | Path, keep_previous: bool = True) -> None:
    """Write ``ckpt`` atomically; with ``keep_previous`` the old file first becomes ``<stem>.prev.pt``.

    The old generation is kept (a hard link, so no copy) because an atomic write protects against a
    crash *during* the write, not against a file damaged later (a truncated copy, a bad disk);
    ``load_latest_good`` then falls back to it. Raises ``OSError`` naming the path (disk full, ...).
    """
    path = Path(path)
    if keep_previous and path.is_file():
        atomic_copy(path, previous_path(path))
    atomic_save(ckpt.to_dict() if isinstance(ckpt, TrainingState) else ckpt, path)


def _pickled(path: Path, error: BaseException) -> PickledCheckpoint:
    match = _GLOBAL.search(str(error))
    name = match.group(1) if match else None
    wanted = f" (it asks for {name})" if name else ""
    return PickledCheckpoint(
        f"checkpoint {path} contains pickled Python objects{wanted}, so it was not loaded (loading could run "
        "code). Upstream YOLOv5 .pt files are read by the upstream-compatibility loader; any other file must "
        "be re-saved as a plain state dict",
        path,
        name,
    )


def _describe_failure(path: Path, error: BaseException) -> str:
    """One phrase for why torch could not read ``path`` (finishes "checkpoint <path> ...")."""
    text = str(error)
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
    except OSError:
        is_zip = False
    if (
        isinstance(error, EOFError | zipfile.BadZipFile)
        or "central directory" in text
        or "Errno 22" in text
        or (is_zip and "failed reading zip archive" in text)
    ):
        hint = "use another copy or an earlier checkpoint"
        return f"is truncated or corrupt (an interrupted write or copy?); {hint}"
    if is_zip:
        return "is a zip archive but not a PyTorch checkpoint; check the path"
    hint = "corrupt, or another kind of file"
    return f"is not a PyTorch checkpoint (unrecognised content: {hint}); check the path"


def _read(path: Path, map_location: str | torch.device) -> object:
    if path.is_dir():
        raise BadCheckpoint(f"checkpoint {path} is a directory; give the .pt file inside it")
    if not path.is_file():
        raise BadCheckpoint(f"checkpoint {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise BadCheckpoint(f"checkpoint {path} is empty (0 bytes); the write that made it never finished")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it is about to refuse; our error says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise BadCheckpoint(f"checkpoint {path} cannot be read (permission denied)") from None
    except Exception as e:  # torch raises many unrelated types here; each becomes one message
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            raise _pickled(path, e) from None
        raise BadCheckpoint(f"checkpoint {path} {_describe_failure(path, e)}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a yolodist (or state-dict YOLOv5) checkpoint without executing anything from it.

    Every failure raises ``BadCheckpoint`` naming the file: missing, empty, truncated, not a torch
    file, a torch file that is not a checkpoint, a newer format; ``PickledCheckpoint`` when it
    needs pickled classes.
    """
    path = Path(path)
    ckpt = _read(path, map_location)
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise BadCheckpoint(
            f"{path} is not a yolodist or YOLOv5 checkpoint (it has no 'model' state dict); check the path"
        )
    check_format(ckpt, path)
    return ckpt


def load_latest_good(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Load ``path``, or its previous generation (``<stem>.prev.pt``) when ``path`` is unusable.

    Returns (checkpoint, the path actually used). A ``PickledCheckpoint`` is not a damaged file,
    so it propagates instead of falling back.
    """
    path = Path(path)
    try:
        return load_checkpoint(path, map_location), path
    except PickledCheckpoint:
        raise
    except BadCheckpoint as first:
        prev = previous_path(path)
        if not prev.is_file():
            raise
        LOGGER.warning(f"{first}. Falling back to the previous checkpoint {prev}")
        try:
            return load_checkpoint(prev, map_location), prev
        except BadCheckpoint as second:
            raise BadCheckpoint(f"{first}; the previous generation is unusable too: {second}") from None


def strip_for_release(path: str | Path, out: str | Path | None = None) -> Path:
    """Make a small inference checkpoint, as upstream's strip_optimizer: EMA weights in half precision.

    ``model`` becomes the EMA weights when present; optimizer, EMA, EMA updates, best fitness and
    any AMP scaler state are dropped (set to None) and ``epoch`` is -1, so the file can seed a new
    run (``--weights``) but not be resumed. Floating-point tensors become float16; integer buffers
    (BatchNorm's num_batches_tracked) are kept. Written atomically to ``out`` (default: in place).
    """
    path = Path(path)
    out = Path(out) if out is not None else path
    # Rewritten key by key rather than through TrainingState, so a file of any origin keeps its own keys.
    ckpt = load_checkpoint(path)
    if ckpt.get("ema"):
        ckpt["model"] = ckpt["ema"]
    for key in ("optimizer", "ema", "updates", "best_fitness", "scaler"):
        if key in ckpt:
            ckpt[key] = None
    ckpt["epoch"] = -1
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    atomic_save(ckpt, out)
    saved_as = "" if out == path else f", saved as {out}"
    LOGGER.info(f"Optimizer stripped from {path}{saved_as}, {out.stat().st_size / 1e6:.1f}MB")
    return out
