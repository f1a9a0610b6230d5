"""COCO annotations from a rendering: boxes, areas, masks and keypoints with visibility.

A keypoint is visible (v=2) when the pixel it falls on shows its own person, on a body part
next to that keypoint (a wrist on its forearm or hand, not on the torso in front of it), not
further in front of it than the keypoint's tolerance (about the thickness of the limb: a nose
seen from behind falls on the back of the head, 20 cm in front of it). Otherwise it is
labelled but occluded (v=1), or unlabelled (v=0, x=y=0) when it falls outside the image or
behind the camera, as in COCO.
"""

from __future__ import annotations

import numpy as np

from .body import BodyModel
from .render import Camera, Rendering
from .scene import Person


def keypoint_visibility(
    person_index: int, person: Person, camera: Camera, rendering: Rendering, model: BodyModel
) -> np.ndarray:
    """(17, 3) COCO keypoints [x, y, v] in pixels."""
    h, w = rendering.depth.shape
    uv, depth = camera.project(person.keypoints)
    out = np.zeros((len(uv), 3))
    inside = (depth > camera.znear) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    out[inside, :2] = uv[inside]
    out[inside, 2] = 1
    candidates = []
    for k in np.flatnonzero(inside):
        col, row = int(uv[k, 0]), int(uv[k, 1])
        surface = rendering.depth[row, col]
        if rendering.instance[row, col] == person_index + 1 and surface >= depth[k] - person.keypoint_tolerance[k]:
            candidates.append((k, col, row, surface))
    if not candidates:
        return out
    # The part test: the body part under the pixel is the part of the vertex nearest to the
    # surface point seen there.
    k_idx, cols, rows, surface = (np.array(x) for x in zip(*candidates))
    points = camera.unproject(np.stack([cols + 0.5, rows + 0.5], axis=1), surface)
    d2 = ((person.vertices[None, :, :] - points[:, None, :]) ** 2).sum(-1)
    parts = model.vertex_part[d2.argmin(axis=1)]
    for k, part in zip(k_idx, parts):
        if part in model.keypoint_parts[k]:
            out[k, 2] = 2
    return out


def coco_annotations(
    persons: list[Person], camera: Camera, rendering: Rendering, model: BodyModel, min_area: int = 1
) -> list[dict]:
    """One COCO annotation per person with at least min_area visible pixels (ids left out)."""
    from pycocotools import mask as mask_utils

    annotations = []
    for p, person in enumerate(persons):
        mask = rendering.instance == p + 1
        area = int(mask.sum())
        if area < min_area:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        bbox = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
        keypoints = keypoint_visibility(p, person, camera, rendering, model)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append(
            {
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [round(x, 2) for x in bbox],
                "area": float(area),
                "segmentation": {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "keypoints": [v for x, y, vis in keypoints for v in (round(float(x), 2), round(float(y), 2), int(vis))],
                "num_keypoints": int((keypoints[:, 2] > 0).sum()),
            }
        )
    return annotations
