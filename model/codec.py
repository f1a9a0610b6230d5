"""The top-down pose codec shared by training and serving.

Coordinate frames, following MMPose 0.29's top-down heatmap pipeline:
    image    pixels of the original picture;
    input    pixels of the (W, H) crop the network sees, reached by an affine warp that
             sends the box center to (W/2, H/2);
    heatmap  pixels of the (W/s, H/s) output, heatmap x <-> input x * s (s = stride 4).

Boxes become a center and a scale: the box size in image pixels, padded (by the codec's
``bbox_padding``, 1.25 by default) and widened to the input's aspect ratio. Matrices are 2x3, mapping image -> input unless named ``inv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DecodeMethod = Literal["dark", "argmax"]


DECODE_METHODS: tuple[str, ...] = ("dark", "argmax")


@dataclass(frozen=True)
class HeatmapCodec:
    """Keypoints <-> Gaussian heatmaps for one input size, and the box rule that makes the crop.

    MMPose's ``MSRAHeatmap`` with the top-down box padding and the test-time flip shift: every
    value that training and serving must agree on. Training builds it from the recipe
    (``training.config.codec_from_config``), export writes it into the bundle's JSON (``codec``),
    and the service reads it from there, so a bundle is decoded the way its training decoded.
    """

    input_size: tuple[int, int] = (256, 256)  # (width, height), multiples of 32
    heatmap_stride: int = 4
    sigma: float = 2.0  # Gaussian target, in heatmap pixels
    bbox_padding: float = 1.25
    decode_method: DecodeMethod = "dark"
    blur_kernel: int = 11  # DARK's Gaussian blur: kernel 11 <-> sigma 2 in OpenCV's rule
    shift_heatmap: bool = True  # flip test: shift the flipped heatmaps one pixel (see flip_back)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        if any(v <= 0 or v % self.heatmap_stride for v in self.input_size):
            raise ValueError(f"codec input_size {self.input_size} must be positive multiples of {self.heatmap_stride}")
        if self.sigma <= 0 or self.bbox_padding <= 0:
            raise ValueError(f"codec sigma ({self.sigma}) and bbox_padding ({self.bbox_padding}) must be positive")
        if self.decode_method not in DECODE_METHODS:
            raise ValueError(f"codec decode_method {self.decode_method!r} is not one of {list(DECODE_METHODS)}")
        if self.blur_kernel < 3 or self.blur_kernel % 2 == 0:
            raise ValueError(f"codec blur_kernel {self.blur_kernel} must be an odd number >= 3")

    @property
    def heatmap_size(self) -> tuple[int, int]:
        w, h = self.input_size
        return w // self.heatmap_stride, h // self.heatmap_stride

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]

    def bbox_to_center_scale(self, bboxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes -> centers and scales (padded, widened to the input's aspect ratio)."""
        return bbox_to_center_scale(bboxes, self.aspect_ratio, self.bbox_padding)

    def encode(self, keypoints: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-pixel keypoints -> heatmap targets and weights (see :func:`encode_heatmaps`)."""
        return encode_heatmaps(keypoints, visible, self)

    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K, h, w) heatmaps -> keypoints (N, K, 2) in input pixels and scores (N, K)."""
        keypoints, scores = decode_heatmaps(heatmaps, self.decode_method, self.blur_kernel)
        return keypoints * self.heatmap_stride, scores

    def flip_back(self, heatmaps: torch.Tensor, flip_index: Sequence[int]) -> torch.Tensor:
        return flip_back(heatmaps, flip_index, self.shift_heatmap)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeatmapCodec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown codec key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


# --------------------------------------------------------------------------- boxes, affine


def bbox_to_center_scale(
    bboxes: np.ndarray, aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) boxes [x1, y1, x2, y2] -> centers (N, 2) and scales (N, 2) in image pixels."""
    bboxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    center = (bboxes[:, :2] + bboxes[:, 2:]) / 2
    w = bboxes[:, 2] - bboxes[:, 0]
    h = bboxes[:, 3] - bboxes[:, 1]
    w, h = np.maximum(w, h * aspect_ratio), np.maximum(h, w / aspect_ratio)
    return center, np.stack([w, h], axis=1) * padding


def get_warp_matrix(
    center: np.ndarray,
    scale: np.ndarray,
    output_size: tuple[int, int],
    rotation: np.ndarray | float = 0.0,
    inv: bool = False,
) -> np.ndarray:
    """(N, 2, 3) matrices mapping image -> input (or back with ``inv``).

    The closed form of MMPose's three-point ``get_affine_transform``: rotate by ``rotation``
    degrees about the center, scale so that ``scale[:, 0]`` image pixels span the output
    width, and put the center at (W/2, H/2).
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 2)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 2)
    theta = np.deg2rad(np.broadcast_to(np.asarray(rotation, dtype=np.float64), (len(center),)))
    s = output_size[0] / scale[:, 0]
    cos, sin = np.cos(theta), np.sin(theta)
    # input = s * R(-theta) @ (image - center) + output_center
    linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2) * s[:, None, None]
    out_center = np.array([output_size[0] / 2, output_size[1] / 2])
    translation = out_center - np.einsum("nij,nj->ni", linear, center)
    matrix = np.concatenate([linear, translation[:, :, None]], axis=2)
    return invert_affine(matrix) if inv else matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of (..., 2, 3) affine matrices."""
    linear_inv = np.linalg.inv(matrix[..., :2])
    translation = -np.einsum("...ij,...j->...i", linear_inv, matrix[..., 2])
    return np.concatenate([linear_inv, translation[..., None]], axis=-1)


def apply_affine(points: np.ndarray | torch.Tensor, matrix: np.ndarray | torch.Tensor):
    """Map (N, K, 2) points through (N, 2, 3) matrices."""
    return points @ matrix[..., :2].swapaxes(-1, -2) + matrix[..., None, :, 2]


def warp_crop(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Crop one (H, W, C) image with one (2, 3) image -> input matrix (OpenCV, bilinear)."""
    return cv2.warpAffine(image, matrix.astype(np.float64), output_size, flags=cv2.INTER_LINEAR)


def warp_crops_torch(
    images: Sequence[torch.Tensor],
    image_index: Sequence[int],
    matrices: torch.Tensor,
    output_size: tuple[int, int],
) -> torch.Tensor:
    """Crop many boxes at once on any device; the torch twin of :func:`warp_crop`.

    images: C x H x W float tensors; image_index[n] names the image of crop n;
    matrices: (N, 2, 3) image -> input. Returns (N, C, out_h, out_w); outside is zero.
    """
    out_w, out_h = output_size
    device, dtype = matrices.device, matrices.dtype
    inv = torch.linalg.inv(_to_3x3(matrices.double()))  # input pixel -> image pixel
    crops = []
    index = torch.as_tensor(list(image_index), device=device)
    for i, image in enumerate(images):
        rows = (index == i).nonzero().flatten()
        if rows.numel() == 0:
            continue
        _, h, w = image.shape
        # grid_sample's align_corners=False puts pixel centers at (2x + 1) / size - 1.
        to_norm = _pixel_to_normalized(w, h, device)
        from_norm = torch.linalg.inv(_pixel_to_normalized(out_w, out_h, device))
        theta = (to_norm @ inv[rows] @ from_norm)[:, :2].to(dtype)
        grid = F.affine_grid(theta, [len(rows), image.shape[0], out_h, out_w], align_corners=False)
        src = image.to(dtype).unsqueeze(0).expand(len(rows), -1, -1, -1)
        crops.append((rows, F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)))
    out = torch.empty(len(index), images[0].shape[0], out_h, out_w, device=device, dtype=dtype)
    for rows, crop in crops:
        out[rows] = crop
    return out


def _to_3x3(matrix: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=matrix.dtype, device=matrix.device)
    return torch.cat([matrix, bottom.expand(*matrix.shape[:-2], 1, 3)], dim=-2)


def _pixel_to_normalized(w: int, h: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64, device=device)


def normalize(
    crops: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 255] -> network input; mean and std are per channel on [0, 1]."""
    mean_t = torch.tensor(mean, device=crops.device, dtype=crops.dtype).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=crops.device, dtype=crops.dtype).view(1, 3, 1, 1) * 255
    return (crops - mean_t) / std_t


# --------------------------------------------------------------------------- targets


def encode_heatmaps(
    keypoints: torch.Tensor, visible: torch.Tensor, codec: HeatmapCodec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian heatmap targets with per-keypoint weights.

    keypoints: (..., K, 2) in input pixels; visible: (..., K), > 0 where labelled (a value
    below 1 is a label's confidence and becomes its weight).
    Returns heatmaps (..., K, h, w) peaking at 1 at the exact sub-pixel position, and
    weights (..., K): 0 for unlabelled keypoints and those outside the crop.
    """
    w, h = codec.heatmap_size
    mu = keypoints.float() / codec.heatmap_stride
    inside = (mu[..., 0] >= 0) & (mu[..., 0] <= w - 1) & (mu[..., 1] >= 0) & (mu[..., 1] <= h - 1)
    weights = torch.where(inside & (visible > 0), visible.float().clamp(max=1.0), 0.0)
    xs = torch.arange(w, dtype=torch.float32, device=keypoints.device)
    ys = torch.arange(h, dtype=torch.float32, device=keypoints.device)
    gx = torch.exp(-((xs - mu[..., 0:1]) ** 2) / (2 * codec.sigma**2))  # (..., K, w)
    gy = torch.exp(-((ys - mu[..., 1:2]) ** 2) / (2 * codec.sigma**2))  # (..., K, h)
    heatmaps = gy.unsqueeze(-1) * gx.unsqueeze(-2) * (weights > 0).float()[..., None, None]
    return heatmaps, weights


# --------------------------------------------------------------------------- decoding


def _argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k, h, w = heatmaps.shape
    scores, flat = heatmaps.reshape(n, k, -1).max(dim=-1)
    return flat % w, flat // w, scores


def _at(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """maps (N, K, H, W) sampled at integer (N, K) positions."""
    w = maps.shape[-1]
    return maps.flatten(2).gather(2, (y * w + x).unsqueeze(-1)).squeeze(-1)


def gaussian_blur(heatmaps: torch.Tensor, kernel: int) -> torch.Tensor:
    """DARK's blur: zero-padded Gaussian (OpenCV's sigma for the kernel), peak kept."""
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    t = torch.arange(kernel, dtype=heatmaps.dtype, device=heatmaps.device) - (kernel - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    n, k, h, w = heatmaps.shape
    x = heatmaps.reshape(n * k, 1, h, w)
    x = F.conv2d(x, g.view(1, 1, 1, -1), padding=(0, kernel // 2))
    x = F.conv2d(x, g.view(1, 1, -1, 1), padding=(kernel // 2, 0)).reshape(n, k, h, w)
    peak_before = heatmaps.amax(dim=(2, 3), keepdim=True)
    peak_after = x.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return x * peak_before / peak_after


def decode_heatmaps(
    heatmaps: torch.Tensor, method: DecodeMethod = "dark", blur_kernel: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, h, w) heatmaps -> keypoints (N, K, 2) in heatmap pixels and scores (N, K).

    ``argmax``: the peak plus MMPose's quarter-pixel step towards the higher neighbour.
    ``dark``: the peak refined by a second-order Taylor expansion of the log of the
    blurred heatmap (Zhang et al., CVPR 2020). The score is the peak of the raw heatmap.
    """
    heatmaps = heatmaps.float()
    n, k, h, w = heatmaps.shape
    px, py, scores = _argmax(heatmaps)
    coords = torch.stack([px, py], dim=-1).float()
    if method == "argmax":
        ok = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        xs, ys = px.clamp(1, w - 2), py.clamp(1, h - 2)
        dx = _at(heatmaps, xs + 1, ys) - _at(heatmaps, xs - 1, ys)
        dy = _at(heatmaps, xs, ys + 1) - _at(heatmaps, xs, ys - 1)
        step = torch.stack([dx.sign(), dy.sign()], dim=-1) * 0.25
        return coords + step * ok.unsqueeze(-1), scores
    if method != "dark":
        raise ValueError(f"unknown decode method {method!r}")

    logs = gaussian_blur(heatmaps, blur_kernel).clamp_min(1e-10).log()
    ok = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    x, y = px.clamp(2, w - 3), py.clamp(2, h - 3)
    center = _at(logs, x, y)
    dx = 0.5 * (_at(logs, x + 1, y) - _at(logs, x - 1, y))
    dy = 0.5 * (_at(logs, x, y + 1) - _at(logs, x, y - 1))
    dxx = 0.25 * (_at(logs, x + 2, y) - 2 * center + _at(logs, x - 2, y))
    dyy = 0.25 * (_at(logs, x, y + 2) - 2 * center + _at(logs, x, y - 2))
    dxy = 0.25 * (_at(logs, x + 1, y + 1) - _at(logs, x + 1, y - 1) - _at(logs, x - 1, y + 1) + _at(logs, x - 1, y - 1))
    det = dxx * dyy - dxy**2
    ok = ok & (det != 0)
    det = torch.where(ok, det, torch.ones_like(det))
    # offset = -H^-1 g, with H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    off_x = -(dyy * dx - dxy * dy) / det
    off_y = -(-dxy * dx + dxx * dy) / det
    offset = torch.stack([off_x, off_y], dim=-1) * ok.unsqueeze(-1)
    # The Taylor step is unbounded on flat or multi-peak heatmaps; a peak cannot lie outside the
    # heatmap, so neither may the answer.
    refined = coords + offset
    refined[..., 0].clamp_(0, w - 1)
    refined[..., 1].clamp_(0, h - 1)
    return refined, scores


# --------------------------------------------------------------------------- flip test


def flip_back(heatmaps: torch.Tensor, flip_index: Sequence[int], shift: bool = True) -> torch.Tensor:
    """Heatmaps of a horizontally flipped crop -> heatmaps of the original crop.

    Mirrors them, swaps left and right, and shifts one pixel right as MMPose does: the
    heatmap grid samples the input at x * stride, so mirroring about the heatmap's center
    lands (stride - 1) input pixels short of mirroring about the input's center.
    """
    out = heatmaps.flip(-1)[:, list(flip_index)]
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
    return out
