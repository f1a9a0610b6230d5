"""Write service/assets/calibration_crops.jpg: person crops for the service's start-up backend check.

    python scripts/calibration_crops.py DATASET_DIR [DATASET_DIR ...] [--num 48] [--out PATH]

Each DATASET_DIR is a COCO person-keypoints dataset of the training split (``hevitpose label``
output of the pose2sim / vtest footage, ``hevitpose synth`` renders: scripts/default_data.sh makes
both). People with at least 10 labelled joints are taken in equal shares from each dataset, in a
fixed order, cropped as the service crops them (box padded by 1.25 to a 3:4 window) at 192x256, and
tiled 8 to a row into one JPEG. The service calibrates int8 on these crops and compares every
candidate backend's keypoints with float32 on them, so they must look like what it will see.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.codec import bbox_to_center_scale, get_warp_matrix, warp_crop  # noqa: E402

CROP_SIZE = (192, 256)  # (width, height)
PER_ROW = 8
OUT = Path(__file__).resolve().parents[1] / "service" / "assets" / "calibration_crops.jpg"


def people(root: Path, num: int) -> list[np.ndarray]:
    ann_path = root / "annotations" / "person_keypoints_train.json"
    data = json.loads(ann_path.read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    chosen = [a for a in data["annotations"] if a["num_keypoints"] >= 10 and min(a["bbox"][2:]) >= 32]
    step = max(1, len(chosen) // num)  # spread over the dataset: different videos, frames, renders
    crops = []
    for a in chosen[::step][:num]:
        image = cv2.imread(str(root / "images" / "train" / files[a["image_id"]]), cv2.IMREAD_COLOR)
        x, y, w, h = a["bbox"]
        center, scale = bbox_to_center_scale(np.array([[x, y, x + w, y + h]]), CROP_SIZE[0] / CROP_SIZE[1])
        crops.append(warp_crop(image, get_warp_matrix(center, scale, CROP_SIZE)[0], CROP_SIZE))
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--num", type=int, default=48, help="crops in all (a multiple of 8)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    share = args.num // len(args.datasets)
    crops = [c for root in args.datasets for c in people(root, share)]
    crops = crops[: len(crops) // PER_ROW * PER_ROW]
    rows = [np.concatenate(crops[i : i + PER_ROW], axis=1) for i in range(0, len(crops), PER_ROW)]
    cv2.imwrite(str(args.out), np.concatenate(rows, axis=0), [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(f"{len(crops)} crops of {CROP_SIZE[0]}x{CROP_SIZE[1]} -> {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
