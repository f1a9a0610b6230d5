"""Draw boxes and skeletons on the image for ``/v1/render``."""

from __future__ import annotations

import cv2
import numpy as np

BOX_COLOR = (0, 200, 255)
LEFT_COLOR = (0, 160, 255)  # RGB
RIGHT_COLOR = (255, 96, 0)
CENTER_COLOR = (0, 220, 0)


def _side(name: str) -> tuple[int, int, int]:
    if name.startswith("left_"):
        return LEFT_COLOR
    if name.startswith("right_"):
        return RIGHT_COLOR
    return CENTER_COLOR


def draw_poses(
    image: np.ndarray,
    bboxes: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    skeleton: list[list[int]],
    keypoint_names: list[str],
    threshold: float = 0.3,
) -> np.ndarray:
    """A copy of the RGB ``image`` with each person's box, limbs and joints above ``threshold``."""
    canvas = np.ascontiguousarray(image.copy())
    h, w = canvas.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    radius = thickness + 1
    for box, kps, kp_scores in zip(bboxes, keypoints, scores):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), BOX_COLOR, thickness, cv2.LINE_AA)
        visible = kp_scores >= threshold
        for a, b in skeleton:
            if visible[a] and visible[b]:
                pa = tuple(int(round(v)) for v in kps[a])
                pb = tuple(int(round(v)) for v in kps[b])
                color = _side(keypoint_names[a]) if _side(keypoint_names[a]) == _side(keypoint_names[b]) else CENTER_COLOR
                cv2.line(canvas, pa, pb, color, thickness, cv2.LINE_AA)
        for k, (x, y) in enumerate(kps):
            if visible[k]:
                cv2.circle(canvas, (int(round(x)), int(round(y))), radius, _side(keypoint_names[k]), -1, cv2.LINE_AA)
    return canvas
