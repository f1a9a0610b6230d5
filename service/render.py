"""Draw boxes, skeletons and track ids on an image for ``/v1/render`` and ``/v1/render/video``."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from service.schemas import Person, TrackedPerson

BOX_COLOR = (0, 200, 255)
LEFT_COLOR = (0, 160, 255)  # RGB
RIGHT_COLOR = (255, 96, 0)
CENTER_COLOR = (0, 220, 0)
# Box colours of tracks (RGB), by track id: neighbours in a video get different colours, and one
# person keeps theirs from frame to frame. Limbs keep the left/right colours above.
TRACK_COLORS = ((0, 200, 255), (255, 64, 160), (255, 220, 0), (160, 96, 255), (0, 255, 128), (255, 128, 64),
                (64, 128, 255), (200, 255, 64))  # fmt: skip


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
    track_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """A copy of the RGB ``image`` with each person's box, limbs and joints above ``threshold``;
    with ``track_ids`` (one per person) each box takes its track's colour and is labelled with the id."""
    canvas = np.ascontiguousarray(image.copy())
    h, w = canvas.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    radius = thickness + 1
    for i, (box, kps, kp_scores) in enumerate(zip(bboxes, keypoints, scores)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = BOX_COLOR if track_ids is None else TRACK_COLORS[int(track_ids[i]) % len(TRACK_COLORS)]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        visible = kp_scores >= threshold
        for a, b in skeleton:
            if visible[a] and visible[b]:
                pa = tuple(int(round(v)) for v in kps[a])
                pb = tuple(int(round(v)) for v in kps[b])
                limb = (
                    _side(keypoint_names[a]) if _side(keypoint_names[a]) == _side(keypoint_names[b]) else CENTER_COLOR
                )
                cv2.line(canvas, pa, pb, limb, thickness, cv2.LINE_AA)
        for k, (x, y) in enumerate(kps):
            if visible[k]:
                cv2.circle(canvas, (int(round(x)), int(round(y))), radius, _side(keypoint_names[k]), -1, cv2.LINE_AA)
        if track_ids is not None:
            _label(canvas, str(int(track_ids[i])), x1, y1, color, thickness)
    return canvas


def _label(canvas: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], thickness: int) -> None:
    """``text`` on a filled tag of ``color`` just above (x, y), inside the picture."""
    scale = 0.4 * thickness
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    h, w = canvas.shape[:2]
    x = min(max(x, 0), max(w - tw - 2, 0))
    top = y - th - base - 2 if y - th - base - 2 >= 0 else max(y, 0)  # no room above: inside, under the edge
    cv2.rectangle(canvas, (x, top), (x + tw + 2, top + th + base + 2), color, -1)
    cv2.putText(canvas, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                cv2.LINE_AA)  # fmt: skip


def draw_persons(
    image: np.ndarray, persons: Sequence[Person], skeleton: list[list[int]], keypoint_names: list[str], threshold: float
) -> np.ndarray:
    """:func:`draw_poses` for the persons of an answer (a video frame's, with ``track_id``), so a
    rendered video shows exactly what ``/v1/predict/video`` returns for it."""
    k = len(keypoint_names)
    bboxes = np.array([p.bbox for p in persons], np.float64).reshape(-1, 4)
    keypoints = np.array([[(kp.x, kp.y) for kp in p.keypoints] for p in persons], np.float64).reshape(-1, k, 2)
    scores = np.array([[kp.score for kp in p.keypoints] for p in persons], np.float64).reshape(-1, k)
    ids = [p.track_id for p in persons] if all(isinstance(p, TrackedPerson) for p in persons) else None
    return draw_poses(image, bboxes, keypoints, scores, skeleton, keypoint_names, threshold, ids)
