"""The top-down sample: read an image, augment, crop, normalise, and make heatmap targets.

Training augmentation follows MMPose 0.29's train pipeline, in its order: random center
shift (COCO), random flip, half-body (COCO), random scale and rotation, affine crop, ImageNet
normalisation, Gaussian targets with weights. Every random draw of sample ``i`` in epoch
``e`` comes from a generator seeded by ``(seed, e, i)``, so a sample does not depend on the
worker that makes it, and a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from model.codec import CodecConfig, apply_affine, encode_heatmaps, get_warp_matrix, normalize, warp_crop
from training.config import AugmentConfig
from training.annotations import Instances


@dataclass
class Crop:
    center: np.ndarray
    scale: np.ndarray
    rotation: float
    flip: bool


def flip_matrix(image_width: int) -> np.ndarray:
    """Image x -> mirrored image x, as MMPose's ``fliplr_joints``: x' = width - 1 - x."""
    return np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0]])


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine ``a`` after ``b``."""
    return a[:, :2] @ np.concatenate([b[:, :2], b[:, 2:]], axis=1) + np.concatenate(
        [np.zeros((2, 2)), a[:, 2:]], axis=1
    )


def half_body(
    keypoints: np.ndarray,
    visible: np.ndarray,
    upper_ids: tuple[int, ...],
    aspect_ratio: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray] | None:
    """MMPose's ``TopDownHalfBodyTransform.half_body_transform``: a box around one half."""
    upper = [keypoints[j] for j in range(len(visible)) if visible[j] > 0 and j in upper_ids]
    lower = [keypoints[j] for j in range(len(visible)) if visible[j] > 0 and j not in upper_ids]
    # MMPose draws randn() here, not rand(): the upper half is chosen ~69% of the time.
    if rng.standard_normal() < 0.5 and len(upper) > 2:
        selected = upper
    elif len(lower) > 2:
        selected = lower
    else:
        selected = upper
    if len(selected) < 2:
        return None
    pts = np.asarray(selected)
    center = pts.mean(axis=0)
    w, h = pts.max(axis=0) - pts.min(axis=0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) * 1.5


def random_crop(
    center: np.ndarray,
    scale: np.ndarray,
    keypoints: np.ndarray,
    visible: np.ndarray,
    image_width: int,
    flip_index: list[int],
    aspect_ratio: float,
    aug: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[Crop, np.ndarray, np.ndarray]:
    """Draw one training crop; returns it and the keypoints in the (maybe mirrored) image."""
    center, scale = center.copy(), scale.copy()
    if aug.center_shift_prob > 0 and rng.random() < aug.center_shift_prob:
        # TopDownRandomShiftBboxCenter: uniform in +-shift_factor of the padded box
        center = center + rng.uniform(-1, 1, 2) * aug.center_shift_factor * scale
    flip = bool(aug.flip_prob > 0 and rng.random() <= aug.flip_prob)
    if flip:
        keypoints = keypoints[flip_index].copy()
        keypoints[:, 0] = image_width - 1 - keypoints[:, 0]
        visible = visible[flip_index]
        center[0] = image_width - center[0] - 1
    if aug.half_body_prob > 0 and (visible > 0).sum() > aug.half_body_min_joints and rng.random() < aug.half_body_prob:
        hb = half_body(keypoints, visible, aug.upper_body_ids, aspect_ratio, rng)
        if hb is not None:
            center, scale = hb
    sf, rf = aug.scale_factor, aug.rotation_factor
    scale = scale * np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf)
    r = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
    rotation = r if rng.random() <= aug.rotation_prob else 0.0
    return Crop(center, scale, rotation, flip), keypoints, visible


class TopDownDataset(Dataset):
    """One sample per person instance.

    Returns a dict: ``input`` (3, H, W) float32 normalised; ``target`` (K, h, w) and
    ``target_weight`` (K,) for training; ``inv_matrix`` (2, 3) input -> image; ``index``;
    ``valid`` (False when the image could not be read: the sample is all zeros then, and
    the runner counts it).
    """

    def __init__(
        self,
        instances: Instances,
        codec: CodecConfig,
        augment: AugmentConfig | None = None,
        train: bool = False,
        seed: int = 0,
    ):
        self.instances = instances
        self.codec = codec
        self.augment = augment or AugmentConfig()
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.flip_index = instances.keypoint_set.flip_index

    def __len__(self) -> int:
        return len(self.instances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def read_image(self, index: int) -> np.ndarray | None:
        path = self.instances.image_paths[index]
        try:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
        except cv2.error:
            image = None
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``dataset[i]``, or ``dataset[(epoch, i)]`` as the training sampler asks for it, so that
        persistent loader workers need not be told the epoch."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        inst = self.instances
        codec = self.codec
        w, h = codec.input_size
        image = self.read_image(index)
        keypoints, visible = inst.keypoints[index], inst.visible[index]
        center, scale = inst.centers[index], inst.scales[index]
        valid = image is not None
        image_width = image.shape[1] if valid else 1
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            crop, keypoints, visible = random_crop(
                center, scale, keypoints, visible, image_width, self.flip_index, codec.aspect_ratio, self.augment, rng
            )
        else:
            crop = Crop(center, scale, 0.0, False)
        matrix = get_warp_matrix(crop.center, crop.scale, (w, h), crop.rotation)[0]
        if crop.flip:
            matrix = compose(matrix, flip_matrix(image_width))
        if valid:
            pixels = cv2.cvtColor(warp_crop(image, matrix, (w, h)), cv2.COLOR_BGR2RGB)
            pixels = torch.from_numpy(pixels).permute(2, 0, 1).float()
        else:
            pixels = torch.zeros(3, h, w)
        sample = {
            "input": normalize(pixels[None])[0] if valid else pixels,
            "inv_matrix": torch.from_numpy(get_warp_matrix(crop.center, crop.scale, (w, h), crop.rotation, inv=True)[0]),
            "index": index,
            "valid": valid,
        }
        if self.train:
            kps_input = apply_affine(
                np.asarray(keypoints, dtype=np.float64)[None], get_warp_matrix(crop.center, crop.scale, (w, h), crop.rotation)
            )[0]
            target, weight = encode_heatmaps(
                torch.from_numpy(kps_input).float(), torch.from_numpy(np.asarray(visible)).float() * valid, codec
            )
            sample["target"], sample["target_weight"] = target, weight
            sample["flipped"] = crop.flip
        return sample
