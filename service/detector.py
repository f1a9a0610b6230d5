"""Person boxes: NanoDet-m (COCO) through ONNX Runtime, or the client's boxes, or the whole image.

NanoDet's graph (see ``service/assets/NOTICE.md``) takes one RGB image resized to 416x416
and scaled to [0, 1], and returns, per stride 8/16/32, class probabilities (1, g*g, 80)
and a GFL box distribution (1, g*g, 44): 4 sides x 11 bins. The expected bin index times
the stride is the distance from the cell centre to each side, in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
NUM_BINS = 11
PERSON = 0


@dataclass(frozen=True)
class DetectorConfig:
    path: Path
    score_threshold: float = 0.35
    nms_iou: float = 0.5
    use_cuda: bool = False
    threads: int = 0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_gfl(
    scores: dict[int, np.ndarray], regressions: dict[int, np.ndarray], score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (N, 4) in 416x416 input pixels and their scores, before NMS.

    ``scores[stride]`` is (g*g, 80), ``regressions[stride]`` is (g*g, 44); cells row-major.
    """
    all_boxes, all_scores = [], []
    bins = np.arange(NUM_BINS, dtype=np.float32)
    for stride in STRIDES:
        person = scores[stride][:, PERSON]
        cells = np.nonzero(person > score_threshold)[0]
        if cells.size == 0:
            continue
        g = INPUT_SIZE // stride
        cx = (cells % g + 0.5) * stride
        cy = (cells // g + 0.5) * stride
        logits = regressions[stride][cells].reshape(-1, 4, NUM_BINS)
        logits = logits - logits.max(axis=-1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=-1, keepdims=True)
        dist = (prob @ bins) * stride  # (n, 4): left, top, right, bottom
        all_boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1))
        all_scores.append(person[cells])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32)


class NanoDetPersonDetector:
    """Callable: RGB uint8 (H, W, 3) -> boxes (N, 4) image pixels, scores (N,), best first."""

    def __init__(self, cfg: DetectorConfig) -> None:
        import onnxruntime as ort

        self.cfg = cfg
        options = ort.SessionOptions()
        if cfg.threads:
            options.intra_op_num_threads = cfg.threads
        providers = ["CPUExecutionProvider"]
        if cfg.use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(cfg.path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        # Output names are not in stride order: tell them apart by shape.
        self.outputs: list[tuple[str, str, int]] = []
        for out in self.session.get_outputs():
            cells, channels = out.shape[1], out.shape[2]
            stride = INPUT_SIZE // int(round(cells**0.5))
            kind = "scores" if channels == 80 else "regression"
            if channels not in (80, 4 * NUM_BINS) or stride not in STRIDES:
                raise ValueError(f"unexpected NanoDet output {out.name} {out.shape}")
            self.outputs.append((out.name, kind, stride))

    def __call__(self, image: np.ndarray, max_persons: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        resized = cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        x = (resized.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        results = self.session.run([name for name, _, _ in self.outputs], {self.input_name: x})
        scores, regressions = {}, {}
        for (_, kind, stride), value in zip(self.outputs, results):
            (scores if kind == "scores" else regressions)[stride] = value[0]
        boxes, box_scores = decode_gfl(scores, regressions, self.cfg.score_threshold)
        keep = nms(boxes, box_scores, self.cfg.nms_iou)
        if max_persons is not None:
            keep = keep[:max_persons]
        boxes, box_scores = boxes[keep], box_scores[keep]
        boxes = boxes * np.array([w / INPUT_SIZE, h / INPUT_SIZE, w / INPUT_SIZE, h / INPUT_SIZE], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return boxes[valid], box_scores[valid]


def whole_image_box(width: int, height: int) -> np.ndarray:
    return np.array([[0.0, 0.0, float(width), float(height)]], np.float32)
