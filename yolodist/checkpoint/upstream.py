"""Read upstream YOLOv5 ``.pt`` files, which pickle whole modules, without running anything from them.

An upstream checkpoint is a dict whose ``model`` and ``ema`` are pickled ``models.yolo.DetectionModel``
objects (``yolov5.models.yolo`` when saved by the pip package). Plain ``pickle`` would import upstream's
code and call whatever the file names, so a crafted file runs code. Instead:

1. ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists every class or function the file
   names; it disassembles the pickle and executes nothing.
2. Every name must be in a short allowlist (upstream's v6.0+ detection classes, the torch.nn layers they
   hold, and the few containers ``opt`` and ``best_fitness`` use), else the file is refused with the name.
3. torch's own weights-only unpickler loads the file with each allowed name mapped to an inert stub
   class that only stores what the file hands it. No upstream code, no real ``nn.Module`` and no numpy
   constructor is ever called.
4. The stub tree (``_modules``, ``_parameters``, ``_buffers``) is walked into a flat float32 state dict,
   whose names are those of ``yolodist.models.Model`` (same YAML, same attribute names).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import torch

from yolodist.errors import BadCheckpoint

# A GitHub checkout pickles ``models.yolo.X``; the pip package ``yolov5`` pickles ``yolov5.models.yolo.X``.
UPSTREAM_PREFIXES = ("models.", "yolov5.models.")
# The classes of a v6.0+ detection model, the only architecture ``yolodist.models`` builds. ``Model`` is the
# name v6.0/v6.1 pickled before it became an alias of ``DetectionModel``.
UPSTREAM_CLASSES = frozenset(
    {
        "yolo.DetectionModel",
        "yolo.Model",
        "yolo.Detect",
        "common.Conv",
        "common.C3",
        "common.Bottleneck",
        "common.SPPF",
        "common.Concat",
    }
)
# The torch layers inside those classes (Identity: a Conv built with act=False).
TORCH_LAYERS = frozenset(
    {
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.activation.SiLU",
        "torch.nn.modules.upsampling.Upsample",
        "torch.nn.modules.pooling.MaxPool2d",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.container.ModuleList",
        "torch.nn.modules.linear.Identity",
    }
)
# Metadata beside the weights: ``opt`` (an argparse.Namespace in older files, possibly holding paths) and
# ``best_fitness`` (a numpy array or scalar in a training last.pt; numpy 1 and 2 name the module differently).
METADATA = frozenset(
    {
        "argparse.Namespace",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
    }
)
_MODEL_CLASSES = ("yolo.DetectionModel", "yolo.Model")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_MAX_DEPTH = 32  # a YOLOv5 module tree is 5 deep; a deeper (or cyclic) one is not an upstream model


class Stub:
    """An inert stand-in for a class named in the file: it keeps what the unpickler gives it, nothing more.

    The unpickler creates it with ``__new__`` (pickled objects) or calls it (reduce); either way only
    this class's own code runs. ``state`` is what the original object's ``__dict__`` held.
    """

    name: ClassVar[str] = ""
    args: tuple = ()
    state: object = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub of {self.name}>"


@functools.cache
def _stub_class(name: str) -> type[Stub]:
    return type(name.rsplit(".", 1)[-1], (Stub,), {"name": name, "__module__": __name__})


def _upstream_class(name: str) -> str | None:
    """``models.yolo.Detect`` or ``yolov5.models.yolo.Detect`` -> ``yolo.Detect``; None for other names."""
    for prefix in UPSTREAM_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def _is_allowed(name: str) -> bool:
    return _upstream_class(name) in UPSTREAM_CLASSES or name in TORCH_LAYERS or name in METADATA


def _refusal(path: Path, refused: list[str]) -> BadCheckpoint:
    listed = ", ".join(refused)
    upstream = [n for n in refused if _upstream_class(n) is not None]
    if len(upstream) == len(refused):
        return BadCheckpoint(
            f"checkpoint {path} needs upstream YOLOv5 classes that yolodist does not build ({listed}), so it was "
            "not loaded; only YOLOv5 v6.0+ detection checkpoints (Conv, C3, SPPF, Detect) can be read"
        )
    return BadCheckpoint(
        f"checkpoint {path} asks for {listed}, which no YOLOv5 checkpoint contains, so it was not loaded "
        "(loading could run code); do not use this file, or re-save its weights as a plain state dict"
    )


def _stubs_for(path: Path, needed: Iterable[str]) -> list[tuple[type[Stub], str]]:
    """(stub, name) pairs for ``safe_globals``; raises ``BadCheckpoint`` if any name is not allowed."""
    needed = sorted(set(needed))
    refused = [name for name in needed if not _is_allowed(name)]
    if refused:
        raise _refusal(path, refused)
    return [(_stub_class(name), name) for name in needed]


def _reason(error: BaseException) -> str:
    """A short cause for a message: torch's many-line weights-only text cut to its one informative line."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = text.strip().splitlines()[0].split(". ")[0].strip() if text.strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _unpickle(path: Path, map_location: str | torch.device) -> object:
    """The file's object tree, upstream classes as stubs; ``BadCheckpoint`` before unpickling if refused."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # a damaged record, or opcodes the restricted reader rejects: the scan runs nothing
        raise BadCheckpoint(
            f"checkpoint {path} is damaged or not a checkpoint: its pickled record cannot be read safely "
            f"({_reason(e)}), so it was not loaded; use another copy"
        ) from None
    stubs = _stubs_for(path, needed)
    # safe_globals is process-wide while it is open; the names map to inert stubs, so a load in another
    # thread during this window gains nothing it could misuse.
    with torch.serialization.safe_globals(stubs), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # a damaged storage record, or a pickle the restricted unpickler refuses
            raise BadCheckpoint(
                f"checkpoint {path} could not be read safely ({_reason(e)}), so it was not loaded; use another copy"
            ) from None


def _fields(obj: object) -> dict:
    """What an object's ``__dict__`` held. A real ``nn.Module`` appears only if the process already trusted
    its class for weights-only loads (then torch, not this module, chose to build it); read it the same way."""
    state = obj.state if isinstance(obj, Stub) else vars(obj) if isinstance(obj, torch.nn.Module) else None
    return state if isinstance(state, dict) else {}


def _named(obj: object, wanted: tuple[str, ...]) -> bool:
    return isinstance(obj, Stub) and _upstream_class(obj.name) in wanted


def _tensors(fields: dict, key: str, skip: object = ()) -> dict[str, torch.Tensor]:
    table = fields.get(key)
    if not isinstance(table, dict):
        return {}
    skip = skip if isinstance(skip, set | frozenset | tuple | list) else ()
    return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, torch.Tensor) and k not in skip}


def _flat_state(path: Path, module: object, prefix: str = "", ancestors: tuple[int, ...] = ()) -> dict:
    """The state dict of a stub module tree, in ``nn.Module.state_dict`` order; floats as float32."""
    if id(module) in ancestors or len(ancestors) > _MAX_DEPTH:
        raise BadCheckpoint(f"checkpoint {path} holds a module tree that loops or nests too deep; check the file")
    fields = _fields(module)
    own = {
        **_tensors(fields, "_parameters"),
        **_tensors(fields, "_buffers", skip=fields.get("_non_persistent_buffers_set", ())),
    }
    out: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        tensor = tensor.detach()
        out[prefix + name] = tensor.float() if tensor.is_floating_point() else tensor
    children = fields.get("_modules")
    for name, child in children.items() if isinstance(children, dict) else ():
        if child is not None:
            out.update(_flat_state(path, child, f"{prefix}{name}.", (*ancestors, id(module))))
    return out


def _names_list(names: object, nc: int) -> list[str]:
    """Upstream stores names as a list, or (v7.0) a dict {index: name}; ours is a list of ``nc`` strings."""
    if isinstance(names, dict):
        return [str(names.get(i, i)) for i in range(nc)]
    if isinstance(names, list | tuple) and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def _is_plain(value: object, depth: int = 0) -> bool:
    """YAML-like data only (what upstream's model YAML is): no stubs or tensors hidden inside."""
    if depth > _MAX_DEPTH:
        return False
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _find_detect(root: Stub) -> Stub | None:
    children = _fields(root).get("_modules")
    layers = _fields(children.get("model")).get("_modules") if isinstance(children, dict) else None
    last = list(layers.values())[-1] if isinstance(layers, dict) and layers else None
    return last if _named(last, ("yolo.Detect",)) else None


def _convert(path: Path, raw: object) -> dict:
    if not isinstance(raw, dict):
        raise BadCheckpoint(f"checkpoint {path} is not a YOLOv5 checkpoint (it holds no dict); check the path")
    ema, model = raw.get("ema"), raw.get("model")
    chosen = ema if _named(ema, _MODEL_CLASSES) else model
    if not _named(chosen, _MODEL_CLASSES):
        raise BadCheckpoint(f"checkpoint {path} holds no YOLOv5 detection model under 'model' or 'ema'; check the path")
    fields = _fields(chosen)
    cfg = fields.get("yaml")
    detect = _find_detect(chosen)
    if not isinstance(cfg, dict) or not _is_plain(cfg) or detect is None:
        raise BadCheckpoint(f"checkpoint {path} has a YOLOv5 model without its YAML or Detect head; check the file")
    nc = cfg.get("nc", _fields(detect).get("nc"))
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise BadCheckpoint(f"checkpoint {path} gives no class count (nc = {nc!r}); check the file")
    stride = fields.get("stride")
    return {
        "source": "yolov5",
        "model": _flat_state(path, chosen),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "epoch": -1,
        "best_fitness": None,
        "yaml": cfg,
        "names": _names_list(fields.get("names"), nc),
        "nc": nc,
        "stride": [float(s) for s in stride.flatten().tolist()] if isinstance(stride, torch.Tensor) else None,
        "date": raw.get("date") if isinstance(raw.get("date"), str) else None,
    }


def load_upstream(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """An upstream YOLOv5 ``.pt`` (pickled modules) as a checkpoint in our layout, executing nothing from it.

    ``model`` holds the EMA weights when the file has them, else its model weights, as a float32 state
    dict named as ``yolodist.models.Model`` names it; ``ema`` and ``optimizer`` are None and ``epoch`` is
    -1 (a start point, not a resumable run). ``yaml``, ``names`` (a list), ``nc`` and ``stride`` come
    from the model; ``source`` is ``"yolov5"``. Raises ``BadCheckpoint`` naming the file, and any class
    it asks for outside the allowlist, before anything is unpickled.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BadCheckpoint(f"checkpoint {path} cannot be read ({e.strerror or e}); check the path") from None
    if magic != _ZIP_MAGIC:
        raise BadCheckpoint(
            f"checkpoint {path} is not in PyTorch's zip format (a legacy pre-1.6 file of pickled objects, or not a "
            "checkpoint at all), which yolodist does not read; use a newer release of the weights"
        )
    return _convert(path, _unpickle(path, map_location))
