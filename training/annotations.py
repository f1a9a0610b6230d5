"""COCO and MPII person instances for top-down training and evaluation.

Each loader reads its annotation file into an :class:`Instances` table (one row per
person: image, center and scale in image pixels, keypoints, visibility, box score), the
way MMPose 0.29's ``TopDownCocoDataset`` and ``TopDownMpiiDataset`` do. Images are read
later, one sample at a time, by :class:`training.dataset.TopDownDataset`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.codec import bbox_to_center_scale
from model.keypoints import COCO17, MPII16, KeypointSet

COCO_UPPER_BODY = tuple(range(11))  # nose ... right_wrist (MMPose's coco.py dataset_info)
MPII_UPPER_BODY = (7, 8, 9, 10, 11, 12, 13, 14, 15)


class DatasetError(FileNotFoundError):
    pass


@dataclass
class Instances:
    """One person per row."""

    image_paths: list[str]
    image_ids: np.ndarray  # (N,) int
    centers: np.ndarray  # (N, 2) image pixels
    scales: np.ndarray  # (N, 2) image pixels, padded box size
    keypoints: np.ndarray  # (N, K, 2) image pixels
    visible: np.ndarray  # (N, K) 1 labelled, 0 not; in between: a teacher label's confidence
    bbox_scores: np.ndarray  # (N,)
    keypoint_set: KeypointSet
    meta: dict = field(default_factory=dict)
    ann_ids: np.ndarray | None = None  # (N,) COCO annotation id; -1 where there is none (MPII, detections)
    # (N,) row of the person's teacher heatmaps in the run's training.distill.TeacherHeatmaps; -1 none
    teacher_rows: np.ndarray | None = None
    # (N, 4) x1 y1 x2 y2 image pixels, the person's own box before padding; NaN where the source has none
    # (MPII gives only a padded center and scale)
    bboxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.image_paths)
        if self.ann_ids is None:
            self.ann_ids = np.full(n, -1, dtype=np.int64)
        if self.teacher_rows is None:
            self.teacher_rows = np.full(n, -1, dtype=np.int64)
        if self.bboxes is None:
            self.bboxes = np.full((n, 4), np.nan)

    def __len__(self) -> int:
        return len(self.image_paths)

    def take(self, rows: np.ndarray, meta: dict | None = None) -> Instances:
        """The given rows (repeats allowed), as a new table."""
        return Instances(
            [self.image_paths[i] for i in rows],
            self.image_ids[rows],
            self.centers[rows],
            self.scales[rows],
            self.keypoints[rows],
            self.visible[rows],
            self.bbox_scores[rows],
            self.keypoint_set,
            self.meta if meta is None else meta,
            self.ann_ids[rows],
            self.teacher_rows[rows],
            self.bboxes[rows],
        )


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"incomplete dataset: {what} {path} not found")
    return path


# --------------------------------------------------------------------------- COCO


def _clean_bbox(bbox: list[float], width: float, height: float) -> list[float] | None:
    """MMPose's sanitising of COCO boxes: clip to the image, drop empty ones; xywh out."""
    x, y, w, h = bbox
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1, x1 + max(0.0, w - 1))
    y2 = min(height - 1, y1 + max(0.0, h - 1))
    if x2 > x1 and y2 > y1:
        return [x1, y1, x2 - x1, y2 - y1]
    return None


def load_coco(
    ann_file: str | Path,
    image_dir: str | Path,
    aspect_ratio: float,
    padding: float = 1.25,
    det_results: str | Path | None = None,
    det_bbox_thr: float = 0.0,
    keypoint_scores: bool = True,
) -> Instances:
    """Persons of a COCO-format keypoint file, on ground-truth boxes or on detections.

    Ground truth keeps annotations with at least one labelled keypoint and a valid box
    (``_load_coco_keypoint_annotation_kernel``); detections keep category 1 boxes with
    score >= ``det_bbox_thr`` (``_load_coco_person_detection_results``). With ``keypoint_scores``,
    an annotation's ``keypoint_scores`` (written by ``hevitpose label``) scale its keypoints'
    visibility, which becomes the loss weight of each joint.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    require(ann_file, "annotation file")
    require(image_dir, "image folder")
    coco = json.loads(ann_file.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise DatasetError(f"{ann_file} is not a COCO keypoint file: no {key!r}")
    images = {img["id"]: img for img in coco["images"]}
    kset = COCO17
    num_k = kset.num_keypoints
    for cat in coco["categories"]:
        if cat.get("id") == 1 and "keypoints" in cat and len(cat["keypoints"]) != num_k:
            raise DatasetError(f"{ann_file}: {len(cat['keypoints'])} keypoints per person, expected COCO's {num_k}")

    paths, ids, boxes, kps, vis, scores, ann_ids = [], [], [], [], [], [], []
    if det_results:
        det_file = require(Path(det_results), "detection results")
        for det in json.loads(det_file.read_text()):
            if det.get("category_id", 1) != 1 or det["score"] < det_bbox_thr or det["image_id"] not in images:
                continue
            img = images[det["image_id"]]
            paths.append(str(image_dir / img["file_name"]))
            ids.append(det["image_id"])
            boxes.append(det["bbox"][:4])
            kps.append(np.zeros((num_k, 2)))
            vis.append(np.zeros(num_k))
            scores.append(det["score"])
            ann_ids.append(-1)
    else:
        anns_by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        for image_id, img in images.items():
            for ann in anns_by_image.get(image_id, []):
                if ann.get("category_id", 1) != 1 or "keypoints" not in ann:
                    continue
                if ann.get("area", 1) <= 0 or max(ann["keypoints"]) == 0 or ann.get("num_keypoints", 1) == 0:
                    continue
                box = _clean_bbox(ann["bbox"], img["width"], img["height"])
                if box is None:
                    continue
                k = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
                paths.append(str(image_dir / img["file_name"]))
                ids.append(image_id)
                boxes.append(box)
                kps.append(k[:, :2])
                weight = np.minimum(1, k[:, 2])
                if keypoint_scores and "keypoint_scores" in ann:
                    # teacher-labelled data (hevitpose label): the loss trusts a joint as much as its teachers
                    weight = weight * np.clip(np.asarray(ann["keypoint_scores"], dtype=np.float64), 0, 1)
                vis.append(weight)
                scores.append(1.0)
                ann_ids.append(ann.get("id", -1))
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    centers, scales = bbox_to_center_scale(xyxy, aspect_ratio, padding)
    return Instances(
        image_paths=paths,
        image_ids=np.asarray(ids, dtype=np.int64),
        centers=centers,
        scales=scales,
        keypoints=np.asarray(kps, dtype=np.float64).reshape(-1, num_k, 2),
        visible=np.asarray(vis, dtype=np.float64).reshape(-1, num_k),
        bbox_scores=np.asarray(scores, dtype=np.float64),
        keypoint_set=kset,
        meta={"ann_file": str(ann_file)},
        ann_ids=np.asarray(ann_ids, dtype=np.int64),
        bboxes=xyxy,
    )


# --------------------------------------------------------------------------- MPII


def load_mpii(ann_file: str | Path, image_dir: str | Path) -> Instances:
    """MMPose's ``mpii_{train,val}.json``: image, center, scale (x200 px), joints, joints_vis.

    As ``TopDownMpiiDataset._get_db``: the center moves down by 15 * scale, the scale is
    padded by 1.25, and the 1-based Matlab coordinates become 0-based.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    require(ann_file, "annotation file")
    require(image_dir, "image folder")
    records = json.loads(ann_file.read_text())
    kset = MPII16
    k = kset.num_keypoints
    n = len(records)
    centers = np.zeros((n, 2))
    scales = np.zeros((n, 2))
    kps = np.zeros((n, k, 2))
    vis = np.zeros((n, k))
    paths = []
    for i, rec in enumerate(records):
        center = np.asarray(rec["center"], dtype=np.float64)
        scale = float(rec["scale"])
        if center[0] != -1:
            center[1] += 15 * scale
            scale *= 1.25
        centers[i] = center - 1
        scales[i] = scale * 200.0
        if "joints" in rec:
            joints = np.asarray(rec["joints"], dtype=np.float64)
            if joints.shape != (k, 2):
                raise DatasetError(f"{ann_file}: record {i} has joints of shape {joints.shape}, expected ({k}, 2)")
            kps[i] = joints - 1
            vis[i] = np.asarray(rec["joints_vis"], dtype=np.float64)
        paths.append(str(image_dir / rec["image"]))
    return Instances(
        image_paths=paths,
        image_ids=np.arange(n, dtype=np.int64),
        centers=centers,
        scales=scales,
        keypoints=kps,
        visible=vis,
        bbox_scores=np.ones(n),
        keypoint_set=kset,
        meta={"ann_file": str(ann_file)},
    )


def concat_instances(parts: list[Instances]) -> Instances:
    """Several training sets as one table (image ids made unique per part)."""
    if len(parts) == 1:
        return parts[0]
    offset, ids = 0, []
    for part in parts:
        ids.append(part.image_ids + offset)
        offset += int(part.image_ids.max(initial=0)) + 1
    return Instances(
        image_paths=[p for part in parts for p in part.image_paths],
        image_ids=np.concatenate(ids),
        centers=np.concatenate([p.centers for p in parts]),
        scales=np.concatenate([p.scales for p in parts]),
        keypoints=np.concatenate([p.keypoints for p in parts]),
        visible=np.concatenate([p.visible for p in parts]),
        bbox_scores=np.concatenate([p.bbox_scores for p in parts]),
        keypoint_set=parts[0].keypoint_set,
        meta={"parts": [p.meta for p in parts]},
        ann_ids=np.concatenate([p.ann_ids for p in parts]),
        teacher_rows=np.concatenate([p.teacher_rows for p in parts]),
        bboxes=np.concatenate([p.bboxes for p in parts]),
    )


def repeat_instances(instances: Instances, times: int) -> Instances:
    """Every row ``times`` times: oversamples a small set inside a mix."""
    return instances if times == 1 else instances.take(np.tile(np.arange(len(instances)), times))
