"""What people and their surroundings look like: skin, hair, clothes, backgrounds, camera effects.

Colours are drawn in sRGB and handed to the renderer in linear RGB (it applies the display
gamma). Clothing patterns are functions of the unposed body's coordinates, so stripes and
checks follow the body when it moves.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .body import PART_INDEX, BodyModel, PosedBody

# sRGB skin tones from very light to very dark; a person gets one of them, jittered.
SKIN_TONES = np.array(
    [
        (255, 226, 204), (241, 203, 176), (224, 183, 150), (210, 161, 125), (190, 140, 100),
        (161, 110, 75), (130, 85, 55), (100, 65, 42), (75, 48, 32), (56, 36, 26),
    ],
    dtype=np.float64,
) / 255.0  # fmt: skip
HAIR_COLORS = np.array(
    [(20, 15, 12), (45, 30, 20), (80, 55, 35), (120, 85, 50), (190, 150, 90), (140, 60, 30),
     (150, 150, 150), (215, 215, 210)],
    dtype=np.float64,
) / 255.0  # fmt: skip


def to_linear(srgb: np.ndarray) -> np.ndarray:
    return np.clip(srgb, 0.0, 1.0) ** 2.2


def random_color(rng: np.random.Generator) -> np.ndarray:
    """A clothing-like colour: often dark or muted, sometimes saturated."""
    kind = rng.random()
    if kind < 0.3:  # greys, blacks, whites
        return np.full(3, rng.uniform(0.03, 0.95)) + rng.normal(0, 0.02, 3)
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.2, 1.0) * 255, rng.uniform(0.15, 1.0) * 255]]])
    if kind < 0.7:  # muted
        hsv[0, 0, 1] *= 0.5
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return rgb.astype(np.float64) / 255.0


def _pattern(rest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(V,) in [0, 1]: how much of the second colour each vertex shows."""
    kind = rng.choice(["solid", "stripes", "checks", "noise", "blocks"], p=[0.4, 0.2, 0.12, 0.14, 0.14])
    x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
    if kind == "solid":
        return np.zeros(len(rest))
    if kind == "stripes":
        period = rng.uniform(0.02, 0.12)
        axis = rest @ rng.normal(0, 1, 3) if rng.random() < 0.3 else z
        return (np.sin(2 * np.pi * axis / period + rng.uniform(0, 6.3)) > rng.uniform(-0.5, 0.5)).astype(float)
    if kind == "checks":
        period = rng.uniform(0.03, 0.1)
        return ((np.floor(x / period) + np.floor(z / period) + np.floor(y / period)) % 2).astype(float)
    if kind == "noise":
        return rng.uniform(0, 1, len(rest)) * rng.uniform(0.2, 0.8)
    # blocks: a panel of the second colour across the front or one side
    return (rest @ rng.normal(0, 1, 3) > rng.normal(0, 0.05)).astype(float)


def _garment(rest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c1 = random_color(rng)
    c2 = random_color(rng)
    mix = _pattern(rest, rng)[:, None]
    return (1 - mix) * c1 + mix * c2


def body_colors(body: PosedBody, model: BodyModel, rng: np.random.Generator) -> np.ndarray:
    """(V, 3) linear-RGB vertex colours: skin, hair, eyes, a top, trousers or shorts, shoes."""
    rest = body.rest_vertices
    parts = model.vertex_part
    skin = np.clip(SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1) + rng.normal(0, 0.02, 3), 0, 1)
    colors = np.tile(skin, (len(rest), 1))
    colors *= rng.uniform(0.93, 1.0, (len(rest), 1))  # a little unevenness

    def on(*names: str) -> np.ndarray:
        return np.isin(parts, [PART_INDEX[n] for n in names])

    # Where clothes end, measured on the unposed body: the waist above the hips, hems on the limbs.
    kp = model.regression @ rest
    hip_z = kp[11:13, 2].mean()
    shoulder_z = kp[5:7, 2].mean()
    knee_z = kp[13:15, 2].mean()
    elbow_x = np.abs(kp[7:9, 0]).mean()
    wrist_x = np.abs(kp[9:11, 0]).mean()
    shoulder_x = np.abs(kp[5:7, 0]).mean()

    top_sleeve = rng.choice(["none", "short", "long"], p=[0.15, 0.4, 0.45])
    sleeve_x = {"none": shoulder_x, "short": (shoulder_x + elbow_x) / 2, "long": wrist_x}[str(top_sleeve)]
    waist_z = hip_z + rng.uniform(0.05, 0.15)
    top = on("torso", "upperarm.L", "upperarm.R", "forearm.L", "forearm.R") & (rest[:, 2] > waist_z)
    top &= ~(on("upperarm.L", "upperarm.R", "forearm.L", "forearm.R") & (np.abs(rest[:, 0]) > sleeve_x))
    # A neckline: the top stops a little below the shoulders at the front.
    neck = rest[:, 2] > shoulder_z + rng.uniform(-0.06, 0.02)
    top &= ~(neck & (rest[:, 1] < 0))
    if rng.random() < 0.9:
        colors[top] = _garment(rest[top], rng)

    legs = rng.choice(["long", "shorts", "skirt"], p=[0.65, 0.2, 0.15])
    bottom = on("torso", "thigh.L", "thigh.R", "shin.L", "shin.R") & (rest[:, 2] <= waist_z)
    if legs == "shorts":
        bottom &= rest[:, 2] > knee_z + rng.uniform(0.0, 0.2)
    elif legs == "skirt":
        bottom &= rest[:, 2] > knee_z + rng.uniform(-0.25, 0.15)
    colors[bottom] = _garment(rest[bottom], rng)

    if rng.random() < 0.9:
        colors[on("foot.L", "foot.R")] = random_color(rng) * rng.uniform(0.3, 1.0)
    if rng.random() < 0.05:
        colors[on("hand.L", "hand.R")] = random_color(rng)

    # Hair: the top and back of the head, or a hat.
    head = on("head")
    eye_z = kp[1:3, 2].mean()
    ear_y = kp[3:5, 1].mean()
    if rng.random() < 0.92:
        hair_line = eye_z + rng.uniform(0.02, 0.06)
        hair = head & (
            (rest[:, 2] > hair_line) | ((rest[:, 1] > ear_y - 0.01) & (rest[:, 2] > eye_z - rng.uniform(0.0, 0.15)))
        )
        hair_color = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] if rng.random() < 0.9 else random_color(rng)
        colors[hair] = hair_color * rng.uniform(0.8, 1.1, (int(hair.sum()), 1))
    # Eyebrows and lips, placed from the eyes and nose and scaled by the distance between the eyes.
    scale = abs(kp[1, 0] - kp[2, 0]) / 0.06
    front = head & (rest[:, 1] < kp[1:3, 1].mean() + 0.005 * scale)
    dz_eye = rest[:, 2] - eye_z
    for side in (1, 2):
        brow = front & (dz_eye > 0.012 * scale) & (dz_eye < 0.022 * scale)
        brow &= np.abs(rest[:, 0] - kp[side, 0]) < 0.022 * scale
        colors[brow] = colors[brow] * 0.35 + 0.02
    dz_nose = rest[:, 2] - kp[0, 2]
    lips = (
        front
        & (dz_nose > -0.045 * scale)
        & (dz_nose < -0.027 * scale)
        & (np.abs(rest[:, 0] - kp[0, 0]) < 0.022 * scale)
    )
    colors[lips] = colors[lips] * np.array([0.85, 0.6, 0.6]) * rng.uniform(0.8, 1.0)
    colors[model.eye_vertices] = rng.uniform(0.02, 0.25)
    return to_linear(colors)


# Backgrounds ---------------------------------------------------------------------------------


def _smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    small = rng.uniform(0, 1, (max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w)), 3))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def procedural_background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float sRGB in [0, 1]: gradients, noise, tiles or stripes, with clutter on top."""
    kind = rng.choice(["gradient", "noise", "tiles", "stripes", "split"], p=[0.2, 0.3, 0.2, 0.15, 0.15])
    c1, c2 = random_color(rng), random_color(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy) / max(h, w)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        img = (1 - t[..., None]) * c1 + t[..., None] * c2
    elif kind == "noise":
        img = _smooth_noise(h, w, rng, int(rng.integers(3, 24)))
        img = img * rng.uniform(0.3, 1.0) + c1 * rng.uniform(0.0, 0.7)
    elif kind == "tiles":
        size = rng.uniform(8, 60)
        line = rng.uniform(1, 4)
        grid = (np.mod(xx + (np.floor(yy / size) % 2) * size / 2 * rng.integers(0, 2), size) < line) | (
            np.mod(yy, size) < line
        )
        img = np.where(grid[..., None], c2, c1)
    elif kind == "stripes":
        period = rng.uniform(6, 80)
        a = rng.uniform(0, np.pi)
        t = np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) / period) > 0
        img = np.where(t[..., None], c1, c2)
    else:  # a floor and a wall
        horizon = rng.uniform(0.2, 0.8) * h
        img = np.where((yy > horizon)[..., None], c1, c2)
    img = img + _smooth_noise(h, w, rng, int(rng.integers(2, 8))) * rng.uniform(0, 0.3) - 0.1
    # Clutter: rectangles, discs and lines standing for furniture, signs, poles.
    for _ in range(int(rng.integers(0, 12))):
        color = tuple(float(c) for c in random_color(rng))
        shape = rng.integers(3)
        if shape == 0:
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.rectangle(
                img, (x0, y0), (x0 + int(rng.integers(5, w // 2)), y0 + int(rng.integers(5, h // 2))), color, -1
            )
        elif shape == 1:
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, center, int(rng.integers(3, max(h, w) // 5)), color, -1)
        else:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p0, p1, color, int(rng.integers(1, 6)))
    return np.clip(img, 0, 1).astype(np.float32)


ASSETS = Path(__file__).parent / "assets" / "backgrounds"
# scikit-image's people-free photographs. CC0: brick, grass, gravel (CC0Textures), chelsea,
# coffee; public domain: clock_motion, rocket (SpaceX), hubble_deep_field (NASA). Left out:
# astronaut and camera, which show people, and images of unclear licence.
SKIMAGE_PHOTOS = (
    "brick.png", "grass.png", "gravel.png", "chelsea.png", "coffee.png",
    "clock_motion.png", "rocket.jpg", "hubble_deep_field.jpg",
)  # fmt: skip
SKIMAGE_TEXTURES = ("brick.png", "grass.png", "gravel.png")
# Photographs from Debian's wallpaper packages (scripts/fetch_backgrounds.sh; licences in
# assets/backgrounds/README.md); those of surfaces also serve as ground textures.
ASSET_TEXTURES = ("dune.jpg", "wood.jpg", "grass.jpg", "fig_on_concrete.jpg")


def _skimage_files(names: tuple[str, ...]) -> list[Path]:
    try:
        import skimage
    except ImportError:
        return []
    root = Path(skimage.__file__).parent / "data"
    return [root / n for n in names if (root / n).exists()]


def photo_files(kind: str) -> tuple[list[Path], list[Path]]:
    """(background photographs, ground textures) of a background kind.

    "skimage": scikit-image's photographs for both (the hard preset); "photos": the wallpaper
    photographs in assets/ and scikit-image's chelsea and coffee as backgrounds, the surfaces
    among them and scikit-image's textures for the ground.
    """
    if kind == "skimage":
        files = _skimage_files(SKIMAGE_PHOTOS)
        return files, files
    if kind == "photos":
        assets = sorted(ASSETS.glob("*.jpg"))
        backgrounds = assets + _skimage_files(("chelsea.png", "coffee.png"))
        grounds = [ASSETS / n for n in ASSET_TEXTURES if (ASSETS / n).exists()] + _skimage_files(SKIMAGE_TEXTURES)
        return backgrounds, grounds
    raise ValueError(f"unknown background kind {kind!r}")


def _load(paths: list[Path]) -> list[np.ndarray]:
    images = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is not None:
            images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)
    return images


class Backgrounds:
    def __init__(self, kind: str = "skimage", photo_probability: float = 0.25, max_zoom: float = 2.5) -> None:
        backgrounds, grounds = photo_files(kind)
        self.photos = _load(backgrounds)
        self.ground_photos = self.photos if grounds == backgrounds else _load(grounds)
        self.photo_probability = photo_probability
        self.max_zoom = max_zoom

    def sample(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        if self.photos and rng.random() < self.photo_probability:
            photo = self.photos[rng.integers(len(self.photos))]
            ph, pw = photo.shape[:2]
            # A random crop at a random scale, flipped half the time.
            scale = rng.uniform(max(h / ph, w / pw), max(h / ph, w / pw) * self.max_zoom)
            resized = cv2.resize(photo, (max(w, int(pw * scale + 0.5)), max(h, int(ph * scale + 0.5))))
            y0 = int(rng.integers(0, resized.shape[0] - h + 1))
            x0 = int(rng.integers(0, resized.shape[1] - w + 1))
            crop = resized[y0 : y0 + h, x0 : x0 + w]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            return np.clip(crop * rng.uniform(0.7, 1.2) + rng.normal(0, 0.05, 3), 0, 1).astype(np.float32)
        return procedural_background(h, w, rng)


# The ground ---------------------------------------------------------------------------------


def _ground_texture(
    rng: np.random.Generator, photos: list[np.ndarray], size: int = 256, photo_probability: float = 0.4
) -> np.ndarray:
    """A square, tileable-enough texture: paving, mottled earth, stripes, or a photograph."""
    if photos and rng.random() < photo_probability:
        photo = photos[rng.integers(len(photos))]
        s = min(photo.shape[:2])
        y0 = int(rng.integers(0, photo.shape[0] - s + 1))
        x0 = int(rng.integers(0, photo.shape[1] - s + 1))
        return cv2.resize(photo[y0 : y0 + s, x0 : x0 + s], (size, size), interpolation=cv2.INTER_AREA)
    c1, c2 = random_color(rng), random_color(rng)
    yy, xx = np.mgrid[0:size, 0:size]
    kind = rng.integers(3)
    if kind == 0:  # paving: cells of size/n with grout lines
        n = int(rng.choice([2, 4, 8]))
        cell = size // n
        grout = (xx % cell < 3) | (yy % cell < 3)
        tex = np.where(grout[..., None], c2, c1) + rng.normal(0, 0.03, (n, n, 3)).repeat(cell, 0).repeat(cell, 1)
    elif kind == 1:  # earth, sand, grass-like mottling
        tex = c1 + (_smooth_noise(size, size, rng, 8) - 0.5) * rng.uniform(0.1, 0.4)
    else:  # boards or road markings
        period = size // int(rng.choice([2, 4, 8]))
        tex = np.where(((xx % period) < period * rng.uniform(0.05, 0.5))[..., None], c2, c1)
    tex = tex + rng.normal(0, 0.03, (size, size, 3))
    return np.clip(tex, 0, 1).astype(np.float32)


def ground_plane(
    camera, h: int, w: int, rng: np.random.Generator, photos: list[np.ndarray], photo_probability: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """The plane z=0 as the camera sees it, textured in perspective and fading into haze.

    Returns the image (H, W, 3) and the mask of pixels below the horizon.
    """
    tex = _ground_texture(rng, photos, photo_probability=photo_probability)
    size = tex.shape[0]
    metres = rng.uniform(0.8, 4.0)  # the ground one texture tile covers
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(u - camera.cx) / camera.fx, -(v - camera.cy) / camera.fy, -np.ones_like(u)], axis=-1)
    rays = rays @ camera.pose[:3, :3].T
    eye = camera.pose[:3, 3]
    down = rays[..., 2] < -1e-6
    t = np.where(down, -eye[2] / np.where(down, rays[..., 2], -1.0), 0.0)  # distance along the ray
    x = eye[0] + t * rays[..., 0]
    y = eye[1] + t * rays[..., 1]
    angle = rng.uniform(0, 2 * np.pi)
    gx = (np.cos(angle) * x - np.sin(angle) * y) / metres * size
    gy = (np.sin(angle) * x + np.cos(angle) * y) / metres * size
    map_x = np.mod(np.where(down, gx, 0.0), size).astype(np.float32)
    map_y = np.mod(np.where(down, gy, 0.0), size).astype(np.float32)
    sharp = cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    # Far away a pixel covers many texels: fall back on a blurred texture there, then haze.
    soft = cv2.remap(cv2.GaussianBlur(tex, (0, 0), 4.0), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    texels_per_pixel = np.where(down, t / camera.fy * size / metres, np.inf)
    far = np.clip((texels_per_pixel - 1.0) / 3.0, 0, 1)[..., None]
    img = (1 - far) * sharp + far * soft
    haze = (1 - np.exp(-np.where(down, t, 1e6) / rng.uniform(8, 60)))[..., None]
    img = (1 - haze) * img * rng.uniform(0.6, 1.1) + haze * tex.reshape(-1, 3).mean(0)
    return img.astype(np.float32), down


# Camera effects ------------------------------------------------------------------------------


def camera_effects(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (focus or motion), exposure and colour cast, sensor noise; float sRGB in, uint8 out."""
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.5))
    elif rng.random() < 0.15:
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k))
        kernel[k // 2] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    gain = (rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)
    img = img * gain + np.float32(rng.uniform(-0.06, 0.06))
    gamma = np.float32(rng.uniform(0.8, 1.25))
    img = np.clip(img, 0, 1) ** gamma
    if rng.random() < 0.6:
        img = img + rng.normal(0, rng.uniform(0.005, 0.04), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
