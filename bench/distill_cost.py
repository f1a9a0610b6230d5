"""What teacher heatmaps cost: ``hevitpose teacher-heatmaps`` per person, on disk, and in the data pipeline.

Takes the first ``--people`` people of a COCO keypoints set (read only), writes their BlazePose
heatmaps into a temporary folder (wall and CPU time per person, bytes per person), then makes
``--samples`` training samples of them with the recipe's augmentation, with and without the
teacher's targets, alternating in blocks over the same sample keys, in one process (samples/s).

    python bench/distill_cost.py data/real2/annotations/person_keypoints_train.json data/real2/images/train \\
        --recipe configs/hevitpose_t_default_ft3.yaml --occluders data/real2/occluders
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import machine  # noqa: E402  (bench/ is on sys.path)

from training.config import load_config  # noqa: E402
from training.data import train_dataset  # noqa: E402
from training.distill import write_teacher_heatmaps  # noqa: E402
from training.teachers import TEACHER_FILES, BlazePose, default_models_dir  # noqa: E402


def subset(ann_file: Path, people: int, out: Path) -> None:
    """The first ``people`` annotations with a labelled joint, image by image, as a COCO file."""
    coco = json.loads(ann_file.read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann.get("num_keypoints", 1) > 0:
            by_image.setdefault(ann["image_id"], []).append(ann)
    images, anns = [], []
    for img in coco["images"]:
        if len(anns) >= people:
            break
        if img["id"] in by_image:
            images.append(img)
            anns += by_image[img["id"]]
    out.write_text(json.dumps({**coco, "images": images, "annotations": anns[:people]}))


def pipeline_rates(cfg_args: list[str], recipe: Path, samples: int, block: int = 20) -> dict:
    """samples/s of the training set without and with the teacher's targets, interleaved by block."""
    plain = train_dataset(load_config(recipe, cfg_args))
    taught = train_dataset(load_config(recipe, [*cfg_args, "data.teacher_heatmaps=th"]))
    n = len(plain)
    keys = [(epoch, i) for epoch in range(-(-samples // n)) for i in range(n)][:samples]
    plain[keys[0]], taught[keys[0]]  # noqa: B018  (warm-up: occluders read, files mapped)
    seconds, cpu = {"off": 0.0, "on": 0.0}, {"off": 0.0, "on": 0.0}
    order = [("off", plain), ("on", taught)]
    for start in range(0, len(keys), block):
        chunk = keys[start : start + block]
        for name, ds in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for key in chunk:
                ds[key]  # noqa: B018
            seconds[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
        order.reverse()  # neither goes first every time: the machine is shared
    rates = {name: round(len(keys) / s, 2) for name, s in seconds.items()}
    # on a shared machine the wall clock measures the other jobs too; CPU time is this process's own
    cpu_ms = {name: round(1000 * c / len(keys), 1) for name, c in cpu.items()}
    return {
        "samples": len(keys),
        "people": n,
        "samples_per_s": rates,
        "cpu_ms_per_sample": cpu_ms,
        "cpu_on_over_off": round(cpu_ms["on"] / cpu_ms["off"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("annotations", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs/hevitpose_t_default_ft3.yaml")
    parser.add_argument("--occluders", type=Path, default=None, help="the recipe's augment.occluder_dir, absolute")
    parser.add_argument("--people", type=int, default=40)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--input-sizes", default="96x128,192x256", help="model.input_size values, WxH")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for BlazePose")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as in a loader worker
    torch.set_num_threads(1)
    report: dict = {"machine": machine(), "load_avg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subset(args.annotations, args.people, root / "ann.json")
        teacher = BlazePose(default_models_dir() / TEACHER_FILES["blazepose"], args.threads)
        cpu0 = time.process_time()
        summary = write_teacher_heatmaps(root / "ann.json", args.images, root / "th", teacher, progress=False)
        cpu = time.process_time() - cpu0
        people = summary["people"]
        report["teacher_heatmaps"] = {
            "people": people,
            "wall_ms_per_person": summary["ms_per_person"],
            "cpu_ms_per_person": round(1000 * cpu / people, 1),
            "bytes_per_person": summary["bytes"] // people,
            "index_bytes_per_person": (root / "th/index.json").stat().st_size // people,
        }
        base = [f"data.root={root}", "data.train_ann=ann.json", f"data.train_images={args.images.resolve()}",
                "data.extra_train=[]", "data.extra_train_repeat=[]", "data.train_repeat=1", "data.workers=0",
                "model.init_from="]  # fmt: skip
        if args.occluders:
            base.append(f"augment.occluder_dir={args.occluders.resolve()}")
        else:
            base += ["augment.occluder_dir=", "augment.occluder_prob=0"]
        report["pipeline"] = {}
        for size in args.input_sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            cfg_args = [*base, f"model.input_size=[{w},{h}]"]
            report["pipeline"][size] = pipeline_rates(cfg_args, args.recipe, args.samples)
    report["load_avg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
