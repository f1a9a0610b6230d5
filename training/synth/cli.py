"""``hevitpose synth OUT_DIR --num N [--seed S] [--workers W]``: render a COCO people dataset."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .generate import SynthConfig, generate
from .poses import ACTIVITIES, ACTIVITY_WEIGHTS
from .scene import PRESETS, scene_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hevitpose synth",
        description="Render synthetic people (Anny body model, pyrender on Mesa) into a COCO "
        "person-keypoints dataset: OUT_DIR/images/{train,val}/*.jpg and "
        "OUT_DIR/annotations/person_keypoints_{train,val}.json.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--num", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="same seed, same dataset (default 0)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    p.add_argument(
        "--start",
        type=int,
        default=0,
        help="first image index (default 0); above 0, the images join the dataset in OUT_DIR, "
        "which must have been made with the same options",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of images in val (default 0.1)")
    p.add_argument("--width", type=int, default=320, help="image width in pixels (default 320)")
    p.add_argument("--height", type=int, default=320, help="image height in pixels (default 320)")
    p.add_argument("--max-people", type=int, default=4, help="people per image, at most (default 4)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="photo",
        help="photo (default): eye-level cameras, people filling much of the frame, few occluders, "
        "photographs as backgrounds, daylight; hard: any camera height and roll, tiny to cut-off "
        "people, occluders, procedural backgrounds (see docs/synth.md)",
    )
    p.add_argument(
        "--activities",
        default="",
        metavar="NAME=W,...",
        help="weights of the named activities in place of the preset's, e.g. crouch=0.2,lie=0.1; the others "
        f"keep the preset's, and all are normalised ({', '.join(ACTIVITIES)})",
    )
    return p


def activity_weights(spec: str, preset: str) -> tuple[float, ...]:
    """The preset's activity weights with those named in ``spec`` ("name=w,...") replaced."""
    weights = dict(zip(ACTIVITIES, PRESETS[preset].get("activity_weights") or ACTIVITY_WEIGHTS))
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in weights:
            raise ValueError(f"unknown activity {name!r} in --activities; choose from {', '.join(ACTIVITIES)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--activities needs NAME=WEIGHT, got {item!r}") from None
        if not (math.isfinite(weights[name]) and weights[name] >= 0):
            raise ValueError(f"--activities weights must be finite and at least 0, got {item!r}")
    if sum(weights.values()) <= 0:
        raise ValueError("--activities leaves every activity at weight 0")
    return tuple(weights.values())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    errors = []
    if args.num < 1:
        errors.append("--num must be at least 1")
    if args.start < 0:
        errors.append("--start must be at least 0")
    if args.workers < 1:
        errors.append("--workers must be at least 1")
    if not 0.0 <= args.val_fraction <= 1.0:
        errors.append("--val-fraction must lie in [0, 1]")
    if not (16 <= args.width <= 4096 and 16 <= args.height <= 4096):
        errors.append("--width and --height must lie in [16, 4096]")
    if args.max_people < 1:
        errors.append("--max-people must be at least 1")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        errors.append(f"{args.out_dir} exists and is not a directory")
    overrides = {}
    if args.activities:
        try:
            overrides["activity_weights"] = activity_weights(args.activities, args.preset)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        for e in errors:
            print(f"hevitpose synth: {e}", file=sys.stderr)
        return 2
    cfg = SynthConfig(
        out_dir=args.out_dir,
        num=args.num,
        seed=args.seed,
        start=args.start,
        workers=args.workers,
        val_fraction=args.val_fraction,
        scene=scene_settings(
            args.preset, width=args.width, height=args.height, max_people=args.max_people, **overrides
        ),
    )
    try:
        summary = generate(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"hevitpose synth: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    print(
        f"{summary['images']} images in {summary['seconds']} s: {summary['images_per_s']} images/s with "
        f"{summary['workers']} worker(s), {summary['images_per_cpu_s']} images per CPU-second; the dataset "
        f"has {summary['dataset_images']} images, {summary['train_people'] + summary['val_people']} people",
        file=sys.stderr,
    )
    return 0
