"""Tiny synthetic datasets in the COCO and MPII (MMPose) layouts, drawn with OpenCV."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from model.keypoints import COCO17, MPII16

MPII_MAT_NAMES = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
                  "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]  # fmt: skip

# A stick figure in a unit box (x right, y down), one row per COCO keypoint.
_COCO_POSE = np.array([
    [0.50, 0.08], [0.46, 0.06], [0.54, 0.06], [0.42, 0.08], [0.58, 0.08],
    [0.35, 0.25], [0.65, 0.25], [0.28, 0.42], [0.72, 0.42], [0.25, 0.58], [0.75, 0.58],
    [0.40, 0.60], [0.60, 0.60], [0.40, 0.80], [0.60, 0.80], [0.40, 0.98], [0.60, 0.98],
])  # fmt: skip
# MPII order: r ankle, r knee, r hip, l hip, l knee, l ankle, pelvis, thorax, neck, head top,
# r wrist, r elbow, r shoulder, l shoulder, l elbow, l wrist (image left = person's right).
_MPII_POSE = np.array([
    [0.40, 0.98], [0.40, 0.80], [0.40, 0.60], [0.60, 0.60], [0.60, 0.80], [0.60, 0.98],
    [0.50, 0.60], [0.50, 0.25], [0.50, 0.18], [0.50, 0.02],
    [0.25, 0.58], [0.28, 0.42], [0.35, 0.25], [0.65, 0.25], [0.72, 0.42], [0.75, 0.58],
])  # fmt: skip


def _draw(image: np.ndarray, kps: np.ndarray, skeleton) -> None:
    for a, b in skeleton:
        cv2.line(image, tuple(int(v) for v in kps[a]), tuple(int(v) for v in kps[b]), (200, 200, 200), 2)
    for j, (x, y) in enumerate(kps):
        color = tuple(int(c) for c in np.random.default_rng(j).integers(40, 255, 3))
        cv2.circle(image, (int(round(x)), int(round(y))), 4, color, -1)


def _person(rng: np.random.Generator, pose: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    h = rng.uniform(0.5, 0.8) * size
    w = h * 0.5
    x0 = rng.uniform(0, size - w)
    y0 = rng.uniform(0, size - h)
    return pose * [w, h] + [x0, y0], np.array([x0, y0, w, h])


def make_coco(
    root: Path,
    n_train: int = 8,
    n_val: int = 4,
    size: int = 128,
    names: tuple[str, str] = ("train2017", "val2017"),
    seed: int = 0,
) -> Path:
    """``root/annotations/person_keypoints_{name}.json`` + ``root/images/{name}/``."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, n in zip(names, (n_train, n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            image_id = 1000 * (split == names[1]) + i + 1
            image = np.full((size, size, 3), 30, np.uint8)
            kps, box = _person(rng, _COCO_POSE, size)
            vis = np.full(17, 2)
            vis[rng.integers(0, 17)] = 0  # one unlabelled keypoint
            _draw(image, kps, COCO17.skeleton)
            name = f"{image_id:012d}.jpg"
            cv2.imwrite(str(root / "images" / split / name), image)
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            flat = np.concatenate([kps, vis[:, None]], axis=1)
            flat[vis == 0] = 0
            anns.append({
                "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                "keypoints": [float(v) for v in flat.ravel()], "num_keypoints": int((vis > 0).sum()),
            })  # fmt: skip
            ann_id += 1
        coco = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names),
                            "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton]}],
        }  # fmt: skip
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(coco))
    return root


def make_mpii(root: Path, n_train: int = 8, n_val: int = 4, size: int = 128, seed: int = 0) -> Path:
    """MMPose's MPII layout: ``annotations/mpii_{train,val}.json``, ``mpii_gt_val.mat``, ``images/``."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    gt_pos, gt_missing, gt_head = [], [], []
    for split, n in (("train", n_train), ("val", n_val)):
        records = []
        for i in range(n):
            image = np.full((size, size, 3), 30, np.uint8)
            kps, box = _person(rng, _MPII_POSE, size)
            vis = np.ones(16)
            _draw(image, kps, MPII16.skeleton)
            name = f"{split}_{i:04d}.jpg"
            cv2.imwrite(str(root / "images" / name), image)
            # MPII's person scale is the box height / 200; 1-based Matlab coordinates.
            center = [box[0] + box[2] / 2 + 1, box[1] + box[3] / 2 + 1 - 15 * box[3] / 200]
            records.append({
                "image": name, "center": center, "scale": box[3] / 200,
                "joints": (kps + 1).tolist(), "joints_vis": vis.tolist(),
            })  # fmt: skip
            if split == "val":
                gt_pos.append(kps + 1)
                gt_missing.append(1 - vis)
                head = kps[9]  # head top; a head box of 0.2 x 0.15 person heights above the neck
                gt_head.append(
                    np.array([[head[0] - 0.1 * box[3], head[1]], [head[0] + 0.1 * box[3], head[1] + 0.15 * box[3]]]) + 1
                )
        (root / "annotations" / f"mpii_{split}.json").write_text(json.dumps(records))
    savemat(
        str(root / "annotations" / "mpii_gt_val.mat"),
        {
            "dataset_joints": np.array([MPII_MAT_NAMES], dtype=object),
            "jnt_missing": np.stack(gt_missing, axis=1),  # (16, N)
            "pos_gt_src": np.stack(gt_pos, axis=2),  # (16, 2, N)
            "headboxes_src": np.stack(gt_head, axis=2),  # (corner, xy, N)
        },
    )
    return root


def write_config(path: Path, dataset: str, root: Path, out_dir: Path, extra: dict | None = None) -> Path:
    """A small recipe for tests: hevitpose-t at 64x64, CPU, fp32, no workers."""
    import yaml

    data = {"dataset": dataset, "root": str(root), "workers": 0}
    if dataset == "coco":
        data.update(
            train_ann="annotations/person_keypoints_train2017.json", val_ann="annotations/person_keypoints_val2017.json"
        )
    else:
        data.update(train_ann="annotations/mpii_train.json", val_ann="annotations/mpii_val.json",
                    train_images="images", val_images="images")  # fmt: skip
    raw = {
        "name": "tiny",
        "model": {"name": "hevitpose-t", "input_size": [64, 64]},
        "data": data,
        "optim": {"batch_size": 4, "epochs": 1, "warmup_iters": 2},
        "eval": {"interval": 1, "batch_size": 4},
        "run": {"out_dir": str(out_dir), "device": "cpu", "precision": "fp32", "channels_last": False,
                "progress": False, "log_interval": 1, "deterministic": True, "threads": 1},
    }  # fmt: skip
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path.write_text(yaml.safe_dump(raw))
    return path
