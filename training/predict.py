"""Top-down inference over a dataset: crops -> heatmaps (flip test) -> image keypoints."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from model.codec import decode_heatmaps, flip_back, heatmap_to_image
from training.config import EvalConfig


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    flip_index: list[int],
    cfg: EvalConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress=None,
) -> dict[str, np.ndarray]:
    """Returns ``index`` (N,), ``keypoints`` (N, K, 2) image px, ``scores`` (N, K), ``valid`` (N,)."""
    model.eval()
    indices, keypoints, scores, valid = [], [], [], []
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for batch in loader:
        inputs = batch["input"].to(device, non_blocking=True)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        n = inputs.shape[0]
        with amp:
            if cfg.flip_test:
                out = model(torch.cat([inputs, inputs.flip(-1)], dim=0)).float()
                heatmaps = (out[:n] + flip_back(out[n:], flip_index, shift=cfg.shift_heatmap)) / 2
            else:
                heatmaps = model(inputs).float()
        kps, conf = decode_heatmaps(heatmaps, cfg.decode, cfg.blur_kernel)
        stride = inputs.shape[-1] // heatmaps.shape[-1]
        kps = heatmap_to_image(kps, batch["inv_matrix"].to(device), stride)
        indices.append(batch["index"].numpy())
        keypoints.append(kps.double().cpu().numpy())
        scores.append(conf.float().cpu().numpy())
        valid.append(np.asarray(batch["valid"], dtype=bool))
        if progress is not None:
            progress.update(n)
    if not indices:
        return {"index": np.zeros(0, int), "keypoints": np.zeros((0, 0, 2)), "scores": np.zeros((0, 0)), "valid": np.zeros(0, bool)}
    return {
        "index": np.concatenate(indices),
        "keypoints": np.concatenate(keypoints),
        "scores": np.concatenate(scores),
        "valid": np.concatenate(valid),
    }
