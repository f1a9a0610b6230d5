"""Crops/s of the bare network per backend, side by side in one run.

CPU: every backend the service can pick (``model/runtime.py``: ONNX Runtime float32 and int8,
OpenVINO float32 and bfloat16, torch float32 and bfloat16 with channels_last) plus eager and
torch.compile, at batch 1 and 8, for the default bundle at its input size and for T/S/B (random
weights) at the recipes' 256x256; MoveNet Thunder (``../shared/models/movenet-thunder.onnx``, ONNX
Runtime, its fixed batch of 1) in the same rounds as the yardstick. For the bundle, each backend's
agreement with float32 on the calibration crops (mean OKS, what the service's start-up check
uses) and, with ``--eval-data``, its keypoint AP on a held-out COCO set.
CUDA: float16 and bfloat16 with channels_last, + torch.compile, + CUDA graphs, batch 1 to 512,
with the achieved TFLOP/s (full multiply-accumulate count x 2) beside the crops/s.

Backends are measured round-robin (one timed slice of each in turn, several rounds, median
kept), so a load that comes and goes on a shared machine hits them all alike.

    python bench/model_speed.py                      # everything for this machine's device
    python bench/model_speed.py --eval-data data/real --profile
    python bench/model_speed.py --models hevitpose-b --batches 1 8 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import machine, write_section  # noqa: E402  (bench/ is on sys.path)

from model import build_model  # noqa: E402
from model.bundle import load_bundle  # noqa: E402
from model.codec import HeatmapCodec  # noqa: E402
from model.flops import full_macs  # noqa: E402
from model.runtime import RuntimeConfig, cpu_has_bf16, create_runner  # noqa: E402
from service.runtime_choice import AGREEMENT_THRESHOLD, calibration_inputs, keypoint_agreement  # noqa: E402

DEFAULT_MODELS = ["hevitpose-t", "hevitpose-s", "hevitpose-b", "efficientvit-m4-peow3"]
DEFAULT_BUNDLE = ROOT / "weights" / "hevitpose-t-default"
THUNDER = ROOT.parent / "shared" / "models" / "movenet-thunder.onnx"
INPUT = (256, 256)
THUNDER_LABEL = "MoveNet Thunder (onnxruntime, 256x256)"


@dataclass
class Cell:
    model: str
    backend: str
    batch: int
    seconds: list[float]
    input_size: tuple[int, int] = INPUT
    agreement: float | None = None
    ap: float | None = None

    @property
    def crops_per_s(self) -> float:
        return self.batch / statistics.median(self.seconds)


def thunder_runner(threads: int) -> Callable[[torch.Tensor], object] | None:
    """MoveNet Thunder on each crop in turn (its graph takes one 256x256 image)."""
    if not THUNDER.is_file():
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(THUNDER), options, providers=["CPUExecutionProvider"])
    crop = np.zeros((1, 256, 256, 3), np.int32)

    def run(x: torch.Tensor) -> object:
        for _ in range(len(x)):
            session.run(None, {"input:0": crop})
        return None

    return run


def cpu_backends(model: nn.Module, input_size: tuple[int, int], tmp: Path, calibration: torch.Tensor, threads: int,
                 compile: bool, only: list[str] | None = None) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:  # fmt: skip
    """Label -> runner, for every CPU backend that builds here (or those in ``only``); the first,
    eager float32, is the reference and always there."""
    eager = copy.deepcopy(model).eval()

    def eager_run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return eager(x)

    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"torch eager": eager_run}
    bf16 = cpu_has_bf16()
    configs = {
        "torch channels_last": RuntimeConfig(device="cpu", backend="torch", threads=threads),
        "torch bf16": RuntimeConfig(device="cpu", backend="torch", dtype="bfloat16", threads=threads) if bf16 else None,
        "torch.compile": RuntimeConfig(device="cpu", backend="torch", compile=True, threads=threads)
        if compile
        else None,
        "onnxruntime": RuntimeConfig(device="cpu", backend="onnxruntime", threads=threads),
        "onnxruntime int8": RuntimeConfig(device="cpu", backend="onnxruntime-int8", threads=threads),
        "openvino": RuntimeConfig(device="cpu", backend="openvino", threads=threads),
        "openvino bf16": RuntimeConfig(device="cpu", backend="openvino", dtype="bfloat16", threads=threads)
        if bf16
        else None,
    }
    onnx_dir = tmp / f"onnx-{id(model)}"  # one export for the ONNX-based backends of this model
    for label, cfg in configs.items():
        if cfg is None or (only and label not in only):
            continue
        try:
            out[label] = create_runner(
                copy.deepcopy(model), input_size, cfg, onnx_dir=onnx_dir, calibration=calibration
            )
        except Exception as exc:  # a backend not installed here is left out of the table, and said so
            print(f"skipped {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


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
    """CUDA: the backends of ``name`` at ``batch``, random input."""
    backends = cuda_backends(name, batch)
    return round_robin(backends, name, batch, True, rounds, slice_s)


def round_robin(fns: dict[str, Callable[[], object]], name: str, batch: int, cuda: bool, rounds: int, slice_s: float,
                input_size: tuple[int, int] = INPUT) -> list[Cell]:  # fmt: skip
    for fn in fns.values():  # warm-up: compilation, autotuning, graph capture, allocator
        for _ in range(3):
            fn()
    if cuda:
        torch.cuda.synchronize()
    cells = {b: Cell(name, b, batch, [], input_size) for b in fns}
    for _ in range(rounds):
        for backend, fn in fns.items():
            cells[backend].seconds.append(time_slice(fn, cuda, slice_s))
    return list(cells.values())


def measure_cpu(name: str, model: nn.Module, input_size: tuple[int, int], mean: list[float], std: list[float],
                args: argparse.Namespace, tmp: Path, trained: bool) -> list[Cell]:  # fmt: skip
    """Every CPU backend of ``model`` and MoveNet Thunder, batch by batch, on the calibration crops."""
    threads = args.threads or torch.get_num_threads()
    calibration = calibration_inputs(input_size, mean, std)
    backends = cpu_backends(model, input_size, tmp, calibration, threads, args.compile, args.backends)
    agreement, ap = {}, {}
    if trained:  # random weights make flat heatmaps: their keypoints' agreement says nothing
        reference = backends["torch eager"](calibration)
        codec = HeatmapCodec(input_size=input_size)
        agreement = {label: keypoint_agreement(reference, fn(calibration), codec) for label, fn in backends.items()}
        if args.eval_data:
            ap = {label: heldout_ap(fn, args.eval_data, args.eval_config) for label, fn in backends.items()}
            print(f"AP {name}: {ap}", file=sys.stderr, flush=True)
    thunder = thunder_runner(threads)
    cells = []
    for batch in args.batches or [1, 8]:
        x = calibration.repeat(-(-batch // len(calibration)), 1, 1, 1)[:batch].contiguous()
        fns = {label: (lambda fn=fn, x=x: fn(x)) for label, fn in backends.items()}
        if thunder is not None:
            fns[THUNDER_LABEL] = lambda x=x: thunder(x)
        cells += round_robin(fns, name, batch, False, args.rounds, args.slice, input_size)
        print(f"done {name} batch {batch}", file=sys.stderr, flush=True)
    for c in cells:
        c.agreement, c.ap = agreement.get(c.backend), ap.get(c.backend)
    return cells


class _RunnerModule(nn.Module):
    """A runner where training's ``predict`` expects a module."""

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


def heldout_ap(runner: Callable[[torch.Tensor], torch.Tensor], data_root: Path, config: Path) -> float:
    """COCO keypoint AP of ``runner`` on ``data_root``'s val split, labelled boxes, no flip test (a backend's own
    keypoints, not averaged with the mirror's)."""
    from torch.utils.data import DataLoader

    from training.config import load_config
    from training.data import val_dataset
    from training.evaluation import evaluate
    from training.predict import predict

    cfg = load_config(config, [f"data.root={data_root}", "eval.flip_test=false", "data.workers=0"])
    dataset = val_dataset(cfg)
    loader = DataLoader(dataset, batch_size=8, shuffle=False, num_workers=0)
    pred = predict(_RunnerModule(runner), loader, dataset.codec, None, torch.device("cpu"))
    return evaluate(cfg, dataset, pred)["AP"]


def ort_profile(model: nn.Module, input_size: tuple[int, int], tmp: Path, threads: int, batch: int = 8,
                calls: int = 30) -> str:  # fmt: skip
    """Where ONNX Runtime spends its time: a per-op-type table from its own profiler."""
    import onnxruntime as ort

    from model.onnx import INPUT_NAME, export_onnx

    path = export_onnx(copy.deepcopy(model), tmp / "profile.onnx", input_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / "ort-profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, input_size[1], input_size[0])).astype(np.float32)
    for _ in range(calls):
        session.run(None, {INPUT_NAME: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    rows = ["| op type (after ORT's fusions) | share of kernel time |", "|---|---:|"]
    for op, dur in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
        rows.append(f"| {op} | {dur / total:.1%} |")
    return "\n".join(rows)


def format_cpu_table(cells: list[Cell]) -> str:
    """One row per model and backend: crops/s per batch, and the ratios the issue asks for."""
    batches = sorted({c.batch for c in cells})
    speed = {(c.model, c.backend, c.batch): c.crops_per_s for c in cells}
    last = batches[-1]
    header = "| model | input | backend | " + " | ".join(f"crops/s b{b}" for b in batches)
    header += f" | vs onnxruntime (b{last}) | vs Thunder (b{last}) | agreement (OKS) | AP (held-out, no flip) |"
    lines = [header, "|---|---|---|" + "---:|" * (len(batches) + 4)]
    seen = []
    for c in cells:
        if (c.model, c.backend) in seen:
            continue
        seen.append((c.model, c.backend))
        ort = speed.get((c.model, "onnxruntime", last))
        thunder = speed.get((c.model, THUNDER_LABEL, last))
        mine = speed[(c.model, c.backend, last)]
        size = "256x256" if c.backend == THUNDER_LABEL else f"{c.input_size[0]}x{c.input_size[1]}"
        cols = [c.model, size, c.backend] + [f"{speed[(c.model, c.backend, b)]:.1f}" for b in batches]
        cols += [f"{mine / ort:.2f}x" if ort else "", f"{mine / thunder:.2f}x" if thunder else ""]
        cols += ["" if c.agreement is None else f"{c.agreement:.3f}", "" if c.ap is None else f"{c.ap:.3f}"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def format_table(cells: list[Cell], gmacs: dict[str, float], cuda: bool) -> str:
    base = {(c.model, c.batch): c.crops_per_s for c in cells if c.backend == "fp16 channels_last"}
    lines = ["| model | batch | backend | crops/s | vs first | TFLOP/s |", "|---|---:|---|---:|---:|---:|"]
    for c in cells:
        lines.append(
            f"| {c.model} | {c.batch} | {c.backend} | {c.crops_per_s:.1f} | {c.crops_per_s / base[(c.model, c.batch)]:.2f}x |"
            f" {c.crops_per_s * gmacs[c.model] * 2 / 1e3:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="CPU: a trained bundle, measured first")
    parser.add_argument("--no-bundle", action="store_true")
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per timed slice")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of every backend (default: torch's)")
    parser.add_argument("--backends", nargs="+", help="CPU: only these backends (labels as in the table)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="CPU: leave torch.compile out")
    parser.add_argument("--eval-data", type=Path, help="CPU: a COCO dataset whose val split gives each backend's AP")
    parser.add_argument("--eval-config", type=Path, default=ROOT / "configs" / "hevitpose_t_default.yaml")
    parser.add_argument("--profile", action="store_true", help="CPU: ONNX Runtime's per-op profile of the bundle")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda:
        return main_cuda(args)

    cells: list[Cell] = []
    profile = ""
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_bundle:
            model, meta = load_bundle(args.bundle)
            size = (int(meta.input_size[0]), int(meta.input_size[1]))
            label = f"{args.bundle.name} ({meta.model})"
            cells += measure_cpu(label, model, size, meta.mean, meta.std, args, Path(tmp), trained=True)
            if args.profile:
                profile = ort_profile(model, size, Path(tmp), args.threads or torch.get_num_threads())
        for name in args.models:
            torch.manual_seed(0)
            cells += measure_cpu(name, build_model(name).eval(), INPUT, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                 args, Path(tmp), trained=False)  # fmt: skip
    load = os.getloadavg()[1]
    flags = "AVX-512 BF16 / AMX: yes" if cpu_has_bf16() else "AVX-512 BF16 / AMX: no (bf16 rows left out)"
    body = (
        f"## Model speed (CPU)\n\n"
        f"`bench/model_speed.py`, {date.today().isoformat()}, {machine()}; {flags}; "
        f"{args.threads or torch.get_num_threads()} threads for every backend. Inputs: the service's calibration "
        f"crops (real-looking people). Median of {args.rounds} round-robin slices of {args.slice:g} s; "
        f"MoveNet Thunder runs in the same rounds, one crop per call. 'agreement' is the mean OKS of a backend's "
        f"keypoints against float32 eager on the 48 calibration crops: the service keeps a backend only at >= "
        f"{AGREEMENT_THRESHOLD} (service/runtime_choice.py). AP: COCO keypoint AP on the held-out video "
        f"({args.eval_data}, labelled boxes, no flip test: each backend's own keypoints). "
        f"Load average over the last 5 minutes at the end: {load:.1f}; above the core count, other work shared "
        f"the machine and only the ratios within a model's rows mean much.\n\n{format_cpu_table(cells)}"
    )
    if profile:
        body += f"\n\nWhere ONNX Runtime's time goes for {args.bundle.name} (batch 8, its profiler):\n\n{profile}"
    print(body)
    if not args.no_write:
        write_section(args.out, "model_speed_cpu", body)


def main_cuda(args: argparse.Namespace) -> None:
    batches = args.batches or [1, 8, 32, 128, 512]
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in batches:
                cells += measure(name, batch, True, args.rounds, args.slice, Path(tmp))
                print(f"done {name} batch {batch}", file=sys.stderr, flush=True)
    load = os.getloadavg()[1]
    gmacs = {name: full_macs(build_model(name), (3, INPUT[1], INPUT[0])) / 1e9 for name in args.models}
    body = (
        f"## Model speed (CUDA)\n\n"
        f"`bench/model_speed.py`, {date.today().isoformat()}, {machine()}. Input 256x256, 17 keypoints, "
        f"random weights; median of {args.rounds} round-robin slices of {args.slice:g} s. "
        f"'vs first' is the speed-up over the first backend of the same model and batch. "
        f"Load average over the last 5 minutes at the end: {load:.1f}.\n\n{format_table(cells, gmacs, True)}"
    )
    print(body)
    if not args.no_write:
        write_section(args.out, "model_speed_cuda", body)


if __name__ == "__main__":
    main()
