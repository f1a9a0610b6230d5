"""A random scene: people on a ground plane, occluders, lights and a camera that frames them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .appearance import body_colors, random_color, to_linear
from .body import BodyModel, PosedBody, sample_phenotype
from .poses import sample_pose
from .render import Camera, Light, MeshSpec, SceneSpec, look_at


@dataclass
class SceneSettings:
    """What a scene may hold; the defaults are the "hard" preset (see PRESETS)."""

    width: int = 320
    height: int = 320
    max_people: int = 4
    preset: str = "hard"
    fov_deg: tuple[float, float] = (30.0, 70.0)
    # Height of the main person as a fraction of the image height; beyond 1 means cut off.
    person_scale: tuple[float, float] = (0.3, 0.95)
    close_up_probability: float = 0.15
    close_up_scale_max: float = 1.6
    occluder_probability: float = 0.35
    # Share of images whose background has a ground plane in perspective below the horizon.
    ground_probability: float = 0.5
    # Background photographs (appearance.photo_files): "skimage" or "photos"; the share of
    # backgrounds that are photographs (the others procedural) and of ground textures that are;
    # how far a background photograph may be zoomed in.
    backgrounds: str = "skimage"
    background_photo_probability: float = 0.25
    ground_photo_probability: float = 0.4
    background_zoom: float = 2.5
    # Camera height in metres; a share of high cameras looking down.
    camera_height: tuple[float, float] = (0.3, 2.2)
    high_camera_probability: float = 0.12
    high_camera_height: tuple[float, float] = (2.2, 5.0)
    camera_roll_deg: float = 4.0  # standard deviation
    # Where the camera aims: a share of the half-width sideways, a share of the main person's
    # height upwards.
    aim_lateral: float = 0.3
    aim_height: tuple[float, float] = (0.3, 0.7)
    # The other people's distance, as a multiple of the main person's, and their lateral spread.
    others_depth: tuple[float, float] = (0.5, 2.5)
    others_lateral: float = 1.2
    # Least distance between two people's centres across the image, as a share of its width,
    # and how far from the image centre another person's centre may be seen (0: anywhere).
    others_min_gap: float = 0.0
    others_max_offset: float = 0.0
    # Share of people turned towards the camera (within a normal spread of facing_spread_deg);
    # the others face any way.
    facing_camera_probability: float = 0.0
    facing_spread_deg: float = 40.0
    # Weights of 1, 2, ... people per image (cut to max_people; 0.02 each beyond).
    people_weights: tuple[float, ...] = (0.35, 0.3, 0.17, 0.1, 0.05, 0.03)
    # Weights of the activities in poses.ACTIVITIES; empty: poses.ACTIVITY_WEIGHTS.
    activity_weights: tuple[float, ...] = ()
    # "random": one to three lights from anywhere, of any strength; "photo": a key light (sun,
    # window) from the camera's side, a fill light, light from the sky and a bright ambient.
    lighting: str = "random"
    # Keep the main person's head in the picture when the frame is smaller than the person
    # (person_scale > 1): the aim is raised towards the head, as a photographer frames a portrait.
    head_in_frame: bool = False


# Named sets of SceneSettings overrides; "photo" is the default of `hevitpose synth`.
PRESETS: dict[str, dict] = {
    # The original generator: any camera height and roll, people from tiny to cut off,
    # occluders in a third of the images, procedural backgrounds.
    "hard": {},
    # What ordinary photos and videos of people look like (docs/synth.md measures each change).
    "photo": {
        "camera_height": (1.0, 1.9),  # eye level, standing or sitting photographer
        "high_camera_probability": 0.0,
        "camera_roll_deg": 2.0,
        "person_scale": (0.5, 0.85),
        "close_up_probability": 0.05,
        "close_up_scale_max": 1.3,
        "aim_height": (0.4, 0.6),
        "aim_lateral": 0.2,
        "others_depth": (0.8, 1.5),
        "others_lateral": 0.85,
        "others_min_gap": 0.35,
        "others_max_offset": 0.38,
        "occluder_probability": 0.08,
        "people_weights": (0.5, 0.3, 0.12, 0.08),
        # stand, walk, run, sit, crouch, kneel, bend, lunge, lie, free
        "activity_weights": (0.3, 0.25, 0.1, 0.12, 0.04, 0.04, 0.04, 0.05, 0.03, 0.03),
        "facing_camera_probability": 0.6,
        "lighting": "photo",
        "backgrounds": "photos",
        "background_photo_probability": 0.8,
        "ground_photo_probability": 0.7,
        "background_zoom": 1.8,
    },
}
# Head-and-shoulders to knees-up photos, cut by the picture's bottom edge, mostly facing the
# camera: the framing of ordinary photos that filmed footage and whole-body renders lack
# (weights/MODEL_CARD.md, "people cut by the picture's edge").
PRESETS["portrait"] = {
    **PRESETS["photo"],
    "fov_deg": (25.0, 50.0),
    "person_scale": (1.3, 3.2),
    "close_up_probability": 0.0,
    "head_in_frame": True,
    "aim_lateral": 0.1,
    "people_weights": (0.6, 0.3, 0.1),
    # stand, walk, run, sit, crouch, kneel, bend, lunge, lie, free
    "activity_weights": (0.45, 0.15, 0.02, 0.25, 0.0, 0.02, 0.03, 0.0, 0.0, 0.08),
    "facing_camera_probability": 0.85,
}


def scene_settings(preset: str = "photo", **overrides) -> SceneSettings:
    """The settings of a named preset, with any field overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return SceneSettings(preset=preset, **{**PRESETS[preset], **overrides})


@dataclass
class Person:
    body: PosedBody
    activity: str
    vertices: np.ndarray  # (V, 3) world coordinates
    keypoints: np.ndarray  # (17, 3) world coordinates
    keypoint_tolerance: np.ndarray  # (17,) metres a keypoint may lie behind the surface seen over it


def _yaw(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _flat_mesh(vertices: np.ndarray, faces: np.ndarray, color: np.ndarray, rng: np.random.Generator) -> MeshSpec:
    """Unshared vertices so every face is lit flat (boxes have sharp edges)."""
    v = vertices[faces].reshape(-1, 3)
    f = np.arange(len(v), dtype=np.uint32).reshape(-1, 3)
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.repeat(n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12), 3, axis=0)
    colors = np.tile(to_linear(color), (len(v), 1)) * rng.uniform(0.85, 1.0, (len(v), 1))
    return MeshSpec(v, f, colors, normals=n)


def _box(center: np.ndarray, size: np.ndarray, yaw: float, color: np.ndarray, rng: np.random.Generator) -> MeshSpec:
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (0.0, 1.0)]) * size
    faces = np.array(
        [[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4],
         [2, 6, 3], [3, 6, 7], [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]]
    )  # fmt: skip
    vertices = corners @ _yaw(yaw).T + center
    return _flat_mesh(vertices, faces, color, rng)


def _rotation(axis: int, angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _lie_down(body: PosedBody, rng: np.random.Generator) -> None:
    """Lay a body on the ground on its back, front or side, pelvis over the origin."""
    kind = rng.integers(3)
    if kind == 0:  # on the back: the front (-y) turns up
        rot = _rotation(0, -90 + rng.normal(0, 5))
    elif kind == 1:  # on the front
        rot = _rotation(0, 90 + rng.normal(0, 5))
    else:  # on one side
        rot = _rotation(1, rng.choice([-90.0, 90.0]) + rng.normal(0, 5))
    vertices, keypoints = body.vertices @ rot.T, body.keypoints @ rot.T
    shift = np.array([keypoints[11:13, 0].mean(), keypoints[11:13, 1].mean(), vertices[:, 2].min()])
    body.vertices, body.keypoints = vertices - shift, keypoints - shift


def _seat(keypoints: np.ndarray, yaw: float, rng: np.random.Generator) -> MeshSpec | None:
    """A stool or bench under a sitting person's hips, or None when the hips are too low."""
    hips, knees = keypoints[11:13].mean(0), keypoints[13:15].mean(0)
    top = hips[2] - 0.1  # about the thickness of the thighs under the hip joints
    if top < 0.15:
        return None
    center = hips + 0.3 * (knees - hips)
    size = np.array([rng.uniform(0.4, 1.2), rng.uniform(0.35, 0.5), top])
    return _box(np.array([center[0], center[1], 0.0]), size, yaw, random_color(rng), rng)


def sample_scene(model: BodyModel, rng: np.random.Generator, settings: SceneSettings) -> tuple[SceneSpec, list[Person]]:
    w, h = settings.width, settings.height
    n_people = int(
        rng.choice(
            np.arange(1, settings.max_people + 1), p=_people_weights(settings.people_weights, settings.max_people)
        )
    )
    phenotypes = [sample_phenotype(rng) for _ in range(n_people)]
    poses = [sample_pose(rng, weights=settings.activity_weights or None) for _ in range(n_people)]
    bodies = model.pose(phenotypes, [rot for _, rot in poses])
    for body, (activity, _) in zip(bodies, poses):
        if activity == "lie":
            _lie_down(body, rng)

    # The camera frames the first person; the others stand around, in front or behind.
    fov = np.radians(rng.uniform(*settings.fov_deg))
    fy = (h / 2) / np.tan(fov / 2)
    fx = fy
    # The first person's size: its height, or its length when it lies down.
    main_h = float(max(np.ptp(bodies[0].vertices[:, 2]), 0.7 * np.ptp(bodies[0].vertices[:, :2], axis=0).max()))
    if rng.random() < settings.close_up_probability:
        scale = rng.uniform(settings.person_scale[1], settings.close_up_scale_max)
    else:
        scale = rng.uniform(*settings.person_scale)
    distance = fy * main_h / (scale * h)
    if rng.random() < settings.high_camera_probability:
        cam_height = rng.uniform(*settings.high_camera_height)
    else:
        cam_height = rng.uniform(*settings.camera_height)
    ground_dist = float(np.sqrt(max(distance**2 - (cam_height - main_h / 2) ** 2, 0.6**2)))
    lateral = rng.uniform(-settings.aim_lateral, settings.aim_lateral)
    aim = rng.uniform(*settings.aim_height)
    if settings.head_in_frame and scale > 1:
        # The frame spans 1/scale of the person's height: aimed no lower than 0.45/scale below
        # the head's top, so the top edge lies just above the head and the bottom edge cuts the
        # body, at the shoulders for a large scale and the knees for a small one; the camera at
        # the framed part's height or a little above, as a photographer holds it.
        aim = max(float(aim), 1 - 0.45 / scale)
        cam_height = main_h * aim + rng.uniform(-0.1, 0.3)
        ground_dist = float(np.sqrt(max(distance**2 - (cam_height - main_h * aim) ** 2, 0.6**2)))
    half_width = ground_dist * (w / 2) / fx
    target = np.array(
        [
            lateral * half_width,
            ground_dist,
            main_h * aim,
        ]
    )
    eye = np.array([0.0, 0.0, cam_height])
    camera = Camera(fx, fy, w / 2, h / 2, look_at(eye, target, rng.normal(0, settings.camera_roll_deg)))

    placed: list[np.ndarray] = [np.array([0.0, ground_dist])]
    persons: list[Person] = []
    meshes: list[MeshSpec] = []
    for i, body in enumerate(bodies):
        if i > 0:
            position = None
            for _ in range(10):
                depth = max(0.8, ground_dist * rng.uniform(*settings.others_depth))
                lateral = rng.uniform(-settings.others_lateral, settings.others_lateral) * depth * (w / 2) / fx
                candidate = np.array([lateral, depth])
                if all(np.linalg.norm(candidate - p) > 0.55 for p in placed) and _fits(
                    candidate, placed, camera, settings.others_min_gap * w, settings.others_max_offset * w
                ):
                    position = candidate
                    break
            if position is None:
                continue
            placed.append(position)
        base = np.array([placed[-1][0], placed[-1][1], 0.0])
        if settings.facing_camera_probability > 0 and rng.random() < settings.facing_camera_probability:
            # A body faces -y at yaw 0; the camera stands at the origin.
            yaw = np.arctan2(-base[0], base[1]) + rng.normal(0, np.radians(settings.facing_spread_deg))
        else:
            yaw = rng.uniform(0, 2 * np.pi)
        rot = _yaw(yaw)
        vertices = body.vertices @ rot.T + base
        keypoints = body.keypoints @ rot.T + base
        # A joint seen on its own limb is visible if it lies no deeper behind the surface than
        # about twice its distance to the skin (the limb's radius), plus some slack.
        tolerance = np.maximum(0.05, 2.0 * body.keypoint_radius + 0.03)
        meshes.append(
            MeshSpec(
                vertices,
                model.faces,
                body_colors(body, model, rng),
                normals=model.vertex_normals(vertices),
                instance=len(persons) + 1,
            )
        )
        persons.append(Person(body, poses[i][0], vertices, keypoints, tolerance))
        if poses[i][0] == "sit" and rng.random() < 0.7:
            seat = _seat(keypoints, yaw, rng)
            if seat is not None:
                meshes.append(seat)

    if rng.random() < settings.occluder_probability:
        for _ in range(int(rng.integers(1, 3))):
            j = int(rng.integers(len(placed)))
            t = rng.uniform(0.3, 0.85)
            center = np.array([*(placed[j] * t + rng.normal(0, 0.3, 2)), 0.0])
            if rng.random() < 0.3:  # a pole or pillar
                size = np.array([rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4), rng.uniform(1.5, 3.5)])
            else:  # a crate, a table, a low wall
                size = np.array([rng.uniform(0.2, 1.5), rng.uniform(0.1, 0.8), rng.uniform(0.3, 1.5)])
            box = _box(center, size, rng.uniform(0, np.pi), random_color(rng), rng)
            # A box next to the camera would fill the frame and hide everyone: drop it.
            uv, depth = camera.project(box.vertices)
            lo, hi = np.clip(uv.min(0), 0, [w, h]), np.clip(uv.max(0), 0, [w, h])
            if depth.min() > 0.3 and np.prod(hi - lo) < 0.3 * w * h:
                meshes.append(box)

    if settings.lighting == "photo":
        lights, ambient = _photo_lights(rng)
    else:
        lights, ambient = _random_lights(rng)
    spec = SceneSpec(camera, meshes, lights, ambient, roughness=float(rng.uniform(0.5, 1.0)))
    return spec, persons


def _fits(candidate: np.ndarray, placed: list[np.ndarray], camera: Camera, gap_px: float, offset_px: float) -> bool:
    """Whether a person standing at candidate is seen at least gap_px across from all placed
    and, if offset_px > 0, no further than offset_px from the image centre."""
    if gap_px <= 0 and offset_px <= 0:
        return True
    points = np.array([[p[0], p[1], 1.0] for p in [candidate, *placed]])
    u = camera.project(points)[0][:, 0]
    if offset_px > 0 and abs(u[0] - camera.cx) > offset_px:
        return False
    return bool(np.all(np.abs(u[1:] - u[0]) >= gap_px))


def _light(azimuth: float, elevation: float, tint: np.ndarray, intensity: float) -> Light:
    """A directional light coming from azimuth (0: +x, pi/2: +y, the way the camera looks)."""
    source = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)])
    return Light(-source, tint, float(intensity))


def _random_lights(rng: np.random.Generator) -> tuple[list[Light], np.ndarray]:
    lights = []
    for k in range(int(rng.integers(1, 4))):
        azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(15), np.radians(85))
        direction = -np.array(
            [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)]
        )
        tint = np.clip(1.0 + rng.normal(0, 0.08, 3), 0.7, 1.0)
        intensity = rng.uniform(1.5, 5.0) if k == 0 else rng.uniform(0.3, 2.0)
        lights.append(Light(direction, tint, float(intensity)))
    ambient = np.full(3, rng.uniform(0.1, 0.5)) * np.clip(1.0 + rng.normal(0, 0.05, 3), 0.8, 1.0)
    return lights, ambient


def _photo_lights(rng: np.random.Generator) -> tuple[list[Light], np.ndarray]:
    """Daylight or room light as photographs show it: people mostly lit from the camera's side."""
    behind_camera = -np.pi / 2  # the camera stands at the origin looking along +y
    key_azimuth = behind_camera + rng.uniform(-1, 1) * np.radians(110)
    warm = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.78, 0.95)])
    lights = [_light(key_azimuth, np.radians(rng.uniform(20, 65)), warm, rng.uniform(2.5, 4.5))]
    # Fill from the other side of the camera, and the sky from above (cool).
    fill_azimuth = 2 * behind_camera - key_azimuth + rng.normal(0, 0.3)
    lights.append(_light(fill_azimuth, np.radians(rng.uniform(5, 40)), np.ones(3), rng.uniform(0.6, 1.6)))
    sky = np.array([rng.uniform(0.85, 0.95), rng.uniform(0.92, 1.0), 1.0])
    lights.append(_light(rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(70, 90)), sky, rng.uniform(0.5, 1.5)))
    ambient = np.full(3, rng.uniform(0.25, 0.5)) * sky
    return lights, ambient


def _people_weights(table: tuple[float, ...], max_people: int) -> np.ndarray:
    weights = np.array(list(table[:max_people]) + [0.02] * max(0, max_people - len(table)))
    return weights / weights.sum()
