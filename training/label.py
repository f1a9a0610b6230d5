"""``hevitpose label``: a COCO person-keypoints dataset from unlabelled images and videos.

Photo-trained teachers (``training/teachers.py``) label every person; a keypoint is kept only
where at least two teachers agree on it (their keypoint similarity, the OKS term of that one
joint, is at least ``agree_oks``) and both are confident, so a doubtful joint is left
unlabelled rather than guessed. Each kept keypoint records the mean confidence of the
teachers that agreed (``keypoint_scores``, an extra field pycocotools ignores) for training
to weight its loss. Boxes come from MoveNet MultiPose.

Output, in the layout ``hevitpose train`` reads (the same as ``hevitpose synth``)::

    OUT_DIR/images/SPLIT/<source>_<frame>.jpg
    OUT_DIR/annotations/person_keypoints_SPLIT.json

Everything is written under temporary names and moved into place at the end, so a failed
or interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.keypoints import COCO17
from training.teachers import TEACHER_FILES, BlazePose, MultiPose, Person, TeacherError, Thunder, default_models_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
SIGMAS = np.asarray(COCO17.sigmas)


class LabelError(ValueError):
    pass


@dataclass
class LabelConfig:
    teachers: tuple[str, ...] = ("multipose", "thunder", "blazepose")
    every_n: int = 1  # videos: keep every n-th frame
    dedup: float = 1.0  # skip a frame whose mean absolute difference to the last kept one is below this (0-255)
    max_side: int = 0  # downscale frames so their longer side is at most this (0 = keep)
    multipose_size: int = 512  # longer side of MultiPose's input; larger finds smaller people
    min_person_score: float = 0.2  # MultiPose instance score
    min_score: float = 0.3  # per-keypoint teacher confidence
    agree_oks: float = 0.5  # two teachers agree on a joint when exp(-d^2 / (2 s^2 k^2)) >= this
    min_keypoints: int = 4  # people with fewer agreed keypoints are dropped
    mask_area: bool = False  # also record each person's mask area (``mask_area``, COCO's meaning of area)
    jpeg_quality: int = 92
    threads: int = 0


# --------------------------------------------------------------------------- inputs


@dataclass
class Source:
    path: Path
    kind: str  # "image" | "video"


def find_sources(inputs: list[str]) -> list[Source]:
    """Images and videos named on the command line or found (sorted) in the folders named."""
    sources: list[Source] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            if not found:
                raise LabelError(f"{path}: no images or videos in this folder")
            sources += [Source(p, "video" if p.suffix.lower() in VIDEO_SUFFIXES else "image") for p in found]
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                raise LabelError(f"{path}: not an image or video file (suffix {suffix or 'none'})")
            sources.append(Source(path, "video" if suffix in VIDEO_SUFFIXES else "image"))
        else:
            raise LabelError(f"{path}: no such file or folder")
    return sources


def check_source(source: Source) -> None:
    """Fail before any labelling if a file cannot be decoded."""
    if source.kind == "image":
        if cv2.imread(str(source.path), cv2.IMREAD_COLOR) is None:
            raise LabelError(f"{source.path}: cannot be decoded as an image")
        return
    cap = cv2.VideoCapture(str(source.path))
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    finally:
        cap.release()
    if not ok or frame is None:
        raise LabelError(f"{source.path}: cannot be decoded as a video (corrupt, truncated, or an unknown codec)")


def _thumb(image: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (64, 64), interpolation=cv2.INTER_AREA).astype(
        np.float32
    )


def frames(source: Source, cfg: LabelConfig) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR image): every ``every_n``-th frame, near-duplicates of the last kept one skipped."""
    if source.kind == "image":
        image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
        yield 0, _downscale(image, cfg.max_side)
        return
    cap = cv2.VideoCapture(str(source.path))
    last = None
    try:
        for index in itertools.count():
            ok, frame = cap.read()
            if not ok:
                break
            if index % cfg.every_n:
                continue
            thumb = _thumb(frame)
            if last is not None and cfg.dedup > 0 and float(np.abs(thumb - last).mean()) < cfg.dedup:
                continue
            last = thumb
            yield index, _downscale(frame, cfg.max_side)
    finally:
        cap.release()


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    return image


# --------------------------------------------------------------------------- agreement


def joint_similarity(a: np.ndarray, b: np.ndarray, area: float) -> np.ndarray:
    """Per-joint OKS term between two estimates (17, 2) of one person whose box has ``area``."""
    d2 = ((a - b) ** 2).sum(axis=1)
    return np.exp(-d2 / (2 * max(area, 1.0) * (2 * SIGMAS) ** 2))


def agree(
    estimates: dict[str, tuple[np.ndarray, np.ndarray]],
    area: float,
    cfg: LabelConfig,
    anchor: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse the teachers' estimates: (keypoints (17, 2), scores (17,), labelled (17,) bool).

    Per joint, the largest group of confident teachers that all pairwise agree is kept (ties: the
    more confident group); its score-weighted mean is the label and its mean score the confidence.
    With ``anchor`` set, a group must contain that teacher: where people overlap, a single-person
    teacher may lock on to the neighbour, and only the anchor (the box source) is tied to the person.
    """
    names = list(estimates)
    k = len(SIGMAS)
    keypoints, scores, labelled = np.zeros((k, 2)), np.zeros(k), np.zeros(k, dtype=bool)
    sim = {
        (a, b): joint_similarity(estimates[a][0], estimates[b][0], area) for a, b in itertools.combinations(names, 2)
    }
    for j in range(k):
        confident = [n for n in names if estimates[n][1][j] >= cfg.min_score]
        best: tuple[int, float, tuple[str, ...]] | None = None
        for size in range(len(confident), 1, -1):
            for group in itertools.combinations(confident, size):
                if anchor is not None and anchor not in group:
                    continue
                if all(sim[(a, b)][j] >= cfg.agree_oks for a, b in itertools.combinations(group, 2)):
                    mean_score = float(np.mean([estimates[n][1][j] for n in group]))
                    if best is None or (size, mean_score) > best[:2]:
                        best = (size, mean_score, group)
            if best is not None:
                break
        if best is None:
            continue
        w = np.array([estimates[n][1][j] for n in best[2]])
        pts = np.array([estimates[n][0][j] for n in best[2]])
        keypoints[j] = (w[:, None] * pts).sum(axis=0) / w.sum()
        scores[j] = best[1]
        labelled[j] = True
    return keypoints, scores, labelled


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of box ``a`` covered by box ``b``."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max(_area(a), 1e-9)


def drop_duplicates(people: list[Person], min_similarity: float) -> list[Person]:
    """One label per person, in the order found.

    MultiPose may find one person twice, as the whole body and as the head and shoulders: its NMS
    is by IoU, and a small box inside a large one passes it. Two labelled people are one when most
    of the smaller box lies inside the larger and their shared joints coincide (at least two, each
    with a similarity on the smaller box's area of at least ``min_similarity``); the one with more
    labelled joints stays (ties: the higher score). A duplicate left in an evaluation set would
    count a correct prediction as a miss.
    """
    n_labelled = [int((p.keypoint_scores > 0).sum()) for p in people]
    order = sorted(range(len(people)), key=lambda i: (-n_labelled[i], -people[i].score))
    kept: list[int] = []
    for i in order:
        if not any(_same_person(people[i], people[k], min_similarity) for k in kept):
            kept.append(i)
    return [people[i] for i in sorted(kept)]


def _same_person(a: Person, b: Person, min_similarity: float) -> bool:
    small, large = sorted((a, b), key=lambda p: _area(p.bbox))
    shared = (a.keypoint_scores > 0) & (b.keypoint_scores > 0)
    if shared.sum() < 2 or _overlap(small.bbox, large.bbox) < 0.7:
        return False
    return bool((joint_similarity(a.keypoints, b.keypoints, _area(small.bbox))[shared] >= min_similarity).all())


def _area(bbox: np.ndarray) -> float:
    return float(max(bbox[2] - bbox[0], 0.0) * max(bbox[3] - bbox[1], 0.0))


class Labeller:
    def __init__(self, cfg: LabelConfig, models_dir: Path):
        unknown = set(cfg.teachers) - set(TEACHER_FILES)
        if unknown:
            raise LabelError(f"unknown teacher(s) {sorted(unknown)}; known: {sorted(TEACHER_FILES)}")
        if "multipose" not in cfg.teachers:
            raise LabelError("the multipose teacher is required: it finds the people and their boxes")
        if len(cfg.teachers) < 2:
            raise LabelError("at least two teachers are needed: a label is kept only where teachers agree")
        if cfg.mask_area and "blazepose" not in cfg.teachers:
            raise LabelError("--mask-area needs the blazepose teacher: its person mask gives the area")
        self.cfg = cfg
        self.multipose = MultiPose(models_dir / TEACHER_FILES["multipose"], cfg.multipose_size, cfg.threads)
        self.crop_teachers = []
        if "thunder" in cfg.teachers:
            self.crop_teachers.append(Thunder(models_dir / TEACHER_FILES["thunder"], cfg.threads))
        self.blazepose = None
        if "blazepose" in cfg.teachers:
            self.blazepose = BlazePose(models_dir / TEACHER_FILES["blazepose"], cfg.threads)
            self.crop_teachers.append(self.blazepose)

    def __call__(self, bgr: np.ndarray) -> list[Person]:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        found = self.multipose(rgb, self.cfg.min_person_score)
        people = []
        for i, person in enumerate(found):
            estimates = {"multipose": (person.keypoints, person.keypoint_scores)}
            for teacher in self.crop_teachers:
                estimates[teacher.name] = teacher(rgb, person.bbox)
            x1, y1, x2, y2 = person.bbox
            area = max(_area(person.bbox), 1.0)
            crowded = any(_overlap(person.bbox, other.bbox) > 0.1 for o, other in enumerate(found) if o != i)
            keypoints, scores, labelled = agree(estimates, area, self.cfg, anchor="multipose" if crowded else None)
            inside = (keypoints[:, 0] >= 0) & (keypoints[:, 0] < w) & (keypoints[:, 1] >= 0) & (keypoints[:, 1] < h)
            labelled &= inside
            if labelled.sum() < self.cfg.min_keypoints:
                continue
            pts = keypoints[labelled]
            bbox = np.array(
                [
                    min(x1, pts[:, 0].min()),
                    min(y1, pts[:, 1].min()),
                    max(x2, pts[:, 0].max()),
                    max(y2, pts[:, 1].max()),
                ]
            )
            bbox = np.clip(bbox, 0, [w, h, w, h])
            mask_area = self.blazepose.mask_area(rgb, bbox) if self.cfg.mask_area else None
            people.append(Person(bbox, person.score, keypoints, np.where(labelled, scores, 0.0), mask_area))
        return drop_duplicates(people, self.cfg.agree_oks)


# --------------------------------------------------------------------------- dataset


def annotation(person: Person, ann_id: int, image_id: int) -> dict:
    labelled = person.keypoint_scores > 0
    kps = np.zeros((len(labelled), 3))
    kps[labelled, :2] = person.keypoints[labelled]
    kps[labelled, 2] = 2
    x1, y1, x2, y2 = person.bbox
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
        "area": round(float((x2 - x1) * (y2 - y1)), 2),
        "iscrowd": 0,
        "num_keypoints": int(labelled.sum()),
        "keypoints": [round(float(v), 2) for v in kps.reshape(-1)],
        "keypoint_scores": [round(float(v), 4) for v in person.keypoint_scores],
        "score": round(float(person.score), 4),
    } | ({} if person.mask_area is None else {"mask_area": round(person.mask_area, 2)})


def categories() -> list[dict]:
    skeleton = [[a + 1, b + 1] for a, b in COCO17.skeleton]  # COCO's skeleton is 1-based
    return [
        {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO17.names), "skeleton": skeleton}
    ]


def label_dataset(
    inputs: list[str], out_dir: Path, split: str, cfg: LabelConfig, models_dir: Path, progress: bool = True
) -> dict:
    """Label ``inputs`` into ``out_dir`` (see the module docstring); returns a summary."""
    sources = find_sources(inputs)
    for source in sources:
        check_source(source)
    ann_path = out_dir / "annotations" / f"person_keypoints_{split}.json"
    image_dir = out_dir / "images" / split
    if ann_path.exists() or image_dir.exists():
        raise LabelError(
            f"{out_dir} already holds a {split!r} split ({ann_path.name}); choose another --split or folder"
        )
    labeller = Labeller(cfg, models_dir)
    tmp_images = out_dir / "images" / f".{split}.partial"
    if tmp_images.exists():
        shutil.rmtree(tmp_images)
    tmp_images.mkdir(parents=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc="label", unit="file", file=sys.stderr, dynamic_ncols=True)
    images, anns = [], []
    frames_seen = 0
    try:
        for s, source in enumerate(sources):
            stem = f"{s:04d}_{source.path.stem}"
            for index, bgr in frames(source, cfg):
                frames_seen += 1
                people = labeller(bgr)
                if not people:
                    continue
                image_id = len(images) + 1
                name = f"{stem}_{index:06d}.jpg"
                if not cv2.imwrite(str(tmp_images / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
                    raise LabelError(f"could not write {tmp_images / name}")
                h, w = bgr.shape[:2]
                images.append(
                    {
                        "id": image_id,
                        "file_name": name,
                        "width": w,
                        "height": h,
                        "source": str(source.path),
                        "frame": index,
                    }
                )
                for person in people:
                    anns.append(annotation(person, len(anns) + 1, image_id))
                if bar is not None:
                    bar.set_postfix(frames=frames_seen, people=len(anns))
            if bar is not None:
                bar.update(1)
        if not anns:
            raise LabelError(f"no person was labelled in {frames_seen} frame(s) of {len(sources)} file(s)")
        dataset = {
            "info": {
                "description": "COCO person keypoints labelled by hevitpose label",
                "teachers": list(cfg.teachers),
                "config": cfg.__dict__ | {"teachers": list(cfg.teachers)},
            },
            "images": images,
            "annotations": anns,
            "categories": categories(),
        }
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_ann = ann_path.with_suffix(".json.partial")
        tmp_ann.write_text(json.dumps(dataset))
        tmp_images.rename(image_dir)
        tmp_ann.rename(ann_path)
    except BaseException:
        shutil.rmtree(tmp_images, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    labelled = sum(a["num_keypoints"] for a in anns)
    return {
        "files": len(sources),
        "frames": frames_seen,
        "images": len(images),
        "people": len(anns),
        "keypoints": labelled,
        "keypoints_per_person": round(labelled / len(anns), 2),
        "annotations": str(ann_path),
        "images_dir": str(image_dir),
    }


def main(argv: list[str]) -> int:
    defaults = LabelConfig()
    parser = argparse.ArgumentParser(
        prog="hevitpose label",
        description="Label people in images and videos with photo-trained teachers, keeping only the joints they "
        "agree on, and write a COCO person-keypoints dataset that hevitpose train reads.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_VIDEOS", help="files or folders")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--split", default="train", help="dataset split name (default train)")
    parser.add_argument("--teachers", default=",".join(defaults.teachers), help="comma-separated (default: all three)")
    parser.add_argument(
        "--models-dir", default=None, help="teacher ONNX files (default $HEVITPOSE_TEACHERS or ../shared/models)"
    )
    parser.add_argument("--every-n", type=int, default=defaults.every_n, help="videos: keep every n-th frame")
    parser.add_argument(
        "--dedup", type=float, default=defaults.dedup, help="skip near-duplicate frames (mean abs diff, 0-255; 0 = off)"
    )
    parser.add_argument(
        "--max-side", type=int, default=defaults.max_side, help="downscale frames to this longer side (0 = keep)"
    )
    parser.add_argument("--multipose-size", type=int, default=defaults.multipose_size)
    parser.add_argument("--min-score", type=float, default=defaults.min_score, help="per-keypoint teacher confidence")
    parser.add_argument(
        "--agree-oks", type=float, default=defaults.agree_oks, help="per-joint similarity for agreement"
    )
    parser.add_argument("--min-keypoints", type=int, default=defaults.min_keypoints)
    parser.add_argument(
        "--mask-area",
        action="store_true",
        help="also record each person's area as COCO means it, the person's mask inside the box (BlazePose's), as "
        "mask_area beside area (the box's); for a COCO-strict OKS, evaluate on a copy with area set to it",
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per teacher (0 = default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.every_n < 1:
        print("hevitpose label: --every-n must be at least 1", file=sys.stderr)
        return 2
    if args.multipose_size < 32 or args.multipose_size % 32:
        print("hevitpose label: --multipose-size must be a positive multiple of 32", file=sys.stderr)
        return 2
    cfg = LabelConfig(
        teachers=tuple(t.strip() for t in args.teachers.split(",") if t.strip()),
        every_n=args.every_n,
        dedup=args.dedup,
        max_side=args.max_side,
        multipose_size=args.multipose_size,
        min_score=args.min_score,
        agree_oks=args.agree_oks,
        min_keypoints=args.min_keypoints,
        mask_area=args.mask_area,
        threads=args.threads,
    )
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    try:
        summary = label_dataset(args.inputs, Path(args.out_dir), args.split, cfg, models_dir, not args.no_progress)
    except (LabelError, TeacherError) as exc:
        print(f"hevitpose label: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, LabelError) and str(exc).startswith("no person") else 2
    except KeyboardInterrupt:
        print("hevitpose label: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2))
    return 0
