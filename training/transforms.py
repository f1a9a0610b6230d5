"""Training augmentation: which crop of the image a sample is (center, scale, rotation, flip).

It follows MMPose 0.29's train pipeline, in its order: random center shift (COCO), random
flip, half-body (COCO), random scale and rotation; before them, optionally, a simulated image
edge (:func:`frame_cut`). The crop itself, normalisation and the targets are
:class:`training.dataset.TopDownDataset`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.codec import apply_affine
from training.config import AugmentConfig


@dataclass
class Crop:
    center: np.ndarray
    scale: np.ndarray
    rotation: float
    flip: bool


@dataclass
class Cut:
    """A simulated image edge: the picture ends where ``point @ normal > offset`` (image pixels)."""

    normal: np.ndarray
    offset: float


def frame_cut(
    bbox: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, aug: AugmentConfig, rng: np.random.Generator
) -> tuple[Cut, np.ndarray, np.ndarray] | None:
    """Cut a person by an image edge, as photos frame people and filmed footage rarely does.

    In a photo the person's box ends at the picture's edge, the joints beyond it are unlabelled
    (COCO) and the crop beyond it is the warp's black border: all three are made here, the last
    by :func:`blank_beyond` on the crop. Returns the cut, the new ``x1 y1 x2 y2`` box and the
    visibility; None when the box is unknown or fewer than ``truncate_min_joints`` labelled
    joints would remain.
    """
    x1, y1, x2, y2 = bbox
    if not np.isfinite(bbox).all() or x2 <= x1 or y2 <= y1:
        return None
    sides = np.asarray(aug.truncate_sides, dtype=np.float64)
    side = int(rng.choice(3, p=sides / sides.sum()))
    keep = rng.uniform(*aug.truncate_keep)
    box = np.array(bbox, dtype=np.float64)
    if side == 0:  # bottom edge: the top of the person is kept
        cut = Cut(np.array([0.0, 1.0]), y1 + keep * (y2 - y1))
        box[3] = cut.offset
    elif side == 1:  # left edge: the right part is kept
        x = x2 - keep * (x2 - x1)
        cut = Cut(np.array([-1.0, 0.0]), -x)
        box[0] = x
    else:  # right edge
        cut = Cut(np.array([1.0, 0.0]), x1 + keep * (x2 - x1))
        box[2] = cut.offset
    visible = np.where(keypoints @ cut.normal <= cut.offset, visible, 0.0)
    if (visible > 0).sum() < aug.truncate_min_joints:
        return None
    return cut, box, visible


def blank_beyond(pixels: np.ndarray, input_to_image: np.ndarray, cut: Cut) -> np.ndarray:
    """Zero the crop's pixels whose image point lies beyond ``cut``, as the warp fills outside a picture."""
    h, w = pixels.shape[:2]
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    points = apply_affine(np.stack([u, v], axis=-1), input_to_image)
    pixels = pixels.copy()
    pixels[points @ cut.normal > cut.offset] = 0
    return pixels


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
