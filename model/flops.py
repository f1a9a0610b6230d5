"""Two ways of counting a network's cost.

``mmcv_flops`` reproduces mmcv 1.x ``get_model_complexity_info``, the counter behind the
paper's GFLOPs: forward hooks on modules of exactly the listed types, multiply-accumulates
for convolutions and linear layers, element counts for norms, activations and pooling.
Matrix products, functional calls and subclasses (``nn.MultiheadAttention``'s out_proj)
count zero. ``full_macs`` counts every multiply-accumulate through PyTorch's dispatcher,
attention included: the honest cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _conv(m: nn.Conv2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    positions = out.shape[0] * math.prod(out.shape[2:])
    return per_position * positions + (m.out_channels * positions if m.bias is not None else 0)


def _deconv(m: nn.ConvTranspose2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    # mmcv counts a transposed conv over its *input* positions.
    per_position = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups)
    flops = per_position * inp.shape[0] * math.prod(inp.shape[2:])
    if m.bias is not None:
        flops += m.out_channels * out.shape[0] * out.shape[2] * out.shape[2]  # mmcv's h*h, kept
    return flops


def _norm(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return inp.numel() * (2 if affine else 1)


def _linear(m: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    return inp.numel() * out.shape[-1]


_HOOKS: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], int]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.ConvTranspose2d: _deconv,
    nn.ReLU: lambda m, i, o: o.numel(),
    nn.ReLU6: lambda m, i, o: o.numel(),
    nn.PReLU: lambda m, i, o: o.numel(),
    nn.ELU: lambda m, i, o: o.numel(),
    nn.LeakyReLU: lambda m, i, o: o.numel(),
    nn.MaxPool2d: lambda m, i, o: i.numel(),
    nn.AvgPool2d: lambda m, i, o: i.numel(),
    nn.AdaptiveAvgPool2d: lambda m, i, o: i.numel(),
    nn.AdaptiveMaxPool2d: lambda m, i, o: i.numel(),
    nn.BatchNorm1d: _norm,
    nn.BatchNorm2d: _norm,
    nn.GroupNorm: _norm,
    nn.InstanceNorm2d: _norm,
    nn.LayerNorm: _norm,
    nn.Linear: _linear,
    nn.Upsample: lambda m, i, o: o.numel(),
}


@torch.no_grad()
def mmcv_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs as mmcv 1.x counts them, for one sample of shape (C, H, W)."""
    total = 0

    def hook(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += _HOOKS[type(m)](m, args[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in _HOOKS]
    try:
        model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


@torch.no_grad()
def full_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Every multiply-accumulate of one forward pass, attention matmuls included."""
    counter = FlopCounterMode(display=False)
    with counter:
        model.eval()(torch.zeros(1, *input_shape))
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
