"""Photo-trained pose teachers (ONNX): MoveNet MultiPose, MoveNet Thunder, BlazePose heavy.

They label real footage for training (``hevitpose label``) and are never on the service's
request path. Their files, licences and input/output formats are described in
``../shared/models/README.md``; each wrapper here turns one model's output into COCO-17
keypoints in image pixels with a score in [0, 1] per keypoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

TEACHER_FILES = {
    "multipose": "movenet-multipose.onnx",
    "thunder": "movenet-thunder.onnx",
    "blazepose": "blazepose-heavy.onnx",
}
# BlazePose's 33 landmarks -> COCO-17 (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
BLAZEPOSE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
CROP_SIZE = 256  # Thunder's and BlazePose's square input


class TeacherError(RuntimeError):
    pass


def default_models_dir() -> Path:
    """``$HEVITPOSE_TEACHERS``, else ``../shared/models`` beside the repository."""
    env = os.environ.get("HEVITPOSE_TEACHERS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "models"


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """In float64, clipped: BlazePose's heatmap logits reach -110 and its mask's may go further; past
    ±60 the result is 0 or 1 to float64's precision all the same, and exp cannot overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, dtype=np.float64), -60.0, 60.0)))


def _session(path: Path, threads: int):
    import onnxruntime as ort

    if not path.is_file():
        raise TeacherError(f"teacher model {path} not found (set --models-dir or HEVITPOSE_TEACHERS)")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Person:
    bbox: np.ndarray  # (4,) x1, y1, x2, y2, image pixels
    score: float
    keypoints: np.ndarray  # (17, 2) image pixels
    keypoint_scores: np.ndarray  # (17,)
    mask_area: float | None = None  # pixels of the person's mask inside the box (BlazePose.mask_area), if measured


def square_crop_matrix(bbox: np.ndarray, padding: float = 1.25) -> np.ndarray:
    """2x3 affine: image -> a CROP_SIZE square around the box, padded, aspect kept."""
    x1, y1, x2, y2 = bbox
    side = max(x2 - x1, y2 - y1) * padding
    scale = CROP_SIZE / max(side, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([[scale, 0, CROP_SIZE / 2 - scale * cx], [0, scale, CROP_SIZE / 2 - scale * cy]])


def _crop(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(rgb, matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def _crop_to_image(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    scale = matrix[0, 0]
    return (points - matrix[:, 2]) / scale


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / max(union, 1e-9)


class MultiPose:
    """Up to six people per image, with boxes, at two input sizes merged by box NMS.

    At its trained size (256 on the longer side) it finds people who fill the frame, and splits
    them into parts at larger sizes; at ``size`` (say 640) it finds small and distant people.
    """

    name = "multipose"
    trained_size = 256

    def __init__(self, path: Path, size: int = 512, threads: int = 0, nms_iou: float = 0.5):
        self.session = _session(path, threads)
        self.input = self.session.get_inputs()[0].name
        self.sizes = sorted({self.trained_size, size})
        self.nms_iou = nms_iou

    def __call__(self, rgb: np.ndarray, min_score: float = 0.2) -> list[Person]:
        found = [p for size in self.sizes for p in self.run(rgb, size, min_score)]
        found.sort(key=lambda p: -p.score)
        kept: list[Person] = []
        for person in found:
            if all(box_iou(person.bbox, k.bbox) <= self.nms_iou for k in kept):
                kept.append(person)
        return kept

    def run(self, rgb: np.ndarray, size: int, min_score: float) -> list[Person]:
        h, w = rgb.shape[:2]
        scale = size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        pw, ph = -(-nw // 32) * 32, -(-nh // 32) * 32  # pad to multiples of 32: boxes stay exact
        canvas = np.zeros((ph, pw, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        out = self.session.run(None, {self.input: canvas[None].astype(np.int32)})[0][0]  # (6, 56)
        people = []
        for row in out:
            score = float(row[55])
            if score < min_score:
                continue
            kps = row[:51].reshape(17, 3)
            keypoints = np.stack([kps[:, 1] * pw, kps[:, 0] * ph], axis=1) / scale
            ymin, xmin, ymax, xmax = row[51:55]
            bbox = np.array([xmin * pw, ymin * ph, xmax * pw, ymax * ph]) / scale
            bbox = np.clip(bbox, 0, [w, h, w, h])
            people.append(Person(bbox, score, keypoints, kps[:, 2].astype(np.float64)))
        return people


class CropTeacher:
    """A single-person teacher that sees a CROP_SIZE square around one person's box."""

    name = ""

    def __init__(self, path: Path, threads: int = 0):
        self.session = _session(path, threads)
        self.input = self.session.get_inputs()[0].name


class Thunder(CropTeacher):
    """MoveNet SinglePose Thunder on a square crop around one person's box."""

    name = "thunder"

    def __call__(self, rgb: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        matrix = square_crop_matrix(bbox)
        crop = _crop(rgb, matrix)
        out = self.session.run(None, {self.input: crop[None].astype(np.int32)})[0].reshape(17, 3)
        points = np.stack([out[:, 1], out[:, 0]], axis=1) * CROP_SIZE
        return _crop_to_image(points, matrix), out[:, 2].astype(np.float64)


class BlazePose(CropTeacher):
    """BlazePose GHUM heavy on the same crop; visibility (a logit) times the pose presence score
    becomes the keypoint score, so a crop that holds no person for this teacher scores low."""

    name = "blazepose"

    def __call__(self, rgb: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        matrix = square_crop_matrix(bbox)
        crop = _crop(rgb, matrix).astype(np.float32) / 255.0
        landmarks, presence = self.session.run(["Identity", "Identity_1"], {self.input: crop[None]})
        lm = landmarks.reshape(39, 5)[list(BLAZEPOSE_TO_COCO)]
        points = _crop_to_image(lm[:, :2].astype(np.float64), matrix)
        visibility = _sigmoid(lm[:, 3])
        return points, visibility * float(np.asarray(presence).reshape(-1)[0])

    def heatmaps(self, rgb: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The COCO-17 channels of the landmark heatmaps on the same crop, (17, 64, 64) probabilities,
        and the 2x3 affine image -> crop (training/distill.py keeps them as training targets).

        The model's ``Identity_3`` holds logits (measured on real frames: about -110 to +5, the
        background near -10); MediaPipe's own refinement applies the sigmoid, and so do we.
        """
        matrix = square_crop_matrix(bbox)
        crop = _crop(rgb, matrix).astype(np.float32) / 255.0
        (logits,) = self.session.run(["Identity_3"], {self.input: crop[None]})
        return _sigmoid(logits[0][..., list(BLAZEPOSE_TO_COCO)].transpose(2, 0, 1)), matrix

    def segment(self, rgb: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The CROP_SIZE square crop around the box, its person mask in [0, 1] and the 2x3 affine
        image -> crop (training/occluders.py cuts people out with it)."""
        matrix = square_crop_matrix(bbox)
        crop = _crop(rgb, matrix)
        (logits,) = self.session.run(["Identity_2"], {self.input: (crop.astype(np.float32) / 255.0)[None]})
        mask = _sigmoid(logits.reshape(CROP_SIZE, CROP_SIZE))
        return crop, mask, matrix

    def mask_area(self, rgb: np.ndarray, bbox: np.ndarray) -> float:
        """The person's area in image pixels: the mask (above 0.5) inside the box.

        COCO's ``area`` is the person's segmentation, not the box (about half of it for a standing
        person), and OKS divides squared joint distances by it: scored against box areas, a set
        forgives errors about twice as large as COCO would.
        """
        _, mask, matrix = self.segment(rgb, bbox)
        scale = matrix[0, 0]
        x1, y1, x2, y2 = np.asarray(bbox, dtype=np.float64) * scale + np.tile(matrix[:, 2], 2)
        x1, y1 = (int(np.floor(np.clip(v, 0, CROP_SIZE))) for v in (x1, y1))
        x2, y2 = (int(np.ceil(np.clip(v, 0, CROP_SIZE))) for v in (x2, y2))
        return float((mask[y1:y2, x1:x2] > 0.5).sum()) / scale**2
