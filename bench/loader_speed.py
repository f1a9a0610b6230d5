"""What a training sample costs the loader on the GPU recipe's data, and what the loader delivers.

Builds ``--recipe``'s training set on ``--root`` (the data a GPU run trains on: ``training.pack read``
output, or scripts/default_data.sh's folders) and measures, for each input size:
  * CPU milliseconds per sample in one process with one thread (what one loader worker spends),
    over the same sample keys for every variant, in alternating rounds: images read and decoded
    for every sample, and decoded once (``data.cache_images=true``);
  * samples/s of the recipe's own DataLoader (``training.data.data_loader``) with ``--workers``
    workers, for both variants;
  * the bytes of one sample's ``input`` as the loader hands it over.
``--code DIR`` measures another checkout's training code with this script (say, the commit before a
change): its rows go beside this one's when ``--baseline DIR`` runs both, alternating, one process per
round. The table goes into BENCHMARKS.md between ``<!-- loader_speed:begin/end -->``.

    python bench/loader_speed.py --root data/real2 --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from report import machine, parse_size, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


def measure(args: argparse.Namespace) -> dict:
    """One round in this process: ms/sample per variant and size, loader samples/s, input bytes."""
    sys.path.insert(0, str(args.code))
    import cv2
    import numpy as np
    import torch

    from training.config import DataConfig, apply_overrides, config_from_dict, read_recipe
    from training.data import EpochSampler, data_loader, train_dataset

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    raw = read_recipe(args.recipe)
    variants = {"decode": []}
    if "cache_images" in DataConfig.__dataclass_fields__:
        variants = {"decode": ["data.cache_images=false"], "cached": ["data.cache_images=true"]}
    else:  # code from before the key: the recipe's own setting cannot apply
        raw["data"].pop("cache_images", None)
    out: dict = {}
    for w, h in args.sizes:
        base = [f"data.root={args.root}", f"model.input_size=[{w},{h}]", f"data.workers={args.workers}"]
        for name, extra in variants.items():
            cfg = config_from_dict(apply_overrides({"name": args.recipe.stem, **raw}, base + extra))
            dataset = train_dataset(cfg)
            keys = np.random.default_rng(0).choice(len(dataset), args.samples, replace=False)
            dataset[(0, int(keys[0]))]  # first-use costs (a cache's mapping) out of the timing
            start = time.process_time()
            for i in keys:
                sample = dataset[(0, int(i))]
            ms = (time.process_time() - start) / len(keys) * 1e3
            loader = data_loader(cfg, dataset, EpochSampler(len(dataset), 1, 0, 0), args.batch, torch.device("cpu"))
            it = iter(loader)
            next(it)  # workers started
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.loader_seconds:
                count += len(next(it)["index"])
            rate = count / (time.perf_counter() - start)
            del it, loader, dataset
            key = f"{w}x{h}/{name}"
            out[key] = {"ms": ms, "loader": rate, "input_bytes": sample["input"].nbytes}
            print(f"{args.code.name} {key}: {ms:.2f} ms/sample, loader {rate:.0f} samples/s", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the recipe's data.root")
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs/hevitpose_default_gpu.yaml")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(192, 256), (96, 128)])
    parser.add_argument("--samples", type=int, default=300, help="samples timed per variant per round")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--loader-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose training code is measured")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured in alternating rounds")
    parser.add_argument("--round", action="store_true", help=argparse.SUPPRESS)  # one round, JSON on stdout
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.root, args.recipe, args.code = args.root.resolve(), args.recipe.resolve(), args.code.resolve()
    if args.round:
        print(json.dumps(measure(args)))
        return

    checkouts = {"this checkout": args.code}
    if args.baseline:
        checkouts = {"baseline": args.baseline.resolve(), **checkouts}
    passed = [a for a in sys.argv[1:] if a not in ("--no-write",)]
    results: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, code in checkouts.items():
            cmd = [sys.executable, __file__, *passed, "--round", "--code", str(code)]
            done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=code)
            results[name].append(json.loads(done.stdout.splitlines()[-1]))

    def median(name: str, key: str, field: str) -> float | None:
        values = [r[key][field] for r in results[name] if key in r]
        return statistics.median(values) if values else None

    rows = []
    for w, h in args.sizes:
        for name, code in checkouts.items():
            commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() or "?"  # fmt: skip
            cells = []
            for variant in ("decode", "cached"):
                ms, rate = median(name, f"{w}x{h}/{variant}", "ms"), median(name, f"{w}x{h}/{variant}", "loader")
                cells += [f"{ms:.2f}" if ms else "-", f"{rate:.0f}" if rate else "-"]
            nbytes = median(name, f"{w}x{h}/decode", "input_bytes")
            rows.append(f"| {name} ({commit}) | {w}x{h} | " + " | ".join(cells) + f" | {nbytes / 1024:.0f} |")
    body = (
        "## Training data pipeline: CPU per sample and loader throughput (`data.cache_images`)\n\n"
        f"`bench/loader_speed.py --root {args.root.name} --recipe {args.recipe.name} --workers {args.workers}"
        f"{' --baseline ...' if args.baseline else ''}`, {date.today().isoformat()}, "
        f"{machine()}; "
        f"load average over the last 5 minutes at the end: {os.getloadavg()[1]:.1f}. The recipe's augmentation "
        f"on its training set ({args.samples} people drawn once, the same for every variant); CPU ms per sample "
        "in one process with one thread (what one loader worker spends); the recipe's DataLoader with "
        f"{args.workers} workers and batch {args.batch} for {args.loader_seconds:g} s; medians of {args.rounds} "
        "rounds, the checkouts alternating, one process per round.\n\n"
        "| code | input (w x h) | ms/sample, decoded each time | loader samples/s | ms/sample, decoded once "
        "(`data.cache_images`) | loader samples/s | KiB per sample's input |\n"
        "|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )
    print(body)
    if not args.no_write:
        write_section(args.out, "loader_speed", body)


if __name__ == "__main__":
    main()
