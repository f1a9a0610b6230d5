"""Crops/s of the bare network per backend, side by side in one run.

CPU (float32): eager, channels_last, torch.compile, ONNX Runtime, at batch 1 and 32.
CUDA: float16 and bfloat16 with channels_last, + torch.compile, + CUDA graphs, batch 1 to 512,
with the achieved TFLOP/s (full multiply-accumulate count x 2) beside the crops/s.

Backends are measured round-robin (one timed slice of each in turn, several rounds, median
kept), so a load that comes and goes on a shared machine hits them all alike.

    python bench/model_speed.py                      # everything for this machine's device
    python bench/model_speed.py --models hevitpose-b --batches 1 8 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import build_model  # noqa: E402
from model.flops import full_macs  # noqa: E402
from model.onnx import export_onnx  # noqa: E402
from model.runtime import OnnxRunner  # noqa: E402
from report import machine, write_section  # noqa: E402  (bench/ is on sys.path)

DEFAULT_MODELS = ["hevitpose-t", "hevitpose-s", "hevitpose-b", "efficientvit-m4-peow3"]
INPUT = (256, 256)


@dataclass
class Cell:
    model: str
    backend: str
    batch: int
    seconds: list[float]

    @property
    def crops_per_s(self) -> float:
        return self.batch / statistics.median(self.seconds)


def cpu_backends(name: str, batch: int, tmp: Path) -> dict[str, Callable[[], object]]:
    x = torch.randn(batch, 3, INPUT[1], INPUT[0])
    eager = build_model(name).eval()
    cl = build_model(name).eval().to(memory_format=torch.channels_last)
    cl.load_state_dict(eager.state_dict())
    x_cl = x.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(build_model(name).eval())
    onnx = OnnxRunner(export_onnx(eager, tmp / f"{name}.onnx", INPUT))

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return fn()

        return run

    return {
        "eager": no_grad(lambda: eager(x)),
        "channels_last": no_grad(lambda: cl(x_cl)),
        "torch.compile": no_grad(lambda: compiled(x)),
        "onnxruntime": lambda: onnx(x),
    }


def cuda_backends(name: str, batch: int) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {}
    for dtype in (torch.float16, torch.bfloat16):
        tag = "fp16" if dtype == torch.float16 else "bf16"
        x = torch.randn(batch, 3, INPUT[1], INPUT[0], device="cuda", dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        model = build_model(name).eval().to("cuda", dtype).to(memory_format=torch.channels_last)
        compiled = torch.compile(model, mode="max-autotune-no-cudagraphs")
        graphed = torch.compile(model, mode="max-autotune")  # max-autotune adds CUDA graphs

        def wrap(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor = x) -> Callable[[], object]:
            def run() -> object:
                with torch.inference_mode():
                    return fn(x)

            return run

        out[f"{tag} channels_last"] = wrap(model)
        out[f"{tag} +compile"] = wrap(compiled)
        out[f"{tag} +compile+cudagraphs"] = wrap(graphed)
    return out


def time_slice(fn: Callable[[], object], cuda: bool, min_seconds: float) -> float:
    """Seconds per call, averaged over as many calls as fill ``min_seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def measure(name: str, batch: int, cuda: bool, rounds: int, slice_s: float, tmp: Path) -> list[Cell]:
    backends = cuda_backends(name, batch) if cuda else cpu_backends(name, batch, tmp)
    for fn in backends.values():  # warm-up: compilation, autotuning, graph capture, allocator
        for _ in range(3):
            fn()
    if cuda:
        torch.cuda.synchronize()
    cells = {b: Cell(name, b, batch, []) for b in backends}
    for _ in range(rounds):
        for backend, fn in backends.items():
            cells[backend].seconds.append(time_slice(fn, cuda, slice_s))
    return list(cells.values())


def format_table(cells: list[Cell], gmacs: dict[str, float], cuda: bool) -> str:
    base = {(c.model, c.batch): c.crops_per_s for c in cells if c.backend in ("eager", "fp16 channels_last")}
    header = "| model | batch | backend | crops/s | vs first |" + (" TFLOP/s |" if cuda else "")
    lines = [header, "|---|---:|---|---:|---:|" + ("---:|" if cuda else "")]
    for c in cells:
        row = f"| {c.model} | {c.batch} | {c.backend} | {c.crops_per_s:.1f} | {c.crops_per_s / base[(c.model, c.batch)]:.2f}x |"
        if cuda:
            row += f" {c.crops_per_s * gmacs[c.model] * 2 / 1e3:.1f} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per timed slice")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    batches = args.batches or ([1, 8, 32, 128, 512] if cuda else [1, 32])

    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in batches:
                cells += measure(name, batch, cuda, args.rounds, args.slice, Path(tmp))
                print(f"done {name} batch {batch}", file=sys.stderr, flush=True)
    load = os.getloadavg()[1]
    gmacs = {name: full_macs(build_model(name), (3, INPUT[1], INPUT[0])) / 1e9 for name in args.models}
    table = format_table(cells, gmacs, cuda)
    body = (
        f"## Model speed ({'CUDA' if cuda else 'CPU float32'})\n\n"
        f"`bench/model_speed.py`, {date.today().isoformat()}, {machine()}. Input 256x256, 17 keypoints, "
        f"random weights; median of {args.rounds} round-robin slices of {args.slice:g} s. "
        f"'vs first' is the speed-up over the first backend of the same model and batch. "
        f"Load average over the last 5 minutes at the end: {load:.1f}; above the core count, other work "
        f"shared the machine and only the ratios within a row group mean much.\n\n{table}"
    )
    print(body)
    write_section(args.out, f"model_speed_{'cuda' if cuda else 'cpu'}", body)


if __name__ == "__main__":
    main()
