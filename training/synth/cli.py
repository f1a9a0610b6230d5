"""``hevitpose synth OUT_DIR --num N [--seed S] [--workers W]``: render a COCO people dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .generate import SynthConfig, generate
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
    return p


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
        scene=scene_settings(args.preset, width=args.width, height=args.height, max_people=args.max_people),
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
