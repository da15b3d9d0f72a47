"""The YOLOv5 Detect head: per-level 1x1 convolutions, anchors, and the v6+ box decode."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# Upstream's prior: about 8 objects in a 640x640 image, and a 0.6 chance spread over the classes.
_OBJECTS_PER_640_IMAGE = 8
_CLASS_PRIOR = 0.6
# Upstream 7.0 divides by nc - 0.99999 (earlier releases: nc - 0.99); so one seed gives one init in both.
_CLASS_PRIOR_OFFSET = 0.99999


class Detect(nn.Module):
    """Turn ``nl`` feature maps into per-anchor predictions.

    ``anchors`` is a buffer ``[nl, na, 2]`` holding widths/heights in **grid units** (pixels divided
    by that level's stride) once the model builder has set ``stride``; ``stride`` is a
    non-persistent buffer ``[nl]`` so that it follows ``.to()`` but stays out of the state dict,
    as in upstream checkpoints.

    Train mode: a list of ``nl`` raw maps ``[B, na, ny, nx, no]``.
    Eval mode: ``(decoded [B, sum(na*ny*nx), no], raw list)`` where decoded has xywh in input
    pixels and sigmoid objectness/class scores; with ``export = True`` only ``decoded``.
    """

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (), ch: Sequence[int] = ()) -> None:
        super().__init__()
        if len(anchors) != len(ch):
            raise ValueError(f"Detect got {len(anchors)} anchor levels for {len(ch)} input maps")
        self.nc = nc
        self.no = nc + 5  # x, y, w, h, objectness, classes
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        anchor_tensor = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", anchor_tensor)
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.export = False
        # Offsets grid per (level, ny, nx, device, dtype); derived from the input size only, so it
        # never goes stale when AutoAnchor rewrites ``anchors``.
        self._grids: dict[tuple, torch.Tensor] = {}

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor] | tuple:
        raw = []
        for i in range(self.nl):
            y = self.m[i](x[i])
            bs, _, ny, nx = y.shape
            raw.append(y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        decoded = torch.cat([self._decode(i, r) for i, r in enumerate(raw)], 1)
        return decoded if self.export else (decoded, raw)

    def _decode(self, i: int, raw: torch.Tensor) -> torch.Tensor:
        """``[B, na, ny, nx, no]`` raw level ``i`` -> ``[B, na*ny*nx, no]`` in input pixels (YOLOv5 v6+)."""
        bs, _, ny, nx, _ = raw.shape
        grid = self._grid(i, ny, nx, raw.device, raw.dtype)  # [1, 1, ny, nx, 2], already minus 0.5
        anchor_pixels = (self.anchors[i] * self.stride[i]).to(raw.dtype).view(1, self.na, 1, 1, 2)
        xy, wh, conf = raw.sigmoid().split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 + grid) * self.stride[i].to(raw.dtype)
        wh = (wh * 2) ** 2 * anchor_pixels
        return torch.cat((xy, wh, conf), 4).view(bs, self.na * ny * nx, self.no)

    def _grid(self, i: int, ny: int, nx: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (i, ny, nx, device, dtype)
        grid = self._grids.get(key)
        if grid is None:
            ys = torch.arange(ny, device=device, dtype=dtype)
            xs = torch.arange(nx, device=device, dtype=dtype)
            yv, xv = torch.meshgrid(ys, xs, indexing="ij")
            # the -0.5 folds in the v6 offset: centre = 2*sigmoid - 0.5 + cell
            grid = (torch.stack((xv, yv), 2) - 0.5).view(1, 1, ny, nx, 2)
            self._grids[key] = grid
        return grid

    def check_anchor_order(self) -> bool:
        """Flip the levels if anchor size runs against stride order (upstream semantics); True if flipped.

        Call while ``anchors`` are still in pixels, after ``stride`` is set.
        """
        area = self.anchors.prod(-1).mean(-1).view(-1)  # mean anchor area per level
        area_delta = area[-1] - area[0]
        stride_delta = self.stride[-1] - self.stride[0]
        if area_delta and area_delta.sign() != stride_delta.sign():
            with torch.no_grad():
                self.anchors.copy_(self.anchors.flip(0))
            return True
        return False

    @torch.no_grad()
    def initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Add upstream's priors to the output biases (objectness and class); ``cf`` is ``[nc]`` class counts.

        Objectness gets ``log(8 / (640 / s)**2)``: 8 objects per 640 image spread over the cells of a
        level with stride ``s``. Classes get ``log(0.6 / (nc - 0.99999))``, or ``log(cf / cf.sum())``.
        """
        if cf is not None and cf.shape != (self.nc,):
            raise ValueError(f"class frequencies must have shape ({self.nc},), got {tuple(cf.shape)}")
        for conv, s in zip(self.m, self.stride.tolist(), strict=True):
            bias = conv.bias.view(self.na, -1)  # [na, no], a view so edits land in the parameter
            bias[:, 4] += math.log(_OBJECTS_PER_640_IMAGE / (640 / s) ** 2)
            if cf is None:
                bias[:, 5 : 5 + self.nc] += math.log(_CLASS_PRIOR / (self.nc - _CLASS_PRIOR_OFFSET))
            else:
                bias[:, 5 : 5 + self.nc] += torch.log(cf / cf.sum()).to(bias)
