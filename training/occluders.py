"""Real people cut out by a teacher's mask, pasted in front of the person a training crop is about.

Top-down models fail most where another person overlaps the one in the box: the joints jump to
the person in front. Teacher-labelled footage has few such frames, so training makes more: a
person cut from a training frame with BlazePose's segmentation (``hevitpose occluders``) is pasted
at a random place and size over the crop, as Sarandi et al. ("How robust is 3D human pose
estimation to occlusion?", 2018) paste objects. The target's keypoints stay the targets, also
under the occluder, so the network learns to follow the person the box is centred on.

    hevitpose occluders data/real2/annotations/person_keypoints_train.json data/real2/images/train \
        data/real2/occluders
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from training.teachers import TEACHER_FILES, BlazePose, TeacherError, default_models_dir

MAX_SIDE = 160  # cutouts are stored and pasted at most this tall: training crops are small


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def cutout(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(H, W, 4) RGBA tight around the mask's largest blob, at most MAX_SIDE tall, and the 2x3
    affine from ``rgb``'s pixels to the cutout's; None if the mask is empty."""
    binary = (mask > 0.5).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary)
    if n < 2:
        return None
    blob = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[blob, :4]
    alpha = np.where(labels == blob, mask, 0.0)[y : y + h, x : x + w]
    rgba = np.dstack([rgb[y : y + h, x : x + w], (alpha * 255).astype(np.uint8)])
    r = 1.0
    if h > MAX_SIDE:
        new_w = max(1, round(w * MAX_SIDE / h))
        rgba = cv2.resize(rgba, (new_w, MAX_SIDE), interpolation=cv2.INTER_AREA)
        r = MAX_SIDE / h
    return rgba, np.array([[r, 0.0, -r * x], [0.0, r, -r * y]])


def cut_people(
    ann_file: Path,
    images_dir: Path,
    out_dir: Path,
    teacher: BlazePose,
    min_keypoints: int = 12,
    min_height: float = 60.0,
    mask_fill: tuple[float, float] = (0.2, 0.8),
    limit: int = 0,
) -> int:
    """Write one RGBA PNG per usable person of a COCO keypoints file, and ``cutouts.json``: per
    PNG its keypoints (x, y, v, COCO order) in the cutout's pixels and the teachers' scores, so a
    cutout can also be a labelled person (training/composite.py). Returns how many.

    Usable: at least ``min_keypoints`` labelled, at least ``min_height`` px tall, no other
    person's box touching (the mask would take both), and a mask filling ``mask_fill`` of the box.
    """
    coco = json.loads(Path(ann_file).read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out_dir.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []
    for image_id, anns in sorted(by_image.items()):
        boxes = [np.array(a["bbox"], float) + np.array([0, 0, *a["bbox"][:2]]) for a in anns]  # xyxy
        usable = [
            i
            for i, a in enumerate(anns)
            if a.get("num_keypoints", 0) >= min_keypoints
            and a["bbox"][3] >= min_height
            and not any(_boxes_overlap(boxes[i], boxes[j]) for j in range(len(anns)) if j != i)
        ]
        if not usable:
            continue
        bgr = cv2.imread(str(Path(images_dir) / files[image_id]), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for i in usable:
            crop, mask, matrix = teacher.segment(rgb, boxes[i])
            box_area = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]) * matrix[0, 0] ** 2
            fill = float((mask > 0.5).sum()) / max(box_area, 1.0)
            cut = cutout(crop, mask) if mask_fill[0] <= fill <= mask_fill[1] else None
            if cut is None:
                continue
            rgba, to_cutout = cut
            name = f"{image_id:06d}_{anns[i]['id']:06d}.png"
            cv2.imwrite(str(out_dir / name), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
            kps = np.asarray(anns[i].get("keypoints", [0] * 51), float).reshape(-1, 3)
            xy = kps[:, :2] @ (to_cutout[:, :2] @ matrix[:, :2]).T + (to_cutout[:, :2] @ matrix[:, 2] + to_cutout[:, 2])
            kps[:, :2] = np.where(kps[:, 2:] > 0, xy, 0.0)
            index.append({"file": name, "keypoints": kps.round(2).reshape(-1).tolist(),
                          "keypoint_scores": anns[i].get("keypoint_scores")})  # fmt: skip
            if limit and len(index) >= limit:
                break
        if limit and len(index) >= limit:
            break
    (out_dir / "cutouts.json").write_text(json.dumps({"source": str(ann_file), "cutouts": index}))
    return len(index)


class OccluderBank:
    """The cutouts of a folder, read once per process on first use (loader workers each read)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.paths = sorted(self.folder.glob("*.png"))
        if not self.paths:
            raise FileNotFoundError(f"no occluder PNGs in {self.folder} (make them with `hevitpose occluders`)")
        self._images: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def images(self) -> list[np.ndarray]:
        if self._images is None:
            loaded = (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in self.paths)
            self._images = [cv2.cvtColor(im, cv2.COLOR_BGRA2RGBA) for im in loaded if im is not None and im.ndim == 3]
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}  # workers read the files, not a pickled copy


def resize_cutout(rgba: np.ndarray, height: int, flip: bool) -> np.ndarray:
    """``rgba`` scaled to ``height`` px (aspect kept), mirrored if ``flip``."""
    oh, ow = rgba.shape[:2]
    out = cv2.resize(rgba, (max(1, round(ow * height / oh)), height), interpolation=cv2.INTER_LINEAR)
    return out[:, ::-1] if flip else out


def blend(
    image: np.ndarray, rgba: np.ndarray, x0: int, y0: int, gain: float = 1.0
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """A copy of ``image`` (uint8, or float in [0, 1]) with the uint8 ``rgba`` alpha-blended in at
    top-left (x0, y0), its colour times ``gain``; and the window it covers, clipped to the image
    (x1, y1, x2, y2). None if it misses the image."""
    h, w = image.shape[:2]
    oh, ow = rgba.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + ow, w), min(y0 + oh, h)
    if xa >= xb or ya >= yb:
        return None
    top = 255.0 if image.dtype == np.uint8 else 1.0
    part = rgba[ya - y0 : yb - y0, xa - x0 : xb - x0].astype(np.float32)
    alpha = part[..., 3:] / 255.0
    colour = np.clip(part[..., :3] * (gain * top / 255.0), 0, top)
    region = image[ya:yb, xa:xb].astype(np.float32)
    mixed = colour * alpha + region * (1 - alpha)
    out = image.copy()
    out[ya:yb, xa:xb] = mixed.round().astype(np.uint8) if image.dtype == np.uint8 else mixed
    return out, (xa, ya, xb, yb)


def paste(rgb: np.ndarray, rgba: np.ndarray, height: int, rng: np.random.Generator) -> np.ndarray:
    """Alpha-blend ``rgba`` scaled to ``height`` px, maybe mirrored, centred at a uniform point of the crop."""
    h, w = rgb.shape[:2]
    occ = resize_cutout(rgba, height, rng.random() < 0.5)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    blended = blend(rgb, occ, int(round(cx - occ.shape[1] / 2)), int(round(cy - height / 2)))
    return rgb if blended is None else blended[0]


def occlude(rgb: np.ndarray, bank: OccluderBank, size: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """One random cutout of ``bank``, as tall as ``size`` (fractions) of the crop."""
    images = bank.images()
    rgba = images[int(rng.integers(len(images)))]
    height = max(2, int(round(rng.uniform(*size) * rgb.shape[0])))
    return paste(rgb, rgba, height, rng)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hevitpose occluders",
        description="Cut labelled people out of a COCO keypoints set with BlazePose's mask, as training occluders.",
    )
    parser.add_argument("annotations", type=Path, help="COCO person keypoints JSON (e.g. from `hevitpose label`)")
    parser.add_argument("images", type=Path, help="its image folder")
    parser.add_argument("out_dir", type=Path, help="where the RGBA PNGs go (augment.occluder_dir)")
    parser.add_argument("--models-dir", type=Path, default=None, help="teacher ONNX files (default ../shared/models)")
    parser.add_argument("--min-keypoints", type=int, default=12)
    parser.add_argument("--min-height", type=float, default=60.0, help="box height in image px")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many (0: all)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.annotations.is_file() or not args.images.is_dir():
        print(f"hevitpose occluders: {args.annotations} or {args.images} not found", file=sys.stderr)
        return 2
    try:
        teacher = BlazePose((args.models_dir or default_models_dir()) / TEACHER_FILES["blazepose"], args.threads)
    except TeacherError as exc:
        print(f"hevitpose occluders: {exc}", file=sys.stderr)
        return 2
    if args.out_dir.exists():
        print(f"hevitpose occluders: {args.out_dir} exists; remove it or choose another folder", file=sys.stderr)
        return 2
    # written under another name and moved into place at the end: an interrupted run leaves no half folder
    partial = args.out_dir.with_name(args.out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    n = cut_people(args.annotations, args.images, partial, teacher, args.min_keypoints, args.min_height,
                   limit=args.limit)  # fmt: skip
    if not n:
        shutil.rmtree(partial, ignore_errors=True)
        print(f"hevitpose occluders: no usable person in {args.annotations}", file=sys.stderr)
        return 1
    partial.rename(args.out_dir)
    print(f"hevitpose occluders: {n} cutouts in {args.out_dir}")
    return 0
