"""CPU training step in float32, in bf16 autocast (``run.cpu_precision``) and under torch.compile
(``run.compile``), side by side per input size.

Times forward, backward and Adam on ready tensors (``train_speed.training_step``), the variants in
alternating slices so that other load on the machine falls on all alike; the median slice of each
is reported, and the compiled variant's first steps (its compilation) separately. Whether bf16 pays
depends on the input size and on the CPU having bf16 in hardware (AVX-512 BF16 or AMX); whether
compiling pays depends on how long the run is against the compilation: this table is what the CPU
recipes' ``run.cpu_precision`` and ``run.compile`` are chosen by.
The table goes into BENCHMARKS.md between ``<!-- train_precision:begin/end -->``.

    python bench/train_precision.py --sizes 96x128 192x256 --threads 1
    python bench/train_precision.py --no-compile     # float32 and bf16 only (compiling takes minutes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import machine, parse_size, write_section  # noqa: E402  (bench/ is on sys.path)
from train_speed import timed_rate, training_step, warm_up  # noqa: E402

from model.runtime import cpu_has_bf16  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hevitpose-t")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(96, 128), (128, 160), (192, 256)],
                        help="WIDTHxHEIGHT input sizes")  # fmt: skip
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slice", type=float, default=5.0, help="seconds per variant per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    variants = {"fp32": (None, False), "bf16": (torch.bfloat16, False)}
    if not args.no_compile:
        variants["compile"] = (None, True)
    rows = []
    for w, h in args.sizes:
        steps, warmup = {}, {}
        for name, (dtype, compiled) in variants.items():
            steps[name] = training_step(args.model, args.batch, cpu, (w, h), dtype, compiled)
            warmup[name] = warm_up(steps[name])
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, step in steps.items():
                rates[name].append(timed_rate(step, args.slice))
        rate = {name: statistics.median(r) for name, r in rates.items()}
        print(f"{w}x{h}: " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items()) + " samples/s", file=sys.stderr)
        row = (
            f"| {args.model} | {w}x{h} | {rate['fp32']:.1f} | {rate['bf16']:.1f} | {rate['bf16'] / rate['fp32']:.2f}x |"
        )
        if "compile" in rate:
            row += f" {rate['compile']:.1f} | {rate['compile'] / rate['fp32']:.2f}x | {warmup['compile']:.0f} |"
        rows.append(row)

    hardware = "yes" if cpu_has_bf16() else "no (bf16 is emulated: expect it slower)"
    header = "| model | input (w x h) | float32 samples/s | bf16 autocast samples/s | bf16 / float32 |"
    rule = "|---|---|---:|---:|---:|"
    if "compile" in variants:
        header += " torch.compile float32 samples/s | compile / float32 | its first two steps (s) |"
        rule += "---:|---:|---:|"
    body = (
        "## Training step on the CPU: precision and torch.compile (`run.cpu_precision`, `run.compile`)\n\n"
        f"`bench/train_precision.py --threads {args.threads}`, {date.today().isoformat()}, {machine()}; "
        f"AVX-512 BF16 / AMX: {hardware}; load average over the last 5 minutes at the end: {os.getloadavg()[1]:.1f}. "
        f"Training step (forward, backward, Adam) on ready tensors, batch {args.batch}, channels_last, "
        f"median of {args.rounds} alternating slices of {args.slice:g} s per variant, after two warm-up steps "
        "(for torch.compile, its compilation: the last column, short where inductor's on-disk cache already "
        "holds these graphs from an earlier run on the machine). Only the ratios within a row mean much on a "
        "shared machine.\n\n" + header + "\n" + rule + "\n" + "\n".join(rows)
    )
    print(body)
    if not args.no_write:
        write_section(args.out, "train_precision", body)


if __name__ == "__main__":
    main()
