"""COCO keypoint AP of a photo-trained teacher on a COCO-format split, on its ground-truth boxes.

Run on a ``hevitpose synth`` split it measures how much the renders look like photographs to a
model that has only seen photographs (issue 9's realism number: MoveNet Thunder scores about 0.7
on real photos); on a ``hevitpose label`` split it measures one teacher against the agreed labels.

    python bench/teacher_ap.py data/synth --split val --teachers thunder blazepose
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.evaluation import coco_keypoint_ap, coco_results  # noqa: E402
from training.teachers import TEACHER_FILES, BlazePose, Thunder, default_models_dir  # noqa: E402

CROP_TEACHERS = {"thunder": Thunder, "blazepose": BlazePose}


def teacher_ap(
    root: Path,
    split: str,
    name: str,
    models_dir: Path,
    max_images: int = 0,
    threads: int = 0,
    oks_area: str = "area",
) -> dict:
    ann_file = root / "annotations" / f"person_keypoints_{split}.json"
    coco = json.loads(ann_file.read_text())
    images = {img["id"]: img for img in coco["images"]}
    image_ids = sorted(images)[:max_images] if max_images else sorted(images)
    keep = set(image_ids)
    anns = [a for a in coco["annotations"] if a["image_id"] in keep and a.get("num_keypoints", 1) > 0]
    teacher = CROP_TEACHERS[name](models_dir / TEACHER_FILES[name], threads)
    ids, kps, scores, areas = [], [], [], []
    start = time.perf_counter()
    by_image: dict[int, list[dict]] = {}
    for ann in anns:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, group in by_image.items():
        bgr = cv2.imread(str(root / "images" / split / images[image_id]["file_name"]), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for ann in group:
            x, y, w, h = ann["bbox"]
            points, conf = teacher(rgb, np.array([x, y, x + w, y + h]))
            ids.append(image_id)
            kps.append(points)
            scores.append(conf)
            areas.append(w * h)
    seconds = time.perf_counter() - start
    results = coco_results(
        np.asarray(ids), np.asarray(kps), np.asarray(scores), np.ones(len(ids)), np.asarray(areas), use_nms=False
    )
    metrics = coco_keypoint_ap(ann_file, results, image_ids=image_ids, area_field=oks_area)
    return {
        "teacher": name,
        "oks_area": oks_area,
        "people": len(ids),
        "images": len(image_ids),
        "seconds": round(seconds, 1),
        **metrics,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="dataset folder (annotations/, images/)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--teachers", nargs="+", default=["thunder"], choices=sorted(CROP_TEACHERS))
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    parser.add_argument("--max-images", type=int, default=0, help="first N images only (0 = all)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--oks-area", choices=["area", "mask_area"], default="area", help="the field OKS scales by (hevitpose eval's)"
    )
    args = parser.parse_args()
    for name in args.teachers:
        report = teacher_ap(args.root, args.split, name, args.models_dir, args.max_images, args.threads, args.oks_area)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
