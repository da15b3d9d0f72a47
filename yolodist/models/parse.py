"""YOLOv5 model YAML (dict) -> layers, through an explicit registry. No ``eval``, no class mutation.

The format is upstream's: ``nc``, ``depth_multiple``, ``width_multiple``, ``anchors`` and two lists
``backbone`` and ``head`` of ``[from, number, module, args]`` rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from yolodist.errors import BadConfig
from yolodist.models.blocks import C3, SPPF, Bottleneck, Concat, Conv
from yolodist.models.head import Detect

MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "Concat": Concat,
    "Detect": Detect,
    "nn.Upsample": nn.Upsample,
    "Upsample": nn.Upsample,
}
_CHANNEL_MODULES = (Conv, Bottleneck, C3, SPPF)  # first arg is output channels, input is prepended
_REPEAT_MODULES = (C3,)  # the depth multiple goes into the module as ``n`` instead of stacking copies
_LITERAL_STRINGS = frozenset({"nearest", "bilinear", "bicubic", "linear"})  # nn.Upsample modes
_REQUIRED_KEYS = ("depth_multiple", "width_multiple", "anchors", "backbone", "head")


@dataclass(frozen=True)
class LayerRecord:
    """What one YAML row became: the row for the per-layer table (upstream's parse log)."""

    index: int
    source: int | list[int]
    number: int
    params: int
    type: str
    args: list[Any]


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x`` (upstream rounds channels up)."""
    return math.ceil(x / divisor) * divisor


def _where(cfg: dict) -> str:
    return str(cfg.get("yaml_file") or "the model YAML")


def _resolve_arg(value: Any, nc: int, anchors: Any, where: str) -> Any:
    """Map YAML symbols to values: ``nc``, ``anchors``, ``None``; known literal strings stay strings."""
    if not isinstance(value, str):
        return value
    symbols = {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}
    if value in symbols:
        return symbols[value]
    if value in _LITERAL_STRINGS:
        return value
    raise BadConfig(f"unknown symbol {value!r} in the args of {where}; use a number, nc, anchors or None")


def _check_sources(source: Any, index: int, where: str) -> list[int]:
    """Validate ``from`` (an int or list of ints, negative = relative) and return absolute indices."""
    items = source if isinstance(source, list) else [source]
    if not items or not all(isinstance(j, int) and not isinstance(j, bool) for j in items):
        raise BadConfig(f"layer {index} of {where} has 'from' = {source!r}; give an int or a list of ints")
    absolute = []
    for j in items:
        # layer 0 can only read the image (-1); later layers read any earlier layer
        position = j if index == 0 else (index + j if j < 0 else j)
        if (index == 0 and j != -1) or (index > 0 and not 0 <= position < index):
            raise BadConfig(f"layer {index} of {where} reads from layer {j}, which does not come before it")
        absolute.append(position)
    return absolute


def _check_cfg(cfg: dict) -> None:
    where = _where(cfg)
    missing = [k for k in _REQUIRED_KEYS if k not in cfg]
    if missing:
        raise BadConfig(f"{where} lacks {', '.join(missing)}; see yolodist/models/cfg/yolov5s.yaml for the format")
    if not isinstance(cfg.get("nc"), int) or cfg["nc"] < 1:
        raise BadConfig(f"{where} has nc = {cfg.get('nc')!r}; set nc to the number of classes (>= 1)")
    for part in ("backbone", "head"):
        rows = cfg[part]
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 4 for r in rows):
            raise BadConfig(f"'{part}' in {where} must be a list of [from, number, module, args] rows")
    if cfg.get("activation") not in (None, "nn.SiLU()", "SiLU"):
        raise BadConfig(f"{where} asks for activation {cfg['activation']!r}; only SiLU is supported, remove the key")


def _anchors_per_level(anchors: Any, levels: int, where: str) -> list[list[float]]:
    """Anchors as a list of lists, or an int (anchors per level) giving placeholders AutoAnchor replaces."""
    if isinstance(anchors, int) and not isinstance(anchors, bool) and anchors > 0:
        return [list(range(anchors * 2))] * levels
    if (
        isinstance(anchors, list)
        and len(anchors) == levels
        and all(isinstance(a, list) and a and len(a) % 2 == 0 and len(a) == len(anchors[0]) for a in anchors)
    ):
        return [[float(v) for v in a] for a in anchors]
    raise BadConfig(
        f"anchors in {where} must be {levels} lists of w,h pairs of equal length (one per Detect input) "
        f"or an int (anchors per level); got {anchors!r}"
    )


def _module_args(cls: type, args: list, sources: list[int], number: int, ctx: dict) -> tuple[list, int, int]:
    """Resolve one row's constructor args; returns (args, output channels, repeat count)."""
    ch = ctx["ch"]
    if cls in _CHANNEL_MODULES:
        c1, c2 = ch[sources[0]], args[0]
        if not isinstance(c2, int):
            raise BadConfig(f"{ctx['where']}: the first arg of {cls.__name__} must be the output channels")
        if c2 != ctx["no"]:  # upstream leaves an output-sized conv unscaled
            c2 = make_divisible(c2 * ctx["gw"], ctx["ch_mul"])
        args = [c1, c2, *args[1:]]
        if cls in _REPEAT_MODULES:
            args.insert(2, number)
            number = 1
        return args, c2, number
    if cls is Concat:
        return args, sum(ch[j] for j in sources), number
    if cls is Detect:
        args = list(args)
        if len(args) < 2:
            raise BadConfig(f"{ctx['where']}: Detect needs args [nc, anchors]")
        args[1] = _anchors_per_level(args[1], len(sources), ctx["where"])
        return [*args[:2], [ch[j] for j in sources]], ch[sources[0]], number
    return args, ch[sources[0]], number


def _build_row(row: list, index: int, ctx: dict) -> tuple[nn.Module, LayerRecord, int]:
    source, number, name, raw_args = row
    where = ctx["where"]
    cls = MODULES.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(MODULES))
        raise BadConfig(f"unknown module {name!r} in layer {index} of {where}; known modules: {known}")
    sources = _check_sources(source, index, where)
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise BadConfig(f"layer {index} of {where} repeats {number!r} times; give a positive int")
    number = max(round(number * ctx["gd"]), 1) if number > 1 else number
    repeats = number
    args = [_resolve_arg(a, ctx["nc"], ctx["anchors"], f"layer {index} of {where}") for a in raw_args or []]
    args, c2, number = _module_args(cls, args, sources, number, ctx)
    try:
        module = nn.Sequential(*(cls(*args) for _ in range(number))) if number > 1 else cls(*args)
    except (TypeError, ValueError) as exc:
        raise BadConfig(f"layer {index} of {where} ({name} {raw_args!r}) cannot be built: {exc}") from exc
    params = sum(p.numel() for p in module.parameters())
    type_name = f"{cls.__module__}.{cls.__qualname__}"
    # upstream's per-layer attributes: index, from, type, parameter count
    module.i, module.f, module.type, module.np = index, source, type_name, params
    return module, LayerRecord(index, source, repeats, params, type_name, args), c2


def parse_model(cfg: dict, ch: int) -> tuple[nn.Sequential, list[int], list[LayerRecord]]:
    """Build the layers of a YOLOv5 model dict for ``ch`` input channels.

    Returns ``(layers, save, records)``: the layers as an ``nn.Sequential`` (named ``0..N-1`` so
    state-dict keys read ``model.<i>....``), the sorted indices of layers whose outputs later
    layers read, and one :class:`LayerRecord` per layer.
    """
    _check_cfg(cfg)
    nc, anchors = cfg["nc"], cfg["anchors"]
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) and anchors and isinstance(anchors[0], list) else anchors
    if not isinstance(na, int) or isinstance(na, bool) or na < 1:
        raise BadConfig(f"anchors in {_where(cfg)} must be lists of w,h pairs or an int; got {anchors!r}")
    ctx = {
        "where": _where(cfg),
        "nc": nc,
        "anchors": anchors,
        "gd": float(cfg["depth_multiple"]),
        "gw": float(cfg["width_multiple"]),
        "ch_mul": int(cfg.get("channel_multiple", 8)),
        "no": na * (nc + 5),
        "ch": [ch],
    }
    layers, save, records = [], set(), []
    for index, row in enumerate(cfg["backbone"] + cfg["head"]):
        module, record, c2 = _build_row(row, index, ctx)
        sources = record.source if isinstance(record.source, list) else [record.source]
        save.update(j % index for j in sources if j != -1)
        layers.append(module)
        records.append(record)
        if index == 0:
            ctx["ch"] = []  # the input channel count is only an input to layer 0
        ctx["ch"].append(c2)
    return nn.Sequential(*layers), sorted(save), records
