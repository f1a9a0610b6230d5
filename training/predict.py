"""Top-down inference over a dataset: model/topdown's pass on every batch of crops."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from model.codec import HeatmapCodec
from model.topdown import decode_to_image, forward_heatmaps
from training.data import network_inputs


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    codec: HeatmapCodec,
    flip_index: list[int] | None,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """Returns ``index`` (N,), ``keypoints`` (N, K, 2) image px, ``scores`` (N, K), ``valid`` (N,).

    ``flip_index`` turns the flip test on (None: off); ``codec`` is the dataset's, the recipe's codec.
    """
    model.eval()
    indices, keypoints, scores, valid = [], [], [], []
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for batch in loader:
        inputs = network_inputs(batch["input"], device, channels_last)
        with amp:
            heatmaps = forward_heatmaps(lambda x: model(x).float(), inputs, codec, flip_index)
        kps, conf = decode_to_image(codec, heatmaps, batch["inv_matrix"].to(device))
        indices.append(batch["index"].numpy())
        keypoints.append(kps.double().cpu().numpy())
        scores.append(conf.float().cpu().numpy())
        valid.append(np.asarray(batch["valid"], dtype=bool))
    if not indices:
        return {
            "index": np.zeros(0, int),
            "keypoints": np.zeros((0, 0, 2)),
            "scores": np.zeros((0, 0)),
            "valid": np.zeros(0, bool),
        }
    return {
        "index": np.concatenate(indices),
        "keypoints": np.concatenate(keypoints),
        "scores": np.concatenate(scores),
        "valid": np.concatenate(valid),
    }
