"""Token mixers: HEViTPose's CGSR-MHA and EfficientViT's cascaded group window attention.

Shapes are written (batch, channels, height, width) for feature maps and
(batch, tokens, channels) for token sequences.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from model.layers import ConvBN


class SpatialReductionAttention(nn.Module):
    """L(X_g, r) of the paper's Eq. 7: attention of full-resolution queries over a reduced copy.

    Parameters are laid out exactly as in ``nn.MultiheadAttention`` (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so a state dict moves between the two, but the
    computation goes through ``scaled_dot_product_attention``, which picks a fused kernel.

    Choices the published counts leave open (each ≤ 0.006 M params): the reduction conv has
    a bias and its own LayerNorm; queries get one LayerNorm that the key/value tokens share
    where there is no reduction; the attention output gets a LayerNorm (Fig. 3c).
    """

    def __init__(self, dim: int, num_heads: int, reduction: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"group width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.reduction = reduction
        if reduction > 1:
            # Overlapping reduction (kernel 2r-1, stride r): the plain PVT kernel r misses Table 5.
            self.sr = nn.Conv2d(dim, dim, 2 * reduction - 1, reduction, reduction - 1)
            self.sr_norm = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = NonDynamicallyQuantizableLinear(dim, dim)
        self.out_norm = nn.LayerNorm(dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm(x.flatten(2).transpose(1, 2))  # (B, H*W, c)
        if self.reduction > 1:
            kv = self.sr_norm(self.sr(x).flatten(2).transpose(1, 2))  # (B, ceil(H/r)*ceil(W/r), c)
        else:
            kv = q
        q = F.linear(q, self.in_proj_weight[:c], self.in_proj_bias[:c])
        k, v = F.linear(kv, self.in_proj_weight[c:], self.in_proj_bias[c:]).chunk(2, dim=-1)
        heads = self.num_heads
        q = q.view(b, -1, heads, c // heads).transpose(1, 2)  # (B, heads, H*W, c/heads)
        k = k.reshape(b, -1, heads, c // heads).transpose(1, 2)
        v = v.reshape(b, -1, heads, c // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, h * w, c)
        out = self.out_norm(self.out_proj(out))
        return out.transpose(1, 2).reshape(b, c, h, w)


class CGSRAttention(nn.Module):
    """Cascaded Group Spatial Reduction MHA (Fig. 3c, Eqs. 6-8).

    The channels are split into ``groups``; group g attends over its own slice plus the
    output of group g-1. One attention module is shared by all groups of a block: the
    published parameter counts fall as 1/G² across Table 5, which only sharing explains.
    """

    def __init__(self, dim: int, groups: int, num_heads: int, reduction: int) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"width {dim} is not divisible by {groups} groups")
        self.groups = groups
        self.attn = SpatialReductionAttention(dim // groups, num_heads, reduction)
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(dim, dim, bn_weight_init=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        feat = None
        for x_g in x.chunk(self.groups, dim=1):
            feat = self.attn(x_g if feat is None else x_g + feat)
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=1))


class CascadedGroupAttention(nn.Module):
    """EfficientViT's cascaded group attention inside one window (the baseline rows)."""

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int,
        attn_ratio: float,
        window: int,
        kernels: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.qkvs = nn.ModuleList(ConvBN(dim // num_heads, 2 * key_dim + self.d) for _ in range(num_heads))
        self.dws = nn.ModuleList(ConvBN(key_dim, key_dim, k, 1, k // 2, groups=key_dim) for k in kernels[:num_heads])
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(self.d * num_heads, dim, bn_weight_init=0.0))

        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, h*w, h*w)
        outs = []
        feat = None
        for i, x_i in enumerate(x.chunk(self.num_heads, dim=1)):
            feat = self.qkvs[i](x_i if feat is None else x_i + feat)
            q, k, v = feat.split([self.key_dim, self.key_dim, self.d], dim=1)
            q = self.dws[i](q)
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
            attn = (q.transpose(-2, -1) @ k) * self.scale + bias[i]
            feat = (v @ attn.softmax(dim=-1).transpose(-2, -1)).view(b, self.d, h, w)
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=1))


class LocalWindowAttention(nn.Module):
    """Zero-pads to whole windows, runs CascadedGroupAttention in each, and crops back."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.window = window
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, dim / (key_dim * num_heads), window, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        win = self.window
        pad_b, pad_r = (-h) % win, (-w) % win
        x = F.pad(x, (0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // win, pw // win
        x = x.view(b, c, nh, win, nw, win).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, c, win, win)
        x = self.attn(x)
        x = x.view(b, nh, nw, c, win, win).permute(0, 3, 1, 4, 2, 5).reshape(b, c, ph, pw)
        return x[:, :, :h, :w]
