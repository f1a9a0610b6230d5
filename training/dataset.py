"""The top-down sample: read an image, augment, crop, normalise, and make heatmap targets.

Training augmentation follows MMPose 0.29's train pipeline (:mod:`training.transforms`), then
the affine crop, ImageNet normalisation and Gaussian targets with weights. Every random draw of
sample ``i`` in epoch ``e`` comes from a generator seeded by ``(seed, e, i)``, so a sample does
not depend on the worker that makes it, and a resumed run sees exactly the batches of an
uninterrupted one.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from model.codec import HeatmapCodec, apply_affine, get_warp_matrix, invert_affine, warp_crop
from training.annotations import Instances
from training.appearance import augment_appearance
from training.config import AugmentConfig, ConfigError
from training.distill import TeacherBlend
from training.image_cache import ImageCache
from training.occluders import OccluderBank, occlude
from training.transforms import Crop, blank_beyond, compose, flip_matrix, frame_cut, random_crop


class TopDownDataset(Dataset):
    """One sample per person instance.

    Returns a dict: ``input`` (3, H, W) uint8 RGB, normalised by its consumer on the device
    (:func:`training.data.network_inputs`: a quarter of the bytes through the loader's shared memory and
    the host-to-device copy, and no float arithmetic in the workers); ``target`` (K, h, w) and
    ``target_weight`` (K,) for training; ``inv_matrix`` (2, 3) input -> image; ``index``;
    ``valid`` (False when the image could not be read: the sample is all zeros then, and
    the runner counts it).
    """

    def __init__(
        self,
        instances: Instances,
        codec: HeatmapCodec,
        augment: AugmentConfig | None = None,
        train: bool = False,
        seed: int = 0,
        occluders: OccluderBank | None = None,
        teacher: TeacherBlend | None = None,
        keypoint_weights: tuple[float, ...] = (),
        cache_images: bool = False,
    ):
        k = instances.keypoint_set.num_keypoints
        if keypoint_weights and len(keypoint_weights) != k:
            raise ConfigError(
                f"data.keypoint_weights: {len(keypoint_weights)} values for the {k} keypoints of "
                f"{instances.keypoint_set.name}"
            )
        # per output channel, so applied to the encoded weights, after any flip has swapped the joints
        self.keypoint_weights = torch.tensor(keypoint_weights, dtype=torch.float32) if keypoint_weights else None
        self.instances = instances
        self.occluders = occluders
        self.teacher = teacher
        self.codec = codec
        self.augment = augment or AugmentConfig()
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.flip_index = instances.keypoint_set.flip_index
        # decoded once (data.cache_images): person i's image is row image_rows[i] of the cache
        self.images: ImageCache | None = None
        self.image_rows: np.ndarray | None = None
        if cache_images:
            paths = list(dict.fromkeys(instances.image_paths))
            row_of = {path: row for row, path in enumerate(paths)}
            self.image_rows = np.array([row_of[path] for path in instances.image_paths], dtype=np.int64)
            self.images = ImageCache.shared(paths)

    def __len__(self) -> int:
        return len(self.instances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def read_image(self, index: int) -> np.ndarray | None:
        if self.images is not None:
            return self.images[int(self.image_rows[index])]
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
        cut = None
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            aug = self.augment
            if aug.truncate_prob > 0 and rng.random() < aug.truncate_prob:
                framed = frame_cut(inst.bboxes[index], keypoints, visible, aug, rng)
                if framed is not None:
                    cut, bbox, visible = framed
                    center, scale = (v[0] for v in codec.bbox_to_center_scale(bbox[None]))
            crop, keypoints, visible = random_crop(
                center, scale, keypoints, visible, image_width, self.flip_index, codec.aspect_ratio, self.augment, rng
            )
        else:
            crop = Crop(center, scale, 0.0, False)
        # image -> input for the (already flipped) keypoints; the pixels are flipped first, by ``matrix``
        warp = get_warp_matrix(crop.center, crop.scale, (w, h), crop.rotation)[0]
        matrix = compose(warp, flip_matrix(image_width)) if crop.flip else warp
        if valid:
            pixels = cv2.cvtColor(warp_crop(image, matrix, (w, h)), cv2.COLOR_BGR2RGB)
            if cut is not None:
                # ``matrix``: the cut is in the unmirrored image, where the pixels come from
                pixels = blank_beyond(pixels, invert_affine(matrix), cut)
            if self.train:
                if self.occluders is not None and aug.occluder_prob > 0 and rng.random() < aug.occluder_prob:
                    pixels = occlude(pixels, self.occluders, aug.occluder_size, rng)
                pixels = augment_appearance(pixels, aug, rng)
            pixels = torch.from_numpy(pixels).permute(2, 0, 1)
        else:
            pixels = torch.zeros(3, h, w, dtype=torch.uint8)
        sample = {
            "input": pixels,
            "inv_matrix": torch.from_numpy(invert_affine(warp)),
            "index": index,
            "valid": valid,
        }
        if self.train:
            kps_input = apply_affine(np.asarray(keypoints, dtype=np.float64), warp)
            target, weight = codec.encode(
                torch.from_numpy(kps_input).float(), torch.from_numpy(np.asarray(visible)).float() * valid
            )
            if self.keypoint_weights is not None:
                weight = weight * self.keypoint_weights
            row = int(inst.teacher_rows[index])
            if self.teacher is not None and row >= 0 and valid:
                stride = codec.heatmap_stride
                flip_index = self.flip_index if crop.flip else None
                # ``matrix``, not ``warp``: the teacher's maps are of the unmirrored image, as its pixels are
                target = self.teacher(row, target, weight, kps_input / stride, matrix / stride, flip_index)
            sample["target"], sample["target_weight"] = target, weight
            sample["flipped"] = crop.flip
        return sample
