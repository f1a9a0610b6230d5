"""A small, self-contained pack of the default model's training data, for a machine that can fetch nothing.

The GPU machine receives only the working tree (64 MiB in all), so the data travels compressed:
the labelled real footage as the videos themselves plus their label JSON (frames are decoded
again there, bit-exact, by frame index), and renders re-encoded as WebP, as many as fit the
budget. ``unpack`` rebuilds the folders ``scripts/default_data.sh`` makes (``real/``,
``synth/``), which ``configs/hevitpose_t_default*.yaml`` read unchanged.

    python -m training.pack write data/ pack/ --budget-mb 38
    python -m training.pack read pack/ /tmp/data --workers 16
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2

SPLITS = ("train", "val")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_pack(data: Path, pack: Path, budget_mb: float, webp_quality: int = 60, synth_val_images: int = 150) -> dict:
    """``data/real`` (hevitpose label output, frames from videos) and ``data/synth`` into ``pack``."""
    if pack.exists():
        raise FileExistsError(f"{pack} exists; remove it first")
    (pack / "real/annotations").mkdir(parents=True)
    (pack / "real/videos").mkdir()
    for split in SPLITS:
        coco = json.loads((data / f"real/annotations/person_keypoints_{split}.json").read_text())
        for image in coco["images"]:
            source = Path(image["source"])
            name = source.name
            target = pack / "real/videos" / name
            if not target.exists():
                shutil.copyfile(source.resolve(), target)
            image["video"] = f"videos/{name}"
        (pack / f"real/annotations/person_keypoints_{split}.json").write_text(json.dumps(coco))
    budget = budget_mb * 2**20 - _size(pack)
    counts = {}
    for split in ("val", "train"):  # val first: a fixed small evaluation split; train takes what is left
        coco = json.loads((data / f"synth/annotations/person_keypoints_{split}.json").read_text())
        out_dir = pack / "synth/images" / split
        out_dir.mkdir(parents=True)
        limit = synth_val_images if split == "val" else len(coco["images"])
        by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            ann.pop("segmentation", None)  # training reads boxes and keypoints only
            by_image.setdefault(ann["image_id"], []).append(ann)
        kept = []
        for image in coco["images"][:limit]:
            bgr = cv2.imread(str(data / "synth/images" / split / image["file_name"]), cv2.IMREAD_COLOR)
            ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, webp_quality])
            if not ok:
                raise RuntimeError(f"could not encode {image['file_name']}")
            cost = buf.nbytes + len(json.dumps([image, by_image.get(image["id"], [])]))
            if split == "train" and budget - cost < 0:
                break
            budget -= cost
            image["file_name"] = Path(image["file_name"]).with_suffix(".webp").name
            (out_dir / image["file_name"]).write_bytes(buf.tobytes())
            kept.append(image)
        ids = {img["id"] for img in kept}
        coco["images"] = kept
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
        (pack / "synth/annotations").mkdir(exist_ok=True)
        (pack / f"synth/annotations/person_keypoints_{split}.json").write_text(json.dumps(coco))
        counts[f"synth_{split}_images"] = len(kept)
        counts[f"synth_{split}_people"] = len(coco["annotations"])
    manifest = {"bytes": _size(pack), "webp_quality": webp_quality, **counts}
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _decode_video(job: tuple[str, list[tuple[int, str, int, int]]]) -> int:
    """Decode one video and write the listed frames (index, path, width, height)."""
    cv2.setNumThreads(1)
    video, wanted = job
    by_index = {index: (path, w, h) for index, path, w, h in wanted}
    cap = cv2.VideoCapture(video)
    written, index = 0, 0
    last = max(by_index)
    while index <= last:
        ok, frame = cap.read()
        if not ok:
            raise RuntimeError(f"{video}: ended at frame {index}, before frame {last}")
        if index in by_index:
            path, w, h = by_index[index]
            if (frame.shape[1], frame.shape[0]) != (w, h):
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)  # as hevitpose label's --max-side
            cv2.imwrite(path, frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
            written += 1
        index += 1
    cap.release()
    return written


def read_pack(pack: Path, out: Path, workers: int = 0) -> dict:
    """Rebuild ``out/real`` (frames decoded from the packed videos) and ``out/synth``."""
    jobs: dict[str, list[tuple[int, str, int, int]]] = {}
    for split in SPLITS:
        ann = pack / f"real/annotations/person_keypoints_{split}.json"
        coco = json.loads(ann.read_text())
        image_dir = out / "real/images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        (out / "real/annotations").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ann, out / f"real/annotations/person_keypoints_{split}.json")
        for image in coco["images"]:
            video = str(pack / "real" / image["video"])
            jobs.setdefault(video, []).append(
                (image["frame"], str(image_dir / image["file_name"]), image["width"], image["height"])
            )
    workers = workers or os.cpu_count() or 1
    # spawn, not fork: a forked child of a process whose OpenCV/torch thread pools already ran can
    # deadlock on a lock copied mid-use
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        frames = sum(pool.map(_decode_video, sorted(jobs.items())))
    shutil.copytree(pack / "synth", out / "synth", dirs_exist_ok=True)
    return {
        "real_frames": frames,
        "videos": len(jobs),
        "synth_images": sum(1 for _ in (out / "synth/images").rglob("*.webp")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="data folder -> pack")
    w.add_argument("data", type=Path)
    w.add_argument("pack", type=Path)
    w.add_argument("--budget-mb", type=float, default=38.0)
    w.add_argument("--webp-quality", type=int, default=60)
    r = sub.add_parser("read", help="pack -> data folder")
    r.add_argument("pack", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "write":
        report = write_pack(args.data, args.pack, args.budget_mb, args.webp_quality)
    else:
        report = read_pack(args.pack, args.out, args.workers)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
