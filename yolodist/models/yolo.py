"""The YOLOv5 detection model: built from a model YAML, strides measured, biases given priors."""

from __future__ import annotations

import copy
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from yolodist.errors import BadConfig
from yolodist.models.blocks import Conv
from yolodist.models.head import Detect
from yolodist.models.parse import parse_model
from yolodist.models.summary import ModelSummary, log_layer_table, model_summary, summary_line

LOGGER = logging.getLogger(__name__)

SHIPPED_CFGS: tuple[str, ...] = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")
_STRIDE_PROBE = 256  # upstream measures strides on a 256x256 zero image


def _cfg_dir() -> Path:
    return Path(str(resources.files("yolodist.models") / "cfg"))


def resolve_cfg(name_or_path: str | Path) -> Path:
    """A model YAML path from a shipped name (``yolov5s``, ``yolov5s.yaml``) or a user path.

    An upstream-style path such as ``models/yolov5s.yaml`` that does not exist here falls back to
    the shipped file of the same name. Anything else raises :class:`BadConfig`.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    if stem in SHIPPED_CFGS:
        return _cfg_dir() / f"{stem}.yaml"
    shipped = ", ".join(f"{n}.yaml" for n in SHIPPED_CFGS)
    raise BadConfig(f"model config {str(name_or_path)!r} not found; give a YAML path or one of: {shipped}")


def load_cfg(cfg: str | Path | dict) -> dict:
    """A model dict from a dict (deep-copied), a shipped name or a YAML path; ``yaml_file`` records the source."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    path = resolve_cfg(cfg)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadConfig(f"model config {path} cannot be read as YAML ({exc}); fix or replace the file") from exc
    if not isinstance(data, dict):
        raise BadConfig(f"model config {path} is not a YAML mapping; see the shipped yolov5s.yaml for the format")
    data["yaml_file"] = path.name
    return data


class Model(nn.Module):
    """A YOLOv5 detection model.

    ``forward(x)`` takes images ``[B, ch, H, W]`` (H, W multiples of the largest stride) and
    returns, in train mode, ``nl`` raw maps ``[B, na, H/s, W/s, nc + 5]``; in eval mode
    ``(decoded [B, N, nc + 5], raw maps)`` with boxes in input pixels (see :class:`Detect`).
    """

    def __init__(
        self,
        cfg: str | Path | dict = "yolov5s.yaml",
        ch: int = 3,
        nc: int | None = None,
        anchors: int | list | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self.yaml: dict[str, Any] = load_cfg(cfg)
        self.yaml_file = self.yaml.get("yaml_file", "")
        ch = self.yaml["ch"] = int(self.yaml.get("ch", ch))
        if nc is not None and nc != self.yaml.get("nc"):
            LOGGER.info(f"Overriding model.yaml nc={self.yaml.get('nc')} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors is not None:
            LOGGER.info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = anchors
        self.model, self.save, self.layer_records = parse_model(self.yaml, ch)
        if not isinstance(self.model[-1], Detect):
            raise BadConfig(f"the last layer of {self.yaml_file or 'the model YAML'} must be Detect")
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self._set_strides(ch)
        self.initialize_biases()
        if verbose:
            log_layer_table(self.layer_records)
            self.info()

    @property
    def detect(self) -> Detect:
        """The Detect head (the last layer)."""
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        """Strides of the detection levels, ``[nl]`` (e.g. 8, 16, 32)."""
        return self.detect.stride

    def _set_strides(self, ch: int) -> None:
        """Measure each level's stride from a probe forward, order anchors, convert them to grid units."""
        head = self.detect
        was_training = self.training
        self.train()  # train mode: Detect returns the raw maps whose sizes give the strides
        with torch.no_grad():
            maps = self.forward(torch.zeros(1, ch, _STRIDE_PROBE, _STRIDE_PROBE))
        # the probe forward went through BatchNorm in train mode; forget those statistics
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
        self.train(was_training)
        head.stride.copy_(torch.tensor([_STRIDE_PROBE / m.shape[-2] for m in maps]))
        if head.check_anchor_order():
            LOGGER.info("Reversing anchor order so that anchor size follows stride order")
        with torch.no_grad():
            head.anchors /= head.stride.view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | tuple:
        outputs: list[torch.Tensor | None] = []  # kept only for layers listed in self.save
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x

    def initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Add upstream's objectness and class priors to Detect's biases (``cf``: ``[nc]`` class counts)."""
        self.detect.initialize_biases(cf)

    def fuse(self) -> Model:
        """Fold every Conv's BatchNorm into its convolution, for inference; returns ``self``."""
        LOGGER.info("Fusing layers...")
        for module in self.modules():
            if isinstance(module, Conv):
                module.fuse()
        return self

    def info(self, imgsz: int = 640, verbose: bool = False) -> ModelSummary:
        """Count layers, parameters, gradients and GFLOPs at ``imgsz``; log upstream's summary line."""
        if verbose:
            log_layer_table(self.layer_records)
        summary = model_summary(self, imgsz)
        stem = Path(self.yaml_file).stem if self.yaml_file else ""
        name = stem.replace("yolov5", "YOLOv5") if stem else "Model"
        LOGGER.info(summary_line(name, summary, imgsz))
        return summary
