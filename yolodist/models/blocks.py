"""YOLOv5 building blocks: Conv, Bottleneck, C3, SPPF, Concat.

Class and attribute names follow upstream (``conv``/``bn``/``act``, ``cv1``/``cv2``/``cv3``/``m``)
because they become the state-dict keys, and upstream checkpoints must map tensor for tensor.
"""

from __future__ import annotations

import torch
from torch import nn

# Upstream shares one activation instance between every Conv. The instance has no state, and
# sharing it keeps ``len(list(model.modules()))`` -- the "layers" figure in the summary line --
# equal to upstream's (214 for yolov5s). It is a module constant, never reassigned from a config.
_SHARED_SILU = nn.SiLU(inplace=True)

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(kernel: int, padding: int | None = None, dilation: int = 1) -> int:
    """Padding that keeps the spatial size for stride 1 ('same' padding) when none is given."""
    if padding is not None:
        return padding
    effective = dilation * (kernel - 1) + 1
    return effective // 2


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d(eps=1e-3, momentum=0.03) -> SiLU.

    Input ``[B, c1, H, W]``, output ``[B, c2, H', W']`` with ``H' = ceil(H / s)`` for the default
    padding. After :meth:`fuse` the BatchNorm is folded into ``conv`` and ``bn`` is ``None``.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act is True:
            self.act: nn.Module = _SHARED_SILU
        elif isinstance(act, nn.Module):
            self.act = act
        else:
            self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm's running statistics and affine into the convolution (inference only)."""
        if self.bn is None:
            return
        self.conv = fuse_conv_and_bn(self.conv, self.bn)
        self.bn = None


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias computing ``bn(conv(x))`` in eval mode; the inputs are not modified."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [c2]
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (conv_bias - bn.running_mean) * scale)
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused


class Bottleneck(nn.Module):
    """1x1 Conv then 3x3 Conv, with a residual add when ``shortcut`` and the channel counts agree."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1, g=g)
        self.add = bool(shortcut and c1 == c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions: ``cv3(cat(m(cv1(x)), cv2(x)))``; ``[B, c1, H, W] -> [B, c2, H, W]``."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools equal SPP's 5/9/13 pools; keeps H, W."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along dimension ``d`` (channels by default)."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
