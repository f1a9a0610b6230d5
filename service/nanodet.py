"""The shipped person detector's network in PyTorch, its weights read from the shipped ONNX file.

``service/assets/nanodet-m-416-coco.onnx`` is called NanoDet-m by the package it came from, but its
graph is NanoDet-g's (RangiLyu/nanodet, ``config/legacy_v0.x_configs/nanodet-g.yml``, Apache-2.0):
a CSP backbone of plain 3x3 convs (``CustomCspNet``, not ShuffleNetV2), LeakyReLU(0.1), a PAN of
1x1 laterals joined by bilinear resizes, and a GFL head with one 3x3 conv per level and a shared
class/box 1x1 conv (80 classes + 4 x 11 bins); 3.8 M parameters, as nanodet-g.yml says. The
PyTorch -> ONNX -> TF -> TF.js -> ONNX trip folded every BatchNorm (and NanoDet's input
normalisation) into the conv before it, so each ``ConvModule`` here is a conv with a bias plus its
activation. Explicit zero ``Pad`` nodes before the convs are symmetric (one pixel), which is the
convs' own ``padding=1``; the ``-inf`` pad before the max pool is ``MaxPool2d(padding=1)``.

Module names follow NanoDet's (``backbone.stages.3.res_blocks.0.mid_conv``, ``fpn.lateral_convs``,
``head.cls_convs``, ``head.gfl_cls``) so its configs and code read alongside. The weights come from
the ONNX file at start-up (:func:`nanodet_from_onnx`): ``onnx`` is already a core dependency (the
pose model's CPU backend exports through it), the file is the single SHA-pinned copy, and a
second copy as safetensors would add 7.6 MB (float16) or 15 MB (float32) to the repository.

``NanoDet.forward`` returns what the ONNX graph returns, batched: per stride 8, 16, 32, class
probabilities ``(N, g*g, 80)`` and box-distribution logits ``(N, g*g, 44)``, cells row-major.
The ONNX graph's reshapes fix its batch at 1; this network takes any batch.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 80
REG_MAX = 10  # GFL bins per side: REG_MAX + 1
STRIDES = (8, 16, 32)
LEAKY_SLOPE = 0.1  # NanoDet's act_layers("LeakyReLU"); checked against the graph on load

# nanodet-g.yml's backbone: ("Conv", in, out, kernel, stride), ("MaxPool", kernel, stride),
# ("CspBlock", channels, residual blocks, kernel, stride). Stages 3, 4, 5 feed the PAN.
NET_CFG: tuple[tuple, ...] = (
    ("Conv", 3, 32, 3, 2),  # 1/2
    ("MaxPool", 3, 2),  # 1/4
    ("CspBlock", 32, 1, 3, 1),  # 1/4
    ("CspBlock", 64, 2, 3, 2),  # 1/8
    ("CspBlock", 128, 2, 3, 2),  # 1/16
    ("CspBlock", 256, 3, 3, 2),  # 1/32
)
OUT_STAGES = (3, 4, 5)


class ConvModule(nn.Module):
    """Conv + LeakyReLU; the BatchNorm NanoDet has between them is folded into the conv's bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=True)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class TinyResBlock(nn.Module):
    """Halve the channels, one more conv, concatenate both halves (NanoDet's ``res_type='concat'``)."""

    def __init__(self, chs: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_conv = ConvModule(chs, chs // 2, kernel_size)
        self.mid_conv = ConvModule(chs // 2, chs // 2, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.mid_conv(x), x), dim=1)


class CspBlock(nn.Module):
    """Strided conv, residual blocks and a conv, concatenated with the strided conv's output: 2x channels."""

    def __init__(self, chs: int, num_res: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.in_conv = ConvModule(chs, chs, kernel_size, stride)
        self.res_blocks = nn.Sequential(*[TinyResBlock(chs, kernel_size) for _ in range(num_res)])
        self.res_out_conv = ConvModule(chs, chs, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.res_out_conv(self.res_blocks(x)), x), dim=1)


class CustomCspNet(nn.Module):
    def __init__(self, net_cfg: tuple[tuple, ...] = NET_CFG, out_stages: tuple[int, ...] = OUT_STAGES) -> None:
        super().__init__()
        self.out_stages = out_stages
        self.stages = nn.ModuleList()
        for kind, *args in net_cfg:
            if kind == "Conv":
                in_chs, out_chs, k, s = args
                self.stages.append(ConvModule(in_chs, out_chs, k, s))
            elif kind == "MaxPool":
                k, s = args
                self.stages.append(nn.MaxPool2d(k, s, padding=(k - 1) // 2))
            elif kind == "CspBlock":
                chs, num_res, k, s = args
                self.stages.append(CspBlock(chs, num_res, k, s))
            else:
                raise ValueError(f"unknown stage {kind}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_stages:
                out.append(x)
        return out


class PAN(nn.Module):
    """1x1 laterals, a top-down pass (2x bilinear up, add) and a bottom-up pass (0.5x bilinear, add).

    No convs after the additions: NanoDet's legacy PAN. The graph's ``Resize`` nodes are linear with
    ``half_pixel`` coordinates, which is ``F.interpolate(mode="bilinear", align_corners=False)``
    both ways (downsampling by 2 that way averages each 2x2 block; no antialiasing, as in ONNX).
    """

    def __init__(self, in_chs: tuple[int, ...] = (128, 256, 512), out_chs: int = 128) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_chs, 1, act=False) for c in in_chs])

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2.0, mode="bilinear")
        outs = list(laterals)
        for i in range(len(outs) - 1):
            outs[i + 1] = outs[i + 1] + F.interpolate(outs[i], scale_factor=0.5, mode="bilinear")
        return outs


class NanoDetHead(nn.Module):
    """Per level: a 3x3 conv, then one 1x1 conv for classes and box bins (``share_cls_reg``)."""

    def __init__(self, in_chs: int = 128, feat_chs: int = 128, stacked_convs: int = 1, num_levels: int = 3) -> None:
        super().__init__()
        self.cls_convs = nn.ModuleList(
            nn.ModuleList([ConvModule(in_chs if i == 0 else feat_chs, feat_chs, 3) for i in range(stacked_convs)])
            for _ in range(num_levels)
        )
        self.gfl_cls = nn.ModuleList(nn.Conv2d(feat_chs, NUM_CLASSES + 4 * (REG_MAX + 1), 1) for _ in range(num_levels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for x, convs, gfl_cls in zip(feats, self.cls_convs, self.gfl_cls):
            for conv in convs:
                x = conv(x)
            cls_score, bbox_pred = gfl_cls(x).split([NUM_CLASSES, 4 * (REG_MAX + 1)], dim=1)
            # NanoDet's ONNX export layout: (N, C, H, W) -> (N, H*W, C), classes through a sigmoid.
            out.append(cls_score.sigmoid().flatten(2).transpose(1, 2))
            out.append(bbox_pred.flatten(2).transpose(1, 2))
        return out


class NanoDet(nn.Module):
    """RGB in [0, 1], (N, 3, 416, 416) -> [cls 8, reg 8, cls 16, reg 16, cls 32, reg 32]."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = CustomCspNet()
        self.fpn = PAN()
        self.head = NanoDetHead()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.fpn(self.backbone(x)))


# ---------------------------------------------------------------------------- weights


def _convs_in_execution_order(model: nn.Module) -> list[nn.Conv2d]:
    """The model's convs in the order a forward pass calls them (forward hooks on a small input)."""
    order: list[nn.Conv2d] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in convs]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return order


def read_onnx_convs(path: str | Path) -> list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
    """(weight, bias, strides) of every Conv in the ONNX graph, in the original network's order.

    The conversion named the folded weights ``split``, ``split_1``, ... ``split_33``, numbered in
    the order the original PyTorch forward pass used them: backbone, PAN laterals 0-2, then per
    level the head's conv and its gfl_cls (execution order, not NanoDet's registration order, which
    lists the three head convs before the three gfl_cls; the shapes tell them apart). The graph's
    node list is topologically sorted but puts the neck and head levels in another order, so the
    numbers decide. The other ops are checked to be the ones this module implements, with the
    same constants.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    expected_ops = {"Conv", "Pad", "LeakyRelu", "MaxPool", "Concat", "Add", "Resize", "Split", "Sigmoid",
                    "Reshape", "Transpose", "Cast", "Expand", "ScatterND"}  # fmt: skip
    convs = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in expected_ops:
            raise ValueError(f"{path}: op {node.op_type} ({node.name}) is not in NanoDet-g's graph")
        if node.op_type == "LeakyRelu" and abs(attrs["alpha"] - LEAKY_SLOPE) > 1e-6:
            raise ValueError(f"{path}: LeakyRelu alpha {attrs['alpha']}, expected {LEAKY_SLOPE}")
        if node.op_type == "Resize":
            mode = (attrs.get("mode"), attrs.get("coordinate_transformation_mode"))
            if mode != (b"linear", b"half_pixel"):
                raise ValueError(f"{path}: Resize {node.name} is {mode}, expected linear / half_pixel")
        if node.op_type == "MaxPool" and (list(attrs["kernel_shape"]), list(attrs["strides"])) != ([3, 3], [2, 2]):
            raise ValueError(f"{path}: MaxPool {node.name} is not 3x3 stride 2")
        if node.op_type == "Pad" and node.input[1] in init:
            pads = numpy_helper.to_array(init[node.input[1]]).tolist()
            if pads != [0, 0, 1, 1, 0, 0, 1, 1]:
                raise ValueError(f"{path}: Pad {node.name} pads {pads}, expected one pixel on each side")
        if node.op_type == "Conv":
            match = re.search(r"split(?:_(\d+))?:0$", node.input[1])
            if match is None or attrs.get("group", 1) != 1:
                raise ValueError(f"{path}: Conv {node.name} ({node.input[1]}) is not one of NanoDet-g's")
            index = int(match.group(1) or 0)
            weight = numpy_helper.to_array(init[node.input[1]])
            bias = numpy_helper.to_array(init[node.input[2]])
            convs.append((index, weight, bias, tuple(attrs.get("strides", (1, 1)))))
    convs.sort(key=lambda c: c[0])
    if [c[0] for c in convs] != list(range(len(convs))):
        raise ValueError(f"{path}: conv weights are not split_0..split_{len(convs) - 1}")
    return [c[1:] for c in convs]


def load_onnx_weights(model: NanoDet, path: str | Path) -> None:
    """Copy the ONNX graph's conv weights into ``model``; every shape and stride must match."""
    convs = _convs_in_execution_order(model)
    onnx_convs = read_onnx_convs(path)
    if len(convs) != len(onnx_convs):
        raise ValueError(f"{path}: {len(onnx_convs)} convs, NanoDet-g has {len(convs)}; "
                         "the torch detector backend implements only the shipped graph")  # fmt: skip
    with torch.no_grad():
        for i, (conv, (weight, bias, strides)) in enumerate(zip(convs, onnx_convs)):
            if tuple(conv.weight.shape) != weight.shape or tuple(conv.stride) != strides:
                raise ValueError(f"{path}: conv {i} is {weight.shape} stride {strides}, "
                                 f"expected {tuple(conv.weight.shape)} stride {conv.stride}")  # fmt: skip
            conv.weight.copy_(torch.tensor(weight))  # a copy: onnx's arrays are read-only views
            conv.bias.copy_(torch.tensor(bias))


def nanodet_from_onnx(path: str | Path) -> NanoDet:
    """NanoDet-g with the shipped ONNX file's weights, in eval mode, on the CPU, float32."""
    model = NanoDet().eval()
    load_onnx_weights(model, path)
    return model
