"""Distillation targets: BlazePose's own heatmaps for the people of a COCO keypoints set.

``hevitpose label`` keeps one point per joint where the teachers agree; BlazePose's heatmap also
says how sure it is and how its belief spreads (along a limb, between two candidates). This module
writes those maps once per person and, in training, blends them into the Gaussian targets::

    hevitpose teacher-heatmaps data/real2/annotations/person_keypoints_train.json data/real2/images/train \\
        data/real2/teacher_heatmaps

``OUT_DIR/heatmaps.npy``: float16 ``(N, 17, 64, 64)``, per person the COCO-17 channels of BlazePose
heavy's landmark heatmaps on the person's crop (the crop of ``training/teachers.py``), as
probabilities, each channel divided by its peak: peak 1, the scale of the codec's Gaussian targets.
``OUT_DIR/index.json``: per annotation id its row, the 2x3 affine image px -> heatmap px, and each
channel's peak probability before the division. Heatmap pixel (u, v) is crop pixel (4u, 4v): the
codec's convention (heatmap x <-> input x * stride) and MediaPipe's (its refinement reads column
x * 64 for a landmark at normalised x); on real frames the maps' peaks sit 0.05 heatmap px from the
landmarks BlazePose regresses, where a half-pixel convention would put them 0.4 px off.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from model.bundle import sha256
from model.codec import invert_affine
from model.keypoints import COCO17
from training.teachers import CROP_SIZE, TEACHER_FILES, BlazePose, TeacherError, default_models_dir
from training.transforms import compose

HEATMAPS_FILE = "heatmaps.npy"
INDEX_FILE = "index.json"
FORMAT = 1
# A warped channel whose peak fell below this left the crop (or the teacher's frame): nothing to learn from it.
MIN_PEAK = 0.1


class DistillError(ValueError):
    pass


# --------------------------------------------------------------------------- writing


def _people(coco: dict) -> list[tuple[dict, dict]]:
    """(image, annotation) for every person annotation with a box, image by image in file order,
    so that each image is decoded once."""
    by_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        box = ann.get("bbox")
        if ann.get("category_id", 1) == 1 and box and box[2] > 0 and box[3] > 0:
            by_image.setdefault(ann["image_id"], []).append(ann)
    return [(img, ann) for img in coco.get("images", []) for ann in by_image.get(img["id"], [])]


def write_teacher_heatmaps(
    ann_file: Path, images_dir: Path, out_dir: Path, teacher: BlazePose, progress: bool = True
) -> dict:
    """Write ``out_dir`` (see the module docstring) for every person of ``ann_file``; returns a summary.

    Everything goes into ``out_dir.partial`` first and is renamed at the end: an error or an
    interrupt leaves nothing, and an existing ``out_dir`` is refused, never overwritten.
    """
    ann_file, images_dir, out_dir = Path(ann_file), Path(images_dir), Path(out_dir)
    if out_dir.exists():
        raise DistillError(f"{out_dir} exists; remove it or choose another folder")
    if not ann_file.is_file() or not images_dir.is_dir():
        raise DistillError(f"{ann_file} or {images_dir} not found")
    try:
        coco = json.loads(ann_file.read_text())
    except json.JSONDecodeError as exc:
        raise DistillError(f"{ann_file} is not JSON: {exc}") from None
    people = _people(coco)
    if not people:
        raise DistillError(f"{ann_file}: no person annotation with a box")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(people), desc="teacher-heatmaps", unit="person", file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    rows: dict[str, dict] = {}
    try:
        maps = None
        current, rgb = None, None
        for row, (img, ann) in enumerate(people):
            if img["id"] != current:
                path = images_dir / img["file_name"]
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise DistillError(f"{path}: cannot be read as an image")
                rgb, current = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), img["id"]
            x, y, w, h = ann["bbox"]
            probs, crop_matrix = teacher.heatmaps(rgb, np.array([x, y, x + w, y + h], dtype=np.float64))
            if maps is None:
                maps = np.lib.format.open_memmap(
                    partial / HEATMAPS_FILE, mode="w+", dtype=np.float16, shape=(len(people), *probs.shape)
                )
            peak = probs.max(axis=(1, 2))
            maps[row] = probs / np.maximum(peak, 1e-12)[:, None, None]
            to_heatmap = crop_matrix / (CROP_SIZE / probs.shape[-1])
            rows[str(ann["id"])] = {"row": row, "affine": to_heatmap.tolist(), "peak": peak.round(4).tolist()}
            if bar is not None:
                bar.update(1)
        maps.flush()
        shape = list(maps.shape)
        del maps
        index = {
            "format": FORMAT,
            "teacher": TEACHER_FILES["blazepose"],
            "keypoints": list(COCO17.names),
            "shape": shape,
            "values": "sigmoid of BlazePose's heatmap logits, each channel divided by its peak",
            "annotations": str(ann_file),
            "annotations_sha256": sha256(ann_file),
            "images": str(images_dir),
            "rows": rows,
        }
        (partial / INDEX_FILE).write_text(json.dumps(index))
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    size = (out_dir / HEATMAPS_FILE).stat().st_size
    return {"people": len(people), "images": len({img["id"] for img, _ in people}), "out_dir": str(out_dir),
            "bytes": size, "seconds": round(seconds, 2), "ms_per_person": round(1000 * seconds / len(people), 1)}  # fmt: skip


# --------------------------------------------------------------------------- reading


class TeacherHeatmaps:
    """The ``hevitpose teacher-heatmaps`` folders a run reads, as one table of rows.

    ``add`` each folder with the annotation ids of the set it was made for; the heatmap files are
    memory-mapped on first use in each process, so loader workers share the page cache, not copies.
    """

    def __init__(self) -> None:
        self.folders: list[Path] = []
        self.offsets: list[int] = []
        self.affines = np.zeros((0, 2, 3))
        self._maps: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.affines)

    def add(self, folder: str | Path, ann_ids: np.ndarray, ann_file: str | Path | None = None) -> np.ndarray:
        """Rows (global, into this table) for ``ann_ids``, -1 where the folder has none.

        With ``ann_file``, the folder must have been made from that very file: annotation ids alone
        would match another labelling of other frames.
        """
        folder = Path(folder)
        index_file = folder / INDEX_FILE
        if not index_file.is_file() or not (folder / HEATMAPS_FILE).is_file():
            raise FileNotFoundError(
                f"{folder}: no {INDEX_FILE} + {HEATMAPS_FILE} (make it with `hevitpose teacher-heatmaps`)"
            )
        index = json.loads(index_file.read_text())
        if index.get("format") != FORMAT or index.get("keypoints") != list(COCO17.names):
            raise FileNotFoundError(f"{index_file}: not a COCO-17 teacher heatmap index of format {FORMAT}")
        if ann_file is not None and index.get("annotations_sha256") != sha256(ann_file):
            raise FileNotFoundError(
                f"{folder} was made from another annotation file than {ann_file}; "
                "make it again with `hevitpose teacher-heatmaps`"
            )
        entries = index["rows"]
        offset = len(self)
        affines = np.zeros((index["shape"][0], 2, 3))
        for entry in entries.values():
            affines[entry["row"]] = entry["affine"]
        rows = np.array([entries[str(a)]["row"] + offset if str(a) in entries else -1 for a in ann_ids], np.int64)
        self.folders.append(folder)
        self.offsets.append(offset)
        self.affines = np.concatenate([self.affines, affines])
        self._maps = None
        return rows

    def get(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(K, h, w) float32 peak-1 maps and the 2x3 affine image -> their pixels."""
        if self._maps is None:
            self._maps = [np.load(f / HEATMAPS_FILE, mmap_mode="r") for f in self.folders]
        part = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return np.asarray(self._maps[part][row - self.offsets[part]], dtype=np.float32), self.affines[row]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}  # workers map the files themselves


def warp_heatmaps(maps: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) maps through a 2x3 affine into (K, size[1], size[0]), zero outside.

    Where the warp shrinks, the maps are blurred first (scikit-image's anti-aliasing sigma): a
    narrow peak sampled at a coarser grid would otherwise land on or between samples by chance.
    """
    hwc = np.ascontiguousarray(maps.transpose(1, 2, 0))
    shrink = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if shrink < 1:
        hwc = cv2.GaussianBlur(hwc, (0, 0), (1 / shrink - 1) / 2)
    out = cv2.warpAffine(hwc, matrix.astype(np.float64), size, flags=cv2.INTER_LINEAR, borderValue=0)
    return out.reshape(size[1], size[0], -1).transpose(2, 0, 1)


@dataclass
class TeacherBlend:
    """target = (1 - weight) * Gaussian + weight * teacher's heatmap, per joint where the teacher's
    peak is within ``max_offset`` heatmap px of the label (0: anywhere)."""

    heatmaps: TeacherHeatmaps
    weight: float = 0.5
    max_offset: float = 3.0

    def __call__(
        self,
        row: int,
        target: torch.Tensor,
        target_weight: torch.Tensor,
        mu: np.ndarray,
        to_heatmap: np.ndarray,
        flip_index: Sequence[int] | None,
    ) -> torch.Tensor:
        """The blended (K, h, w) target of one sample.

        ``mu``: the labels in heatmap px; ``to_heatmap``: the sample's image -> heatmap affine, the
        one its pixels were cropped with (a flip included); ``flip_index``: the left/right swap of a
        mirrored sample, else None.
        """
        maps, to_teacher = self.heatmaps.get(row)
        k, h, w = target.shape
        warped = warp_heatmaps(maps, compose(to_heatmap, invert_affine(to_teacher)), (w, h))
        if flip_index is not None:
            warped = warped[list(flip_index)]  # the teacher's left is a mirrored sample's right
        flat = warped.reshape(k, -1)
        peak, at = flat.max(axis=1), flat.argmax(axis=1)
        use = (target_weight.numpy() > 0) & (peak >= MIN_PEAK)
        if self.max_offset > 0:
            # where BlazePose was not among the teachers that agreed, its peak is elsewhere: a
            # target with two peaks would teach both
            use &= np.hypot(at % w - mu[:, 0], at // w - mu[:, 1]) <= self.max_offset
        if not use.any():
            return target
        # resampling lowers a peak; back to 1, the Gaussian's scale
        teacher = torch.from_numpy(warped[use] / peak[use, None, None])
        rows = torch.from_numpy(use)
        out = target.clone()
        out[rows] = (1 - self.weight) * target[rows] + self.weight * teacher
        return out


# --------------------------------------------------------------------------- command


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hevitpose teacher-heatmaps",
        description="BlazePose heavy's heatmaps for every person of a COCO keypoints set, as distillation "
        "targets (data.teacher_heatmaps).",
    )
    parser.add_argument("annotations", type=Path, help="COCO person keypoints JSON (e.g. from `hevitpose label`)")
    parser.add_argument("images", type=Path, help="its image folder")
    parser.add_argument("out_dir", type=Path, help="new folder: heatmaps.npy + index.json")
    parser.add_argument("--models-dir", type=Path, default=None, help="teacher ONNX files (default ../shared/models)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.out_dir.exists():
        print(f"hevitpose teacher-heatmaps: {args.out_dir} exists; remove it or choose another folder", file=sys.stderr)
        return 2
    try:
        teacher = BlazePose((args.models_dir or default_models_dir()) / TEACHER_FILES["blazepose"], args.threads)
        summary = write_teacher_heatmaps(args.annotations, args.images, args.out_dir, teacher, not args.no_progress)
    except (DistillError, TeacherError) as exc:
        print(f"hevitpose teacher-heatmaps: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hevitpose teacher-heatmaps: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0
