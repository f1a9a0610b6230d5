"""HEViTPose (Wu, Tan and Li, 2023, arXiv:2311.13615) and the EfficientViT-M4 rows of its ablations.

The configuration that reproduces every published parameter and GFLOPs count is written up
in ``docs/model.md``; in short: Table 2's G and L rows are swapped, the
attention of a block is shared by its groups, and the spatial reduction overlaps.

Shapes for a (N, 3, H, W) input:
    stem                   (N, C1, H/4,  W/4)
    stage 1                (N, C1, H/4,  W/4)
    subsample + stage 2    (N, C2, H/8,  W/8)
    subsample + stage 3    (N, C3, H/16, W/16)
    head: 2 deconvs, 1x1   (N, K,  H/4,  W/4)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from model.attention import CGSRAttention, LocalWindowAttention
from model.layers import FFN, ConvBN, Residual, Subsample, depthwise_residual

Stem = Literal["peow1", "peow3", "peow7", "peow3x2"]
Mixer = Literal["cgsr", "window"]


@dataclass(frozen=True)
class HEViTPoseConfig:
    """One row of the paper's tables. Tuples hold one value per stage."""

    widths: tuple[int, int, int]
    depths: tuple[int, int, int] = (1, 2, 3)
    groups: tuple[int, int, int] = (4, 4, 4)
    reductions: tuple[int, int, int] = (8, 4, 2)
    heads: tuple[int, int, int] = (2, 4, 8)
    stem: Stem = "peow3"
    mixer: Mixer = "cgsr"
    # EfficientViT window attention only (mixer="window"):
    key_dim: int = 16
    window: int = 7
    kernels: tuple[int, ...] = (7, 5, 3, 3)
    head_widths: tuple[int, int] = (192, 96)


_B = HEViTPoseConfig(widths=(128, 256, 384))
_M4 = HEViTPoseConfig(widths=(128, 256, 384), groups=(4, 4, 4), heads=(4, 4, 4), mixer="window")

CONFIGS: dict[str, HEViTPoseConfig] = {
    "hevitpose-t": HEViTPoseConfig(widths=(64, 128, 192), groups=(4, 4, 4)),
    "hevitpose-s": HEViTPoseConfig(widths=(128, 192, 224), groups=(4, 3, 2)),
    "hevitpose-b": _B,
    # Table 4 / Table 6 rows (a), (b): EfficientViT-M4 with each patch embedding.
    "efficientvit-m4-peow1": replace(_M4, stem="peow1"),
    "efficientvit-m4-peow3": _M4,
    "efficientvit-m4-peow7": replace(_M4, stem="peow7"),
    "efficientvit-m4-peow3x2": replace(_M4, stem="peow3x2"),
    # Table 5 rows.
    "hevitpose-b-g222": replace(_B, groups=(2, 2, 2)),
    "hevitpose-b-g888": replace(_B, groups=(8, 8, 8)),
    "hevitpose-b-r421": replace(_B, reductions=(4, 2, 1)),
    "hevitpose-b-r1684": replace(_B, reductions=(16, 8, 4)),
}
MODEL_NAMES: tuple[str, ...] = tuple(CONFIGS)

# The network reduces by 16 before the head upsamples by 4.
STRIDE_MULTIPLE = 32
HEATMAP_STRIDE = 4


def build_stem(kind: Stem, dim: int) -> nn.Sequential:
    """Patch embedding with the overlap width (PEOW) of Table 4; all end at stride 4."""
    if kind == "peow3":
        return nn.Sequential(ConvBN(3, dim, 7, 4, 3))
    if kind == "peow1":
        return nn.Sequential(ConvBN(3, dim // 2, 3, 2, 1), nn.ReLU(), ConvBN(dim // 2, dim, 3, 2, 1))
    if kind == "peow7":
        up = nn.Sequential(nn.ConvTranspose2d(2 * dim, dim, 4, 2, 1, bias=False), nn.BatchNorm2d(dim))
        return nn.Sequential(ConvBN(3, 2 * dim, 15, 8, 7), nn.ReLU(), up)
    if kind == "peow3x2":
        return nn.Sequential(ConvBN(3, dim // 2, 7, 2, 3), nn.ReLU(), ConvBN(dim // 2, dim, 7, 2, 3))
    raise ValueError(f"unknown stem {kind!r}")


class HEViTPoseBlock(nn.Module):
    """Fig. 3b: DW conv, FFN, token mixer, DW conv, FFN; every step residual."""

    def __init__(self, cfg: HEViTPoseConfig, stage: int) -> None:
        super().__init__()
        dim = cfg.widths[stage]
        self.dw0 = depthwise_residual(dim)
        self.ffn0 = Residual(FFN(dim, 2 * dim))
        if cfg.mixer == "cgsr":
            mixer: nn.Module = CGSRAttention(dim, cfg.groups[stage], cfg.heads[stage], cfg.reductions[stage])
        else:
            mixer = LocalWindowAttention(dim, cfg.key_dim, cfg.heads[stage], cfg.window, cfg.kernels)
        self.mixer = Residual(mixer)
        self.dw1 = depthwise_residual(dim)
        self.ffn1 = Residual(FFN(dim, 2 * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


class HeatmapHead(nn.Sequential):
    """Two stride-2 deconvolutions (192, 96 channels) and a 1x1 conv to one heatmap per keypoint."""

    def __init__(self, in_chs: int, num_keypoints: int, widths: tuple[int, int] = (192, 96)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.ConvTranspose2d(in_chs, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            in_chs = width
        super().__init__(*layers, nn.Conv2d(in_chs, num_keypoints, 1))


class HEViTPose(nn.Module):
    def __init__(self, cfg: HEViTPoseConfig, num_keypoints: int = 17) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_keypoints = num_keypoints
        c1, c2, c3 = cfg.widths
        self.stem = build_stem(cfg.stem, c1)
        self.stage1 = nn.Sequential(*(HEViTPoseBlock(cfg, 0) for _ in range(cfg.depths[0])))
        self.stage2 = nn.Sequential(Subsample(c1, c2), *(HEViTPoseBlock(cfg, 1) for _ in range(cfg.depths[1])))
        self.stage3 = nn.Sequential(Subsample(c2, c3), *(HEViTPoseBlock(cfg, 2) for _ in range(cfg.depths[2])))
        self.head = HeatmapHead(c3, num_keypoints, cfg.head_widths)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The head as MMPose initialises its heatmap heads: deconvs and the last conv N(0, 0.001).
        for m in self.head.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Skipped while tracing for ONNX, where shapes are symbolic and the check would be baked in.
        if not torch.jit.is_tracing() and (x.shape[-2] % STRIDE_MULTIPLE or x.shape[-1] % STRIDE_MULTIPLE):
            raise ValueError(
                f"input height and width must be multiples of {STRIDE_MULTIPLE}, got {tuple(x.shape[-2:])}"
            )
        return self.head(self.forward_features(x))


def build_model(name: str, num_keypoints: int = 17) -> HEViTPose:
    """Build a randomly initialised network by its name in ``MODEL_NAMES``.

    Input: (N, 3, H, W) normalised with ImageNet mean/std, H and W multiples of 32.
    Output: heatmaps (N, num_keypoints, H/4, W/4).
    """
    try:
        cfg = CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None
    return HEViTPose(cfg, num_keypoints)
