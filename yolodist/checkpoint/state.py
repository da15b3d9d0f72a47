"""The layout of a checkpoint file as one dataclass, and the schema version that guards it.

Every file we write loads with ``torch.load(path, weights_only=True)``: tensors, dicts, lists,
strings and numbers only. Key names are upstream's where upstream has them, so upstream's state-dict
files and ours read the same way. ``TrainingState.to_dict`` writes, in this order::

    format, format_version   "yolodist-ckpt" and the schema version this yolodist writes
    version, date            yolodist version and ISO-8601 UTC time of the save
    epoch                    last completed epoch (-1: not a training state, e.g. a released file)
    best_fitness             float or None
    model, ema               state dicts {name: tensor}; ema may be None
    updates                  EMA update count (the decay ramp resumes from it)
    optimizer                optimizer.state_dict() or None (None: not resumable)
    opt, yaml                run options and model cfg (plain dicts)
    names, nc                class names and their count
    hyp                      hyperparameters (a plain dict)
    scaler, fitness, batches_done, maps    training's own, for a resume (left out when None)
    stride, source           model strides; "yolov5" for a converted upstream file (left out when None)
    ...                      any other key, kept as read
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from yolodist import __version__
from yolodist.errors import BadCheckpoint

FORMAT = "yolodist-ckpt"
FORMAT_VERSION = 1
# format and format_version describe the file, not the state: from_dict checks them, to_dict writes the current ones.
_HEADER = ("format", "format_version")
_ALWAYS = (
    "version",
    "date",
    "epoch",
    "best_fitness",
    "model",
    "ema",
    "updates",
    "optimizer",
    "opt",
    "yaml",
    "names",
    "nc",
    "hyp",
)
# Files written before these existed (or by upstream) lack them; None keeps a file without them as it was.
_WHEN_SET = ("scaler", "fitness", "batches_done", "maps", "stride", "source")


def check_format(ckpt: dict, path: str | Path | None = None) -> None:
    """Refuse a checkpoint of a schema newer than this yolodist reads; a file without a version is version 1.

    Files written before the version key existed have the same layout, so its absence means 1.
    """
    version = ckpt.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        name = str(path) if path is not None else "this checkpoint"
        raise BadCheckpoint(
            f"{name} uses checkpoint format {version!r}, newer than this yolodist {__version__} reads "
            f"({FORMAT_VERSION}); upgrade yolodist"
        )


@dataclass
class TrainingState:
    """What a checkpoint holds (layout in the module docstring); every field may be missing from a file.

    ``from_dict(to_dict(s)) == s``, and ``to_dict(from_dict(d)) == d`` for every dict training writes.
    """

    model: dict[str, torch.Tensor] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] | None = None
    updates: int | None = None
    optimizer: dict | None = None
    epoch: int = -1
    best_fitness: float | None = None
    opt: dict | None = None
    yaml: dict | None = None
    names: list[str] | dict | None = None
    nc: int | None = None
    hyp: dict | None = None
    version: str | None = None
    date: str | None = None
    scaler: dict | None = None
    fitness: float | None = None
    batches_done: int | None = None
    maps: list[float] | None = None
    stride: list[float] | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def new(cls, *, names: list[str], epoch: int, best_fitness: float, updates: int, **values: Any) -> TrainingState:
        """A state saved now by this yolodist: version and date stamped, ``nc`` counted from ``names``.

        The counters become plain Python numbers: a numpy scalar would make the file need pickled
        classes, which weights-only loading refuses.
        """
        return cls(
            version=__version__,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            epoch=int(epoch),
            best_fitness=float(best_fitness),
            updates=int(updates),
            names=list(names),
            nc=len(names),
            **values,
        )

    @property
    def resumable(self) -> bool:
        """Whether a run can continue from it: it needs the optimiser's state and the run's options."""
        return self.optimizer is not None and self.opt is not None

    def to_dict(self) -> dict:
        """The dict ``torch.save`` writes, in the current schema."""
        out: dict = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update({key: getattr(self, key) for key in _ALWAYS})
        out.update({key: getattr(self, key) for key in _WHEN_SET if getattr(self, key) is not None})
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, ckpt: dict, path: str | Path | None = None) -> TrainingState:
        """The state in ``ckpt``; ``BadCheckpoint`` (naming ``path``) if its schema is newer than ours."""
        check_format(ckpt, path)
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {key: value for key, value in ckpt.items() if key in known}
        extra = {key: value for key, value in ckpt.items() if key not in known and key not in _HEADER}
        return cls(**values, extra=extra)


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
    """``TrainingState.new`` as the dict written to disk; ``extra`` sets optional fields (stride, ...) or adds keys.

    Any other key of ``extra`` is written after the fields, replacing one of the same name, as it always was.
    """
    extra = extra or {}
    optional = {key: value for key, value in extra.items() if key in _WHEN_SET}
    state = TrainingState.new(
        model=model_state,
        ema=ema_state,
        updates=ema_updates,
        optimizer=optimizer_state,
        epoch=epoch,
        best_fitness=best_fitness,
        opt=opt,
        yaml=yaml,
        names=names,
        hyp=hyp,
        extra={key: value for key, value in extra.items() if key not in _WHEN_SET},
        **optional,
    )
    return state.to_dict()
