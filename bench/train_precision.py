"""CPU training step in float32 against bf16 autocast (``run.cpu_precision``), side by side per input size.

Times forward, backward and Adam on ready tensors (``train_speed.step_throughput``), the two
precisions in alternating slices so that other load on the machine falls on both alike; the
median slice of each is reported. Whether bf16 pays depends on the input size and on the CPU
having bf16 in hardware (AVX-512 BF16 or AMX): this table is what ``run.cpu_precision`` is chosen by.
The table goes into BENCHMARKS.md between ``<!-- train_precision:begin/end -->``.

    python bench/train_precision.py --sizes 96x128 192x256 --threads 1
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

from report import machine, write_section  # noqa: E402  (bench/ is on sys.path)
from train_speed import step_throughput  # noqa: E402

from model.runtime import cpu_has_bf16  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hevitpose-t")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(96, 128), (128, 160), (192, 256)],
                        help="WIDTHxHEIGHT input sizes")  # fmt: skip
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slice", type=float, default=5.0, help="seconds per precision per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    rows = []
    for w, h in args.sizes:
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                rate = step_throughput(args.model, args.batch, cpu, args.slice, (w, h), dtype)
                rates[name].append(rate)
        fp32, bf16 = statistics.median(rates["fp32"]), statistics.median(rates["bf16"])
        print(f"{w}x{h}: fp32 {fp32:.1f}, bf16 {bf16:.1f} samples/s", file=sys.stderr)
        rows.append(f"| {args.model} | {w}x{h} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x |")

    hardware = "yes" if cpu_has_bf16() else "no (bf16 is emulated: expect it slower)"
    body = (
        "## Training precision on the CPU (`run.cpu_precision`)\n\n"
        f"`bench/train_precision.py --threads {args.threads}`, {date.today().isoformat()}, {machine()}; "
        f"AVX-512 BF16 / AMX: {hardware}; load average over the last 5 minutes at the end: {os.getloadavg()[1]:.1f}. "
        f"Training step (forward, backward, Adam) on ready tensors, batch {args.batch}, channels_last, "
        f"median of {args.rounds} alternating slices of {args.slice:g} s per precision. Only the ratio "
        "within a row means much on a shared machine.\n\n"
        "| model | input (w x h) | float32 samples/s | bf16 autocast samples/s | bf16 / float32 |\n"
        "|---|---|---:|---:|---:|\n" + "\n".join(rows)
    )
    print(body)
    if not args.no_write:
        write_section(args.out, "train_precision", body)


if __name__ == "__main__":
    main()
