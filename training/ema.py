"""An exponential moving average of the network's weights (``optim.ema_decay``).

The average of the last few thousand steps' weights validates better than the last step's on a
noisy, small-batch run, as in timm's ``ModelEmaV3`` and the EMA hook of MMPose's RTMPose recipes.
The trainer validates, checkpoints (``"model"``) and so exports the average; the raw weights
that the optimiser moves are kept beside it in the checkpoint for ``--resume``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """``ema = d * ema + (1 - d) * model`` after each optimiser step, over every float tensor of the
    state (BatchNorm's running statistics included, so the average is a network in itself).

    ``d`` ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates ``n``: the first
    steps' weights, a fresh start's random ones included, are forgotten quickly.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} must be in (0, 1)")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        own = self.module.state_dict()
        avg, new = [], []
        for name, value in model.state_dict().items():  # state_dict tensors are detached already
            if value.dtype.is_floating_point:
                avg.append(own[name])
                new.append(value)
            else:  # e.g. BatchNorm's num_batches_tracked
                own[name].copy_(value)
        torch._foreach_lerp_(avg, new, 1.0 - d)  # one fused update, not a kernel per tensor on a GPU
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.module.load_state_dict(weights)
        self.updates = int(state["updates"])
