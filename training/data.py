"""From a recipe to the data a run reads: people (``Instances``), datasets and their loaders.

With :func:`training.evaluation.evaluate`, the only place that knows COCO from MPII.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from model.codec import normalize
from training.annotations import (
    DatasetError,
    Instances,
    concat_instances,
    load_coco,
    load_mpii,
    repeat_instances,
    require,
)
from training.config import AugmentConfig, TrainConfig, codec_from_config
from training.dataset import TopDownDataset
from training.distill import TeacherBlend, TeacherHeatmaps
from training.evaluation import load_gt, load_mpii_gt
from training.occluders import OccluderBank


def _path(cfg: TrainConfig, rel: str) -> Path:
    return Path(cfg.data.root) / rel


def load_val_instances(cfg: TrainConfig) -> Instances:
    d = cfg.data
    ann, images = _path(cfg, d.val_ann), _path(cfg, d.val_images)
    if d.dataset == "mpii":
        require(_path(cfg, d.mpii_gt), "MPII ground truth")
        return load_mpii(ann, images)
    det = d.det_results or None
    if det is not None and not Path(det).is_absolute():
        det = str(_path(cfg, det))
    aspect = cfg.model.input_size[0] / cfg.model.input_size[1]
    instances = load_coco(ann, images, aspect, cfg.codec.bbox_padding, det, d.det_bbox_thr, d.keypoint_score_weights)
    if cfg.eval.oks_area != "area":
        try:  # a set without the field fails here, not after a training epoch or a whole prediction pass
            load_gt(ann, cfg.eval.oks_area)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
    return instances


def load_train_instances(cfg: TrainConfig) -> tuple[Instances, TeacherHeatmaps | None]:
    """The training people, extra sets mixed in, and the teacher heatmaps of those that have them
    (None when the recipe names none; a person's row is ``Instances.teacher_rows``)."""
    d = cfg.data
    if d.dataset == "mpii":
        return load_mpii(_path(cfg, d.train_ann), _path(cfg, d.train_images)), None
    aspect = cfg.model.input_size[0] / cfg.model.input_size[1]
    heatmaps = TeacherHeatmaps()
    sets = [(Path(d.root), d.train_ann, d.train_images, d.train_repeat, d.teacher_heatmaps)]
    repeats = d.extra_train_repeat or (1,) * len(d.extra_train)
    teachers = d.extra_teacher_heatmaps or ("",) * len(d.extra_train)
    for folder, times, teacher in zip(d.extra_train, repeats, teachers):
        root = Path(os.path.normpath(Path(d.root) / folder))  # an absolute folder replaces root
        sets.append((root, "annotations/person_keypoints_train.json", "images/train", times, teacher))
    parts = []
    for root, ann, images, times, teacher in sets:
        part = load_coco(
            root / ann, root / images, aspect, cfg.codec.bbox_padding, keypoint_scores=d.keypoint_score_weights
        )
        if teacher and d.teacher_heatmap_weight > 0:
            part.teacher_rows = heatmaps.add(root / teacher, part.ann_ids, root / ann)
        parts.append(repeat_instances(part, times))
    return concat_instances(parts), (heatmaps if len(heatmaps) else None)


def train_dataset(cfg: TrainConfig) -> TopDownDataset:
    aug = cfg.augment
    if not aug.upper_body_ids and aug.half_body_prob > 0:
        from training.annotations import COCO_UPPER_BODY, MPII_UPPER_BODY

        ids = COCO_UPPER_BODY if cfg.data.dataset == "coco" else MPII_UPPER_BODY
        aug = AugmentConfig(**{**aug.__dict__, "upper_body_ids": ids})
    occluders = OccluderBank(_path(cfg, aug.occluder_dir)) if aug.occluder_dir else None
    instances, heatmaps = load_train_instances(cfg)
    d = cfg.data
    teacher = (
        None if heatmaps is None else TeacherBlend(heatmaps, d.teacher_heatmap_weight, d.teacher_heatmap_max_offset)
    )
    return TopDownDataset(
        instances,
        codec_from_config(cfg),
        aug,
        train=True,
        seed=cfg.run.seed,
        occluders=occluders,
        teacher=teacher,
        keypoint_weights=d.keypoint_weights,
        cache_images=d.cache_images,
    )


def val_dataset(cfg: TrainConfig) -> TopDownDataset:
    instances = load_val_instances(cfg)
    if cfg.data.dataset == "mpii":
        # Checked now, not after the first ten epochs: the official evaluation pairs people by order.
        n_gt = load_mpii_gt(_path(cfg, cfg.data.mpii_gt))["pos_gt_src"].shape[2]
        if n_gt != len(instances):
            raise DatasetError(
                f"{_path(cfg, cfg.data.val_ann)} has {len(instances)} people but "
                f"{_path(cfg, cfg.data.mpii_gt)} has {n_gt}; they must list the same people in the same order"
            )
    if cfg.run.max_val_samples and cfg.data.dataset == "coco":
        # whole images only, so that COCOeval sees every person of the images it scores
        keep_ids = list(dict.fromkeys(instances.image_ids.tolist()))[: cfg.run.max_val_samples]
        rows = np.flatnonzero(np.isin(instances.image_ids, keep_ids))
        instances = instances.take(rows, {**instances.meta, "image_ids": keep_ids})
    return TopDownDataset(instances, codec_from_config(cfg), train=False)


class EpochSampler:
    """This rank's share of an epoch as ``(epoch, index)`` keys, from a given batch on.

    The order is ``DistributedSampler``'s (seeded, reshuffled by epoch); carrying the epoch in
    the key lets one set of persistent loader workers serve the whole run.
    """

    def __init__(self, size: int, world: int, rank: int, seed: int):
        self.sampler = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self):
        return iter([(self.epoch, i) for i in list(self.sampler)[self.start :]])

    def __len__(self) -> int:
        return len(self.sampler) - self.start


def network_inputs(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch's ``input`` (N, 3, H, W) uint8 as the loader hands it over -> normalised float32 on
    ``device``: copied as bytes, converted and normalised there."""
    inputs = normalize(images.to(device, non_blocking=True).float())
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs


def _worker_init(_: int) -> None:
    # The loader's processes are the parallelism; OpenCV and torch threads inside them only fight.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def data_loader(
    cfg: TrainConfig,
    dataset: Dataset,
    sampler: Iterable,
    batch_size: int,
    device: torch.device,
    persistent: bool = False,
) -> DataLoader:
    workers = cfg.data.workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=persistent and workers > 0,
        # Forking a process that already runs threads (TensorBoard's writer, OpenMP and
        # onnxruntime pools) can leave a worker deadlocked on a lock copied mid-use; a fork
        # server starts workers from a clean process instead, once per run.
        multiprocessing_context="forkserver" if workers else None,
    )
