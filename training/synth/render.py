"""Headless OpenGL rendering with pyrender on Mesa (EGL; llvmpipe when there is no GPU).

One pass draws the shaded colour image; a second, flat "segmentation" pass draws each person in
a colour that names it, from which come the instance masks, and the depth of the visible
surface at every pixel, from which comes the keypoint visibility.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# pyrender picks its OpenGL platform when imported: EGL works without a display and, through
# Mesa, without a GPU. OSMesa would need a newer PyOpenGL than pyrender pins.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# llvmpipe rasterises in the calling thread: one generator process keeps to one core, and
# parallelism comes from worker processes.
os.environ.setdefault("LP_NUM_THREADS", "0")

import numpy as np  # noqa: E402
import pyrender  # noqa: E402
import pyrender.renderer  # noqa: E402

# pyrender hard-codes 4x multisampling, and llvmpipe shades every sample, which doubles the
# cost of the colour pass; the generator softens silhouettes itself. This swaps the sample
# count pyrender asks for when it creates its framebuffers (once per OffscreenRenderer).
_MSAA_SAMPLES = [4]
_gl_storage_multisample = pyrender.renderer.glRenderbufferStorageMultisample


def _storage_multisample(target, samples, *args):  # type: ignore[no-untyped-def]
    return _gl_storage_multisample(target, _MSAA_SAMPLES[0], *args)


pyrender.renderer.glRenderbufferStorageMultisample = _storage_multisample

# Instance value of everything that is not a person (occluders, the ground) in the seg pass.
OTHER = 255


@dataclass
class MeshSpec:
    """A triangle mesh in world coordinates (metres, z up) with linear-RGB vertex colours."""

    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3) uint32
    colors: np.ndarray  # (V, 3) linear RGB in [0, 1]
    normals: np.ndarray | None = None
    instance: int = OTHER  # 1 + person index, or OTHER


@dataclass
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    pose: np.ndarray  # (4, 4) camera-to-world, OpenGL convention: looks down -z, y up
    znear: float = 0.05
    zfar: float = 100.0

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> image coordinates (N, 2) in pixels, where pixel (i, j) covers
        [i, i+1) x [j, j+1), and depth (N,) along the viewing axis (<= 0 behind the camera)."""
        world_to_cam = np.linalg.inv(self.pose)
        p = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        depth = -p[:, 2]
        safe = np.where(depth > 1e-6, depth, 1e-6)
        u = self.fx * p[:, 0] / safe + self.cx
        v = -self.fy * p[:, 1] / safe + self.cy
        return np.stack([u, v], axis=1), depth

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Image points (N, 2) at depths (N,) -> world points (N, 3)."""
        x = (uv[:, 0] - self.cx) * depth / self.fx
        y = -(uv[:, 1] - self.cy) * depth / self.fy
        p = np.stack([x, y, -depth], axis=1)
        return p @ self.pose[:3, :3].T + self.pose[:3, 3]


@dataclass
class Light:
    direction: np.ndarray  # (3,) world direction the light travels in
    color: np.ndarray  # (3,)
    intensity: float


@dataclass
class SceneSpec:
    camera: Camera
    meshes: list[MeshSpec] = field(default_factory=list)
    lights: list[Light] = field(default_factory=list)
    ambient: np.ndarray = field(default_factory=lambda: np.full(3, 0.3))
    roughness: float = 0.8


@dataclass
class Rendering:
    color: np.ndarray  # (H, W, 3) uint8 sRGB, black where nothing was drawn
    depth: np.ndarray  # (H, W) float32 metres, 0 where nothing was drawn
    instance: np.ndarray  # (H, W) uint8: 0 background, 1 + person index, or OTHER


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals."""
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        for axis in range(3):
            normals[:, axis] += np.bincount(faces[:, k], weights=face_n[:, axis], minlength=len(vertices))
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(norm, 1e-12)


def look_at(eye: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """Camera-to-world pose of a camera at eye looking at target, z up, rolled about its axis."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    r = np.radians(roll_deg)
    right, up = np.cos(r) * right + np.sin(r) * up, -np.sin(r) * right + np.cos(r) * up
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, -forward, eye
    return pose


def _light_pose(direction: np.ndarray) -> np.ndarray:
    # A directional light shines down its node's -z axis.
    d = direction / np.linalg.norm(direction)
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, -d)
    x = x / np.linalg.norm(x)
    y = np.cross(-d, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = x, y, -d
    return pose


class Renderer:
    """An offscreen OpenGL context of one image size; create one per process and reuse it.

    The colour pass draws every mesh merged into one primitive (multisampled if asked), since
    pyrender's cost grows with the number of primitives; the segmentation pass draws one
    position-only node per person, without multisampling, so its ids are never blended.
    """

    def __init__(self, width: int, height: int, msaa_samples: int = 0) -> None:
        self.width, self.height = width, height
        _MSAA_SAMPLES[0] = msaa_samples
        self._renderer = pyrender.OffscreenRenderer(width, height)

    def close(self) -> None:
        self._renderer.delete()

    def render(self, spec: SceneSpec) -> Rendering:
        scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=np.asarray(spec.ambient))
        positions, normals, colors, faces, offset = [], [], [], [], 0
        by_instance: dict[int, list[MeshSpec]] = {}
        for mesh in spec.meshes:
            positions.append(mesh.vertices)
            normals.append(mesh.normals if mesh.normals is not None else vertex_normals(mesh.vertices, mesh.faces))
            colors.append(mesh.colors)
            faces.append(mesh.faces.astype(np.int64) + offset)
            offset += len(mesh.vertices)
            by_instance.setdefault(mesh.instance, []).append(mesh)
        color_mesh = None
        if spec.meshes:
            material = pyrender.MetallicRoughnessMaterial(
                baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=spec.roughness
            )
            rgb = np.concatenate(colors)
            color_mesh = pyrender.Mesh(
                [
                    pyrender.Primitive(
                        positions=np.concatenate(positions).astype(np.float32),
                        normals=np.concatenate(normals).astype(np.float32),
                        color_0=np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1).astype(np.float32),
                        indices=np.concatenate(faces).astype(np.uint32),
                        material=material,
                        mode=pyrender.GLTF.TRIANGLES,
                    )
                ]
            )
            scene.add(color_mesh)
        seg_map, seg_meshes = {}, []
        for instance, meshes in by_instance.items():
            offsets = np.cumsum([0] + [len(m.vertices) for m in meshes])
            primitive = pyrender.Primitive(
                positions=np.concatenate([m.vertices for m in meshes]).astype(np.float32),
                indices=np.concatenate([m.faces.astype(np.int64) + o for m, o in zip(meshes, offsets)]).astype(
                    np.uint32
                ),
                mode=pyrender.GLTF.TRIANGLES,
            )
            seg_mesh = pyrender.Mesh([primitive], is_visible=False)
            seg_map[scene.add(seg_mesh)] = (instance, 0, 0)
            seg_meshes.append(seg_mesh)
        cam = spec.camera
        camera = pyrender.IntrinsicsCamera(cam.fx, cam.fy, cam.cx, cam.cy, znear=cam.znear, zfar=cam.zfar)
        scene.add(camera, pose=cam.pose)
        for light in spec.lights:
            scene.add(
                pyrender.DirectionalLight(color=np.asarray(light.color), intensity=light.intensity),
                pose=_light_pose(np.asarray(light.direction, dtype=float)),
            )
        color, _ = self._renderer.render(scene)
        if color_mesh is not None:
            color_mesh.is_visible = False
        for m in seg_meshes:
            m.is_visible = True
        seg, depth = self._renderer.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map=seg_map)
        return Rendering(
            color=np.ascontiguousarray(color[..., :3]),
            depth=depth.astype(np.float32),
            instance=np.ascontiguousarray(seg[..., 0]),
        )
