"""Labelled real people in front of other backgrounds: a COCO keypoints set made of cutouts.

The footage the default model learns from shows a handful of people in one lab and one street. The
cutouts of ``hevitpose occluders`` keep their teacher labels (``cutouts.json``: keypoints in the
cutout's pixels, per-joint scores), so each one can stand, at any size and place, mirrored or not,
in front of a people-free photograph (the renders' backgrounds, ``training/synth/appearance.py``):
real appearance, new surroundings, and people overlapping each other and the image border. The set
is written as ``hevitpose label`` writes its own, so ``data.extra_train`` mixes it in unchanged.

    hevitpose composite data/real2/occluders data/composite --num 3000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.keypoints import COCO17
from training.label import categories
from training.occluders import blend, resize_cutout


@dataclass
class CompositeConfig:
    num: int = 3000  # images
    width: int = 320
    height: int = 320
    max_people: int = 3  # per image, 1 to this many
    person_height: tuple[float, float] = (0.45, 0.95)  # of the image's height
    min_keypoints: int = 4  # labelled joints inside the image for a person to be annotated
    seed: int = 0


@dataclass
class Cutout:
    rgba: np.ndarray  # (h, w, 4) uint8
    keypoints: np.ndarray  # (17, 3) x, y, v in the cutout's pixels
    scores: np.ndarray  # (17,)


def load_cutouts(folder: Path) -> list[Cutout]:
    index_file = folder / "cutouts.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} not found (make the folder with `hevitpose occluders`)")
    cutouts = []
    for entry in json.loads(index_file.read_text())["cutouts"]:
        image = cv2.imread(str(folder / entry["file"]), cv2.IMREAD_UNCHANGED)
        if image is None or image.ndim != 3 or image.shape[2] != 4:
            continue
        kps = np.asarray(entry["keypoints"], float).reshape(-1, 3)
        scores = entry.get("keypoint_scores") or (kps[:, 2] > 0).astype(float).tolist()
        cutouts.append(Cutout(cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA), kps, np.asarray(scores, float)))
    if not cutouts:
        raise FileNotFoundError(f"no readable cutout listed in {index_file}")
    return cutouts


def place(
    canvas: np.ndarray, cut: Cutout, height: int, x0: int, y0: int, flip: bool, gain: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Blend ``cut`` scaled to ``height`` px with its top-left at (x0, y0) into ``canvas`` (float RGB).

    Returns the canvas, the person's keypoints (17, 3) and scores in canvas pixels (joints outside
    it unlabelled; a mirrored person's left and right swapped) and its visible mask's box
    (x1, y1, x2, y2); None if nothing of it lands on the canvas.
    """
    H, W = canvas.shape[:2]
    s = height / cut.rgba.shape[0]
    occ = resize_cutout(cut.rgba, height, flip)
    kps, scores = cut.keypoints.copy(), cut.scores.copy()
    kps[:, :2] *= s
    if flip:
        kps[:, 0] = occ.shape[1] - 1 - kps[:, 0]
        kps, scores = kps[COCO17.flip_index], scores[COCO17.flip_index]
    blended = blend(canvas, occ, x0, y0, gain)
    if blended is None:
        return None
    canvas, (xa, ya, xb, yb) = blended
    ys, xs = np.nonzero(occ[ya - y0 : yb - y0, xa - x0 : xb - x0, 3] > 127)  # the mask's visible part
    if not len(xs):
        return None
    box = np.array([xs.min() + xa, ys.min() + ya, xs.max() + xa + 1, ys.max() + ya + 1], float)
    kps[:, 0] += x0
    kps[:, 1] += y0
    inside = (kps[:, 2] > 0) & (kps[:, 0] >= 0) & (kps[:, 0] < W) & (kps[:, 1] >= 0) & (kps[:, 1] < H)
    kps[~inside] = 0.0
    scores = np.where(inside, scores, 0.0)
    return canvas, kps, scores, box


def compose_image(
    cutouts: list[Cutout], backgrounds, cfg: CompositeConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """One image (uint8 RGB) and its people (keypoints, scores, box), the smallest pasted first:
    the taller a person, the nearer the camera, the more it hides of the others."""
    canvas = backgrounds.sample(cfg.height, cfg.width, rng)
    heights = sorted(rng.uniform(*cfg.person_height, int(rng.integers(1, cfg.max_people + 1))) * cfg.height)
    people = []
    for h in heights:
        cut = cutouts[int(rng.integers(len(cutouts)))]
        height = max(8, int(round(h)))
        width = cut.rgba.shape[1] * height / cut.rgba.shape[0]
        # anywhere from a quarter out of the left/right border to fully in, head at most 10% above the top
        x0 = int(round(rng.uniform(-0.25 * width, cfg.width - 0.75 * width)))
        y0 = int(round(rng.uniform(-0.1 * height, max(cfg.height - 0.9 * height, -0.1 * height))))
        placed = place(canvas, cut, height, x0, y0, bool(rng.random() < 0.5), float(rng.uniform(0.8, 1.2)))
        if placed is None:
            continue
        canvas, kps, scores, box = placed
        people.append((kps, scores, box))
    return (canvas * 255).round().astype(np.uint8), people


_STATE: dict = {}  # per process: the cutouts, backgrounds and settings _compose_one reads


def _init_worker(cutout_dir: str, image_dir: str, cfg: CompositeConfig, pooled: bool = True) -> None:
    from training.synth.appearance import Backgrounds

    if pooled:  # one OpenCV thread per process, as many processes as cores; the caller's own is left as it is
        cv2.setNumThreads(1)
    _STATE.update(cutouts=load_cutouts(Path(cutout_dir)), image_dir=Path(image_dir), cfg=cfg,
                  backgrounds=Backgrounds("photos", photo_probability=1.0, max_zoom=1.8))  # fmt: skip


def _compose_one(i: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Image i (written as ``{i:06d}.jpg`` if anyone in it is labelled) and its labelled people."""
    cfg = _STATE["cfg"]
    rng = np.random.default_rng([cfg.seed, i])  # image i alone decides its draws
    rgb, people = compose_image(_STATE["cutouts"], _STATE["backgrounds"], cfg, rng)
    kept = [p for p in people if (p[0][:, 2] > 0).sum() >= cfg.min_keypoints]
    if kept:
        path = _STATE["image_dir"] / f"{i:06d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return kept


def write_composites(cutout_dir: Path, out_dir: Path, split: str, cfg: CompositeConfig, workers: int = 1) -> dict:
    """``cfg.num`` images into ``out_dir/images/split`` and their COCO file; the same files for any
    number of ``workers`` (processes), since each image's draws depend on its index alone."""
    ann_file = out_dir / f"annotations/person_keypoints_{split}.json"
    if ann_file.exists():
        raise FileExistsError(f"{ann_file} exists; choose another --split or folder")
    image_dir = out_dir / "images" / split
    init = (str(cutout_dir), str(image_dir), cfg)
    try:
        # here too: a missing or empty cutout folder fails before any image is written
        _init_worker(*init, pooled=False)
        n_cutouts = len(_STATE["cutouts"])
        image_dir.mkdir(parents=True, exist_ok=True)
        if workers > 1:
            # spawn, not fork: a forked child of a process whose OpenCV/torch thread pools already ran
            # can deadlock on a lock copied mid-use
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init) as pool:
                results = list(pool.map(_compose_one, range(cfg.num), chunksize=max(1, cfg.num // (8 * workers))))
        else:
            results = [_compose_one(i) for i in range(cfg.num)]
    finally:
        _STATE.clear()  # the decoded cutouts and photos are a few hundred MB
    images, annotations = [], []
    for i, kept in enumerate(results):
        if not kept:
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": f"{i:06d}.jpg", "width": cfg.width, "height": cfg.height})
        for kps, scores, (x1, y1, x2, y2) in kept:
            labelled = kps[:, 2] > 0
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                "area": round(float((x2 - x1) * (y2 - y1)), 2), "iscrowd": 0,
                "num_keypoints": int(labelled.sum()),
                "keypoints": [round(float(v), 2) for v in np.where(labelled[:, None], kps, 0).reshape(-1)],
                "keypoint_scores": [round(float(v), 4) for v in scores],
            })  # fmt: skip
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    partial = ann_file.with_suffix(".partial")
    coco = {"images": images, "annotations": annotations, "categories": categories(),
            "info": {"cutouts": str(cutout_dir), "seed": cfg.seed}}  # fmt: skip
    partial.write_text(json.dumps(coco))
    partial.rename(ann_file)  # last: a set is complete when its annotation file exists
    return {"images": len(images), "people": len(annotations), "cutouts": n_cutouts}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hevitpose composite", description=__doc__.split("\n\n")[0])
    parser.add_argument("cutouts", type=Path, help="a `hevitpose occluders` folder (PNGs + cutouts.json)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--split", default="train")
    d = CompositeConfig()
    parser.add_argument("--num", type=int, default=d.num)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--max-people", type=int, default=d.max_people)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--workers", type=int, default=1, help="processes; the output is the same for any number")
    args = parser.parse_args(argv)
    if args.num < 1 or args.max_people < 1 or args.workers < 1 or min(args.width, args.height) < 32:
        message = "--num, --max-people and --workers must be >= 1, --width/--height >= 32"
        print(f"hevitpose composite: {message}", file=sys.stderr)
        return 2
    cfg = CompositeConfig(args.num, args.width, args.height, args.max_people, seed=args.seed)
    try:
        report = write_composites(args.cutouts, args.out_dir, args.split, cfg, args.workers)
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"hevitpose composite: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        shutil.rmtree(args.out_dir / "images" / args.split, ignore_errors=True)
        raise
    print(json.dumps(report))
    return 0
