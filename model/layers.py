"""Convolutional building blocks shared by HEViTPose and the EfficientViT baseline.

They follow EfficientViT (Liu et al., CVPR 2023) layer for layer, because the paper builds
HEViTPose on EfficientViT's sandwich block and subsample and the published parameter counts
require exactly these layers.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        # Residual branches start as identity (EfficientViT initialises their last BN to zero).
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class FFN(nn.Sequential):
    """Pointwise expand, ReLU, pointwise project (EfficientViT's FFN with ratio 2)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.pw1 = ConvBN(dim, hidden_dim)
        self.act = nn.ReLU()
        self.pw2 = ConvBN(hidden_dim, dim, bn_weight_init=0.0)


def depthwise_residual(dim: int) -> Residual:
    return Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=0.0))


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite with rd_ratio 0.25, as EfficientViT's PatchMerging uses it."""

    def __init__(self, dim: int, reduced_dim: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(dim, reduced_dim, 1)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced_dim, dim, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act(self.conv_reduce(self.pool(x))))
        return x * self.gate(s)


class PatchMerging(nn.Sequential):
    """EfficientViT's subsample: expand ×4, depthwise stride 2, squeeze-excite, project."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = 4 * dim
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.ReLU()
        self.conv2 = ConvBN(hidden, hidden, 3, 2, 1, groups=hidden)
        self.act2 = nn.ReLU()
        self.se = SqueezeExcite(hidden, hidden // 4)
        self.conv3 = ConvBN(hidden, out_dim)


class Subsample(nn.Sequential):
    """Between two stages: a residual DW + FFN at the old width, PatchMerging, the same at the new."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.dw0 = depthwise_residual(dim)
        self.ffn0 = Residual(FFN(dim, 2 * dim))
        self.merge = PatchMerging(dim, out_dim)
        self.dw1 = depthwise_residual(out_dim)
        self.ffn1 = Residual(FFN(out_dim, 2 * out_dim))
