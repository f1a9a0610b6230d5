"""Render a dataset: images in parallel worker processes, COCO JSON files written at the end.

Image i is drawn from its own random stream, seeded by (seed, i), so a dataset does not
depend on the number of workers, and any image can be re-rendered on its own.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from model.keypoints import COCO17

from .scene import SceneSettings


@dataclass
class SynthConfig:
    out_dir: str
    num: int
    seed: int = 0
    # First image index: a dataset made with the same settings grows by images start..start+num-1.
    start: int = 0
    workers: int = 1
    val_fraction: float = 0.1
    jpeg_quality: tuple[int, int] = (45, 95)
    scene: SceneSettings = field(default_factory=SceneSettings)


@dataclass
class ImageResult:
    index: int
    split: str
    file_name: str
    width: int
    height: int
    annotations: list[dict]
    activities: list[str]


def split_of(index: int, val_fraction: float) -> str:
    """Every 1/val_fraction-th image goes to val, spread evenly over the indices."""
    return "val" if np.floor((index + 1) * val_fraction) > np.floor(index * val_fraction) else "train"


def image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


class ImageGenerator:
    """Everything one process needs to render images: the body model, a GL context, backgrounds."""

    def __init__(self, cfg: SynthConfig) -> None:
        import torch

        from .appearance import Backgrounds
        from .body import BodyModel
        from .render import Renderer

        torch.set_num_threads(1)
        self.cfg = cfg
        self.model = BodyModel()
        self.renderer = Renderer(cfg.scene.width, cfg.scene.height)
        scene = cfg.scene
        self.backgrounds = Backgrounds(scene.backgrounds, scene.background_photo_probability, scene.background_zoom)

    def render(self, index: int) -> tuple[ImageResult, np.ndarray, np.ndarray]:
        """(annotations, RGB uint8 image, instance map) of image index."""
        from .annotate import coco_annotations
        from .appearance import camera_effects, ground_plane
        from .scene import sample_scene

        cfg = self.cfg
        rng = image_rng(cfg.seed, index)
        spec, persons = sample_scene(self.model, rng, cfg.scene)
        rendering = self.renderer.render(spec)
        h, w = rendering.depth.shape
        background = self.backgrounds.sample(h, w, rng)
        if rng.random() < cfg.scene.ground_probability:
            ground, below = ground_plane(
                spec.camera, h, w, rng, self.backgrounds.ground_photos, cfg.scene.ground_photo_probability
            )
            background = np.where(below[..., None], ground, background)
        # Without multisampling, silhouettes would be jagged: their edge pixels blend a little
        # background in instead.
        drawn = (rendering.instance > 0).astype(np.float32)
        alpha = (drawn * cv2.GaussianBlur(drawn, (3, 3), 0.8))[..., None]
        image = alpha * (rendering.color.astype(np.float32) / 255.0) + (1 - alpha) * background
        image = camera_effects(image, rng)
        annotations = coco_annotations(persons, spec.camera, rendering, self.model)
        split = split_of(index, cfg.val_fraction)
        result = ImageResult(
            index=index,
            split=split,
            file_name=f"{index:08d}.jpg",
            width=w,
            height=h,
            annotations=annotations,
            activities=[p.activity for p in persons],
        )
        return result, image, rendering.instance

    def close(self) -> None:
        self.renderer.close()

    def write(self, index: int) -> ImageResult:
        result, image, _ = self.render(index)
        rng = image_rng(self.cfg.seed, index + (1 << 40))  # its own stream: JPEG quality only
        quality = int(rng.integers(self.cfg.jpeg_quality[0], self.cfg.jpeg_quality[1] + 1))
        path = Path(self.cfg.out_dir) / "images" / result.split / result.file_name
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for image {index}")
        path.write_bytes(buf.tobytes())
        return result


_worker: ImageGenerator | None = None


def _init_worker(cfg: SynthConfig) -> None:
    global _worker
    _close_worker()
    _worker = ImageGenerator(cfg)


def _close_worker() -> None:
    # Explicitly, and before another context is made: pyrender's EGL clean-up terminates the
    # process-wide EGL display, which would break a context created before it ran.
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None


def _write_one(index: int) -> ImageResult:
    assert _worker is not None
    return _worker.write(index)


def categories() -> list[dict]:
    return [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(COCO17.names),
            # COCO numbers keypoints from 1 in its skeleton.
            "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton],
        }
    ]


def coco_json(results: list[ImageResult], split: str, cfg: SynthConfig) -> dict:
    images, annotations = [], []
    for r in sorted(results, key=lambda r: r.index):
        if r.split != split:
            continue
        image_id = r.index + 1
        images.append({"id": image_id, "file_name": r.file_name, "width": r.width, "height": r.height})
        for ann in r.annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return {
        "info": {
            "description": "HEViTPose synthetic people, rendered from the Anny body model (hevitpose synth)",
            "version": "1",
            "settings": _settings(cfg),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }


def _as_stored(settings) -> dict:
    """A settings dataclass as JSON stores it (tuples become lists), to compare with a file's."""
    return json.loads(json.dumps(asdict(settings)))


def _settings(cfg: SynthConfig) -> dict:
    """What decides the images, but not which of them or how fast."""
    settings = _as_stored(cfg)
    for key in ("out_dir", "workers", "num", "start"):
        settings.pop(key)
    return settings


def merge_coco(existing: dict, new: dict) -> dict:
    """Images and annotations of both, in image order, annotation ids renumbered."""
    existing_settings = {k: v for k, v in existing["info"]["settings"].items() if k not in ("num", "start")}
    if "scene" in existing_settings:
        # A scene field added after the dataset was made took its default there.
        existing_settings["scene"] = {**_as_stored(SceneSettings()), **existing_settings["scene"]}
    if existing_settings != new["info"]["settings"]:
        raise ValueError("the dataset in OUT_DIR was made with other settings; extend it with the same ones")
    ids = {im["id"] for im in existing["images"]}
    if any(im["id"] in ids for im in new["images"]):
        raise ValueError("some of these images are in OUT_DIR already; --start must lie past them")
    merged = dict(new)
    merged["images"] = sorted(existing["images"] + new["images"], key=lambda im: im["id"])
    annotations = sorted(existing["annotations"] + new["annotations"], key=lambda a: a["image_id"])
    merged["annotations"] = [{**a, "id": i + 1} for i, a in enumerate(annotations)]
    return merged


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (user + system)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def generate(cfg: SynthConfig, log=print) -> dict:
    """Render cfg.num images into cfg.out_dir; returns a summary with the measured speed.

    With cfg.start > 0 the images join the dataset already in cfg.out_dir, which must have been
    made with the same settings: the result is the dataset one run with start=0 would make.
    """
    out = Path(cfg.out_dir)
    existing = {}
    if cfg.start > 0:
        for split in ("train", "val"):
            path = out / "annotations" / f"person_keypoints_{split}.json"
            if not path.exists():
                raise ValueError(f"--start {cfg.start}: no dataset to extend in {out} ({path} is missing)")
            existing[split] = json.loads(path.read_text())
            # Fail now rather than after the rendering.
            merge_coco(existing[split], coco_json([], split, cfg))
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    results: list[ImageResult] = []
    indices = range(cfg.start, cfg.start + cfg.num)
    report_every = max(1, min(500, cfg.num // 20))
    if cfg.workers <= 1:
        _init_worker(cfg)
        setup_s = time.perf_counter() - start
        loop_start = time.perf_counter()
        cpu_start = _cpu_seconds()
        try:
            for i, index in enumerate(indices):
                results.append(_write_one(index))
                if (i + 1) % report_every == 0:
                    log(f"{i + 1}/{cfg.num} images, {(i + 1) / (time.perf_counter() - loop_start):.1f} images/s")
        finally:
            _close_worker()
    else:
        # Spawned, not forked: an OpenGL context and torch's thread pool do not survive a fork.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
            setup_s = 0.0
            loop_start = time.perf_counter()
            cpu_start = _cpu_seconds()
            for i, result in enumerate(pool.imap_unordered(_write_one, indices, chunksize=4)):
                results.append(result)
                if (i + 1) % report_every == 0:
                    log(f"{i + 1}/{cfg.num} images, {(i + 1) / (time.perf_counter() - loop_start):.1f} images/s")
    elapsed = time.perf_counter() - loop_start
    # On a shared machine wall time says little per core; CPU time does (with several
    # workers it also counts their start-up: loading the body model, about a second each).
    cpu_s = _cpu_seconds() - cpu_start

    counts = {}
    for split in ("train", "val"):
        data = coco_json(results, split, cfg)
        if split in existing:
            data = merge_coco(existing[split], data)
        with open(out / "annotations" / f"person_keypoints_{split}.json", "w") as f:
            json.dump(data, f)
        counts[split] = (len(data["images"]), len(data["annotations"]))
    summary = {
        "images": cfg.num,
        "dataset_images": counts["train"][0] + counts["val"][0],
        "train_images": counts["train"][0],
        "train_people": counts["train"][1],
        "val_images": counts["val"][0],
        "val_people": counts["val"][1],
        "workers": cfg.workers,
        "setup_s": round(setup_s, 2),
        "seconds": round(elapsed, 2),
        "images_per_s": round(cfg.num / max(elapsed, 1e-9), 2),
        "images_per_s_per_worker": round(cfg.num / max(elapsed, 1e-9) / max(cfg.workers, 1), 2),
        "cpu_s": round(cpu_s, 2),
        "images_per_cpu_s": round(cfg.num / max(cpu_s, 1e-9), 2),
    }
    return summary
