"""The Anny body model: shapes, posed meshes split into body parts, and COCO-17 keypoints."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from model.keypoints import COCO17

# Body parts, for clothing and for the visibility test (a keypoint counts as seen only on the
# parts next to it). Bones not listed belong to the part of their nearest listed ancestor.
PARTS: tuple[str, ...] = (
    "head", "torso",
    "upperarm.L", "upperarm.R", "forearm.L", "forearm.R", "hand.L", "hand.R",
    "thigh.L", "thigh.R", "shin.L", "shin.R", "foot.L", "foot.R",
)  # fmt: skip
PART_INDEX = {name: i for i, name in enumerate(PARTS)}

_BONE_PART: dict[str, str] = {
    "root": "torso", "neck01": "torso", "neck02": "head", "neck03": "head", "head": "head",
    "eye.L": "head", "eye.R": "head",
}  # fmt: skip
for _side in ("L", "R"):
    _BONE_PART.update(
        {
            f"pelvis.{_side}": "torso", f"clavicle.{_side}": "torso", f"shoulder01.{_side}": "torso",
            f"upperarm01.{_side}": f"upperarm.{_side}", f"upperarm02.{_side}": f"upperarm.{_side}",
            f"lowerarm01.{_side}": f"forearm.{_side}", f"lowerarm02.{_side}": f"forearm.{_side}",
            f"wrist.{_side}": f"hand.{_side}",
            f"upperleg01.{_side}": f"thigh.{_side}", f"upperleg02.{_side}": f"thigh.{_side}",
            f"lowerleg01.{_side}": f"shin.{_side}", f"lowerleg02.{_side}": f"shin.{_side}",
            f"foot.{_side}": f"foot.{_side}",
        }
    )  # fmt: skip

# The parts on which each COCO keypoint may be seen: a joint shows on either limb segment it
# joins, so a wrist seen on its own forearm or hand is visible, on the torso it is hidden.
KEYPOINT_PARTS: dict[str, tuple[str, ...]] = {
    "nose": ("head",), "left_eye": ("head",), "right_eye": ("head",),
    "left_ear": ("head",), "right_ear": ("head",),
    "left_shoulder": ("torso", "upperarm.L"), "right_shoulder": ("torso", "upperarm.R"),
    "left_elbow": ("upperarm.L", "forearm.L"), "right_elbow": ("upperarm.R", "forearm.R"),
    "left_wrist": ("forearm.L", "hand.L"), "right_wrist": ("forearm.R", "hand.R"),
    "left_hip": ("torso", "thigh.L"), "right_hip": ("torso", "thigh.R"),
    "left_knee": ("thigh.L", "shin.L"), "right_knee": ("thigh.R", "shin.R"),
    "left_ankle": ("shin.L", "foot.L"), "right_ankle": ("shin.R", "foot.R"),
}  # fmt: skip

PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")


@dataclass
class PosedBody:
    vertices: np.ndarray  # (V, 3) metres, z up, facing -y, feet on z=0
    rest_vertices: np.ndarray  # (V, 3) the unposed body, for clothing patterns
    keypoints: np.ndarray  # (17, 3) COCO order
    keypoint_radius: np.ndarray  # (17,) distance from each keypoint to the nearest vertex of its parts
    phenotype: dict[str, float]


def sample_phenotype(rng: np.random.Generator) -> dict[str, float]:
    """Adults of all builds, plus some children and elderly people.

    Anny's age runs 0 = baby, 1/3 = child, 2/3 = young adult, 1 = old.
    """
    age = rng.uniform(0.3, 0.55) if rng.random() < 0.12 else rng.uniform(0.55, 1.0)
    return {
        "gender": float(rng.uniform(0.0, 1.0)),
        "age": float(age),
        "muscle": float(rng.beta(2, 2)),
        "weight": float(rng.beta(2, 2.2)),
        "height": float(rng.uniform(0.05, 0.95)),
        "proportions": float(rng.uniform(0.0, 1.0)),
    }


class BodyModel:
    """Anny in its bone-local pose parameterisation (rotations about each bone's own axes:
    y along the bone, x the hinge axis of elbows and knees), with the COCO keypoint regressor."""

    def __init__(self) -> None:
        import anny

        self.model = anny.Anny(pose_parameterization="local-bone").to(dtype=torch.float32).eval()
        regressor = anny.KeypointsRegressor.coco(self.model, labels=list(COCO17.names))
        self.regression = regressor.regression_weights.numpy().astype(np.float32)  # (17, V)
        self.bone_labels: list[str] = list(self.model.bone_labels)
        self.bone_index = {b: i for i, b in enumerate(self.bone_labels)}
        self.faces = np.asarray(self.model.faces, dtype=np.int64)
        self.vertex_part = self._vertex_parts()
        # Vertex normals as one sparse product: each vertex sums its faces' area-weighted normals.
        n_faces = len(self.faces)
        self._vertex_face = scipy.sparse.csr_matrix(
            (np.ones(3 * n_faces), (self.faces.ravel(), np.repeat(np.arange(n_faces), 3))),
            shape=(len(self.model.template_vertices), n_faces),
        )
        self.part_vertices = [np.flatnonzero(self.vertex_part == p) for p in range(len(PARTS))]
        self.keypoint_parts = [np.array([PART_INDEX[p] for p in KEYPOINT_PARTS[name]]) for name in COCO17.names]
        # Every other vertex of a keypoint's parts is plenty to measure how deep it lies.
        self._radius_vertices = [
            np.concatenate([self.part_vertices[p] for p in parts])[::2] for parts in self.keypoint_parts
        ]
        # Eyeball vertices, dark in every person so that faces have eyes.
        eye_bones = [self.bone_index["eye.L"], self.bone_index["eye.R"]]
        self.eye_vertices = np.flatnonzero(np.isin(self._dominant_bone, eye_bones))

    def _vertex_parts(self) -> np.ndarray:
        weights = self.model.vertex_bone_weights.numpy()
        indices = self.model.vertex_bone_indices.numpy()
        self._dominant_bone = indices[np.arange(len(indices)), weights.argmax(1)]
        parents = list(self.model.bone_parents)
        bone_part = np.zeros(len(self.bone_labels), dtype=np.int64)
        for b in range(len(self.bone_labels)):
            a = b
            while self.bone_labels[a] not in _BONE_PART:
                a = parents[a]
            bone_part[b] = PART_INDEX[_BONE_PART[self.bone_labels[a]]]
        return bone_part[self._dominant_bone]

    def vertex_normals(self, vertices: np.ndarray) -> np.ndarray:
        tri = vertices[self.faces]
        normals = self._vertex_face @ np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)

    def pose_parameters(self, rotations: list[dict[str, np.ndarray]]) -> torch.Tensor:
        """(B, J, 4, 4) from one {bone: 3x3 rotation} dict per body."""
        params = torch.eye(4).repeat(len(rotations), len(self.bone_labels), 1, 1)
        for i, rot in enumerate(rotations):
            for bone, matrix in rot.items():
                params[i, self.bone_index[bone], :3, :3] = torch.from_numpy(matrix.astype(np.float32))
        return params

    @torch.no_grad()
    def pose(self, phenotypes: list[dict[str, float]], rotations: list[dict[str, np.ndarray]]) -> list[PosedBody]:
        """Posed bodies standing with their lowest point on z=0, facing -y, centred on x=y=0."""
        n = len(phenotypes)
        kwargs = {k: torch.tensor([p[k] for p in phenotypes], dtype=torch.float32) for k in PHENOTYPES}
        out = self.model(pose_parameters=self.pose_parameters(rotations), phenotype_kwargs=kwargs)
        vertices = out["vertices"].numpy()
        rest = out["rest_vertices"].expand(n, -1, -1).numpy()
        bodies = []
        for i in range(n):
            v = vertices[i]
            keypoints = self.regression @ v
            shift = np.array([keypoints[11:13, 0].mean(), keypoints[11:13, 1].mean(), v[:, 2].min()])
            v = v - shift
            keypoints = keypoints - shift
            radius = np.array(
                [np.sqrt(((v[idx] - kp) ** 2).sum(1).min()) for idx, kp in zip(self._radius_vertices, keypoints)],
                dtype=np.float32,
            )
            bodies.append(PosedBody(v, rest[i], keypoints, radius, phenotypes[i]))
        return bodies
