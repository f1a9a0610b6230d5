"""MMCV's ``step`` learning-rate policy with linear warm-up, per iteration.

lr(it) = base * gamma ** (milestones passed by epoch it // iters_per_epoch)
         * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio))   while it < warmup_iters
"""

from __future__ import annotations

import bisect

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from training.config import OptimConfig


def lr_factor(iteration: int, iters_per_epoch: int, cfg: OptimConfig) -> float:
    epoch = iteration // max(1, iters_per_epoch)
    factor = cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
    if iteration < cfg.warmup_iters:
        factor *= 1 - (1 - iteration / cfg.warmup_iters) * (1 - cfg.warmup_ratio)
    return factor


def build_scheduler(optimizer: Optimizer, iters_per_epoch: int, cfg: OptimConfig) -> LambdaLR:
    """Stepped once per iteration; its state (the iteration count) goes into checkpoints."""
    return LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, cfg))
