"""One top-down pass: person boxes -> crops -> network (optional flip test) -> decode -> image pixels.

The service (``service/pose_model.py``), training's evaluation (``training/predict.py``), the tests
and ``bench/`` all go through these functions, so what serving computes is what evaluation measured.
Shapes: boxes (N, 4) image pixels; matrices (N, 2, 3) image -> input; inputs (N, 3, h, w);
heatmaps (N, K, h/s, w/s); keypoints (N, K, 2) image pixels; scores (N, K).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from model.codec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HeatmapCodec,
    apply_affine,
    get_warp_matrix,
    invert_affine,
    normalize,
    warp_crop,
)

Runner = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, h, w) inputs -> (N, K, h/s, w/s) heatmaps


def crop_matrices(codec: HeatmapCodec, bboxes: np.ndarray) -> np.ndarray:
    """(N, 4) boxes -> (N, 2, 3) image -> input matrices (the codec's padding and aspect ratio)."""
    center, scale = codec.bbox_to_center_scale(bboxes)
    return get_warp_matrix(center, scale, codec.input_size)


def crop_inputs(
    image: np.ndarray,
    matrices: np.ndarray,
    codec: HeatmapCodec,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Cut and normalise the crops of one (H, W, 3) RGB uint8 image on the CPU: (N, 3, h, w) float32."""
    crops = np.stack([warp_crop(image, m, codec.input_size) for m in matrices])  # (N, h, w, 3)
    return normalize(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), mean, std)


def forward_heatmaps(
    run: Runner, inputs: torch.Tensor, codec: HeatmapCodec, flip_index: Sequence[int] | None = None
) -> torch.Tensor:
    """The network's heatmaps; with ``flip_index``, averaged with those of the mirrored crops (one batch)."""
    if flip_index is None:
        return run(inputs)
    n = inputs.shape[0]
    heatmaps = run(torch.cat([inputs, inputs.flip(-1)], dim=0))
    return (heatmaps[:n] + codec.flip_back(heatmaps[n:], flip_index)) / 2


def decode_to_image(
    codec: HeatmapCodec, heatmaps: torch.Tensor, inv_matrices: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps -> keypoints (N, K, 2) in image pixels through (N, 2, 3) input -> image matrices, and scores."""
    keypoints, scores = codec.decode(heatmaps)
    inv = torch.as_tensor(inv_matrices).to(keypoints)
    return apply_affine(keypoints, inv), scores


@torch.no_grad()
def predict_bboxes(
    run: Runner,
    image: np.ndarray,
    bboxes: np.ndarray,
    codec: HeatmapCodec,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip_index: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole pass for one image's boxes: keypoints (N, K, 2) image pixels and scores (N, K)."""
    matrices = crop_matrices(codec, bboxes)
    heatmaps = forward_heatmaps(run, crop_inputs(image, matrices, codec, mean, std), codec, flip_index)
    keypoints, scores = decode_to_image(codec, heatmaps.float(), invert_affine(matrices))
    return keypoints.double().numpy(), scores.numpy()
