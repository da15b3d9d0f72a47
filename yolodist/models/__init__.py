"""YOLOv5 models built from upstream's model YAML format; pure ``nn.Module`` code, no distribution."""

from yolodist.models.blocks import C3, SPPF, Bottleneck, Concat, Conv
from yolodist.models.head import Detect
from yolodist.models.summary import ModelSummary, count_gflops, model_summary
from yolodist.models.yolo import SHIPPED_CFGS, Model, load_cfg, resolve_cfg

__all__ = [
    "C3",
    "SHIPPED_CFGS",
    "SPPF",
    "Bottleneck",
    "Concat",
    "Conv",
    "Detect",
    "Model",
    "ModelSummary",
    "count_gflops",
    "load_cfg",
    "model_summary",
    "resolve_cfg",
]
