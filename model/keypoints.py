"""Keypoint sets: names, left/right flip pairs and skeletons, in dataset order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KeypointSet:
    name: str
    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    # COCO's per-keypoint OKS sigmas; empty where the dataset defines none.
    sigmas: tuple[float, ...] = ()

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """Pairs (left, right) found by name: 'left_x' with 'right_x'."""
        index = {n: i for i, n in enumerate(self.names)}
        return tuple(
            (i, index["right_" + n[len("left_") :]]) for i, n in enumerate(self.names) if n.startswith("left_")
        )

    @property
    def flip_index(self) -> list[int]:
        return flip_index(self.num_keypoints, self.flip_pairs)


def flip_index(num_keypoints: int, flip_pairs: Sequence[Sequence[int]]) -> list[int]:
    """For each keypoint, the index of its mirror image (itself when unpaired)."""
    index = list(range(num_keypoints))
    for a, b in flip_pairs:
        index[a], index[b] = b, a
    return index


COCO17 = KeypointSet(
    name="coco",
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),  # fmt: skip
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),  # fmt: skip
    sigmas=(
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ),  # fmt: skip
)

MPII16 = KeypointSet(
    name="mpii",
    names=(
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "pelvis",
        "thorax",
        "upper_neck",
        "head_top",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
    ),  # fmt: skip
    skeleton=(
        (0, 1),
        (1, 2),
        (2, 6),
        (6, 3),
        (3, 4),
        (4, 5),
        (6, 7),
        (7, 8),
        (8, 9),
        (7, 12),
        (12, 11),
        (11, 10),
        (7, 13),
        (13, 14),
        (14, 15),
    ),  # fmt: skip
)

KEYPOINT_SETS: dict[str, KeypointSet] = {"coco": COCO17, "mpii": MPII16}
