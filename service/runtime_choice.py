"""Pick the CPU backend and thread count by measuring them on this machine, at start-up.

Which backend is fastest for a bundle depends on the CPU (AVX-512 BF16 or AMX makes bfloat16 pay;
without them it is emulated and slow), the core count, the network size and
the library versions, so the service does not guess: with ``backend=auto`` on a CPU it builds each
candidate, checks that its keypoints agree with float32 on real-looking person crops
(``assets/calibration_crops.jpg``), times the ones that agree round-robin at batch 1 and 8, and keeps
the fastest. The result is cached in a JSON file keyed by everything it depends on, so a restart on
the same machine with the same bundle takes its answer in milliseconds.

Agreement is measured as COCO's OKS between a candidate's keypoints and float32's on each crop
(float32's confident joints only), with the crop's area standing in for the person's. A backend
passes at mean OKS >= ``AGREEMENT_THRESHOLD``; BENCHMARKS.md ("CPU backends") has what each one costs
in keypoint AP on the held-out video, which is how the threshold was set.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from model.codec import HeatmapCodec, normalize
from model.keypoints import COCO17
from model.runtime import (
    PoseRunner,
    RuntimeConfig,
    cpu_has_bf16,
    create_runner,
    onnxruntime_available,
    openvino_available,
    resolve_device,
)

log = logging.getLogger("service.runtime_choice")

CALIBRATION_CROPS = Path(__file__).resolve().parent / "assets" / "calibration_crops.jpg"
CROP_SIZE = (192, 256)  # (width, height) of each crop in the grid: scripts/calibration_crops.py
AGREEMENT_THRESHOLD = 0.97
TIMED_BATCHES = (1, 8)
CACHE_VERSION = 1


@dataclass
class Trial:
    backend: str
    dtype: str
    threads: int
    agreement: float = float("nan")  # mean OKS against float32
    crops_per_s: dict[int, float] = field(default_factory=dict)  # batch -> crops/s
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and self.agreement >= AGREEMENT_THRESHOLD

    @property
    def speed(self) -> float:
        """Geometric mean over the timed batches: a lone request's batch 1 counts as much as a busy batch 8."""
        values = [self.crops_per_s[b] for b in TIMED_BATCHES if b in self.crops_per_s]
        return float(np.exp(np.mean(np.log(values)))) if values else 0.0


@dataclass
class RuntimeChoice:
    backend: str
    dtype: str
    threads: int
    how: str  # "measured", "cached", or "forced" (a setting named the backend)
    seconds: float = 0.0
    agreement_threshold: float = AGREEMENT_THRESHOLD
    trials: list[Trial] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for trial, raw in zip(self.trials, out["trials"]):
            raw["crops_per_s"] = {str(b): round(v, 1) for b, v in trial.crops_per_s.items()}
            raw["speed"] = round(trial.speed, 1)
            raw["passed"] = trial.passed
            raw["agreement"] = None if np.isnan(trial.agreement) else round(trial.agreement, 4)
        return out


def calibration_crops(input_size: tuple[int, int], path: Path = CALIBRATION_CROPS) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB crops at the bundle's input size.

    The grid's crops are 3:4; for another aspect ratio each is padded (black, as a crop past the
    image border is) before resizing, so people keep their proportions.
    """
    grid = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if grid is None:
        raise FileNotFoundError(f"calibration crops {path} not found or unreadable")
    cw, ch = CROP_SIZE
    w, h = input_size
    crops = []
    for y in range(0, grid.shape[0] - ch + 1, ch):
        for x in range(0, grid.shape[1] - cw + 1, cw):
            crop = grid[y : y + ch, x : x + cw, ::-1]
            target_w = max(cw, round(ch * w / h))
            target_h = max(ch, round(cw * h / w))
            px, py = (target_w - cw) // 2, (target_h - ch) // 2
            crop = cv2.copyMakeBorder(crop, py, target_h - ch - py, px, target_w - cw - px, cv2.BORDER_CONSTANT)
            crops.append(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA))
    return np.stack(crops)


def keypoint_agreement(reference: torch.Tensor, heatmaps: torch.Tensor, codec: HeatmapCodec) -> float:
    """Mean OKS of ``heatmaps``' keypoints against ``reference``'s, over float32's confident joints.

    Unconfident joints are left out because where a heatmap has no clear peak, a rounding
    difference moves its argmax anywhere without changing what a client would keep.
    """
    ref_xy, ref_score = codec.decode(reference.float())  # input pixels
    xy, _ = codec.decode(heatmaps.float())
    num_keypoints = reference.shape[1]
    sigmas = np.asarray(COCO17.sigmas if num_keypoints == len(COCO17.sigmas) else [0.05] * num_keypoints)
    h, w = reference.shape[2] * codec.heatmap_stride, reference.shape[3] * codec.heatmap_stride
    area = w * h / codec.bbox_padding**2  # the box the service padded to make the crop
    d2 = (xy - ref_xy).double().numpy() ** 2
    oks = np.exp(-d2.sum(-1) / (2 * area * (2 * sigmas) ** 2))
    confident = ref_score.numpy() > 0.2
    if not confident.any():  # an untrained network: no joint is confident, so every joint counts
        confident[:] = True
    per_crop = [o[m].mean() for o, m in zip(oks, confident) if m.any()]
    return float(np.mean(per_crop))


def cpu_candidates(threads: int, dtype: str) -> list[RuntimeConfig]:
    """The CPU backends installed here, at ``threads``; bfloat16 ones only where the CPU has it."""
    bf16 = cpu_has_bf16() and dtype in ("auto", "bfloat16")
    fp32 = dtype in ("auto", "float32")
    out = []
    # onnxruntime-int8 is not a candidate: its calibration alone takes longer than all the rest of
    # the measurement, and where bf16 is in hardware it is not the fastest anyway (BENCHMARKS.md).
    if onnxruntime_available() and fp32:
        out += [RuntimeConfig(device="cpu", backend="onnxruntime", threads=threads)]
    # OpenVINO only where installed (the optional "cpu" extra); its runners share one Core
    # (model/runtime.py, openvino_core), without which the measurement's frees crashed the process.
    if openvino_available():
        out += [RuntimeConfig(device="cpu", backend="openvino", dtype="float32", threads=threads)] if fp32 else []
        out += [RuntimeConfig(device="cpu", backend="openvino", dtype="bfloat16", threads=threads)] if bf16 else []
    out += [RuntimeConfig(device="cpu", backend="torch", dtype="float32", threads=threads)] if fp32 else []
    out += [RuntimeConfig(device="cpu", backend="torch", dtype="bfloat16", threads=threads)] if bf16 else []
    return out


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _versions() -> dict[str, str]:
    out = {}
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = ""
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(weights_sha256: str, input_size: tuple[int, int], runtime: RuntimeConfig) -> str:
    parts = {
        "v": CACHE_VERSION, "weights": weights_sha256, "input": list(input_size), "cpu": _cpu_name(),
        "cores": available_cores(), "bf16": cpu_has_bf16(), "threads": runtime.threads, "dtype": runtime.dtype,
        "versions": _versions(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(path: Path | None, key: str) -> RuntimeChoice | None:
    if path is None or not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text()).get(key)
        if raw is None:
            return None
        trials = [
            Trial(t["backend"], t["dtype"], t["threads"], t["agreement"] if t["agreement"] is not None else float("nan"),
                  {int(b): v for b, v in t["crops_per_s"].items()}, t["error"])
            for t in raw["trials"]
        ]  # fmt: skip
        return RuntimeChoice(
            raw["backend"], raw["dtype"], raw["threads"], "cached", raw["seconds"], raw["agreement_threshold"], trials
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged cache is re-measured, not fatal
        log.warning("ignoring runtime cache %s: %s", path, exc)
        return None


def _write_cache(path: Path | None, key: str, choice: RuntimeChoice) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):  # none yet, or damaged: start it again
            entries = {}
        entries[key] = choice.as_json()
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:  # a read-only home must not stop the service
        log.warning("could not write runtime cache %s: %s", path, exc)


def _time(runner: PoseRunner, x: torch.Tensor, seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        runner(x)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return len(x) * calls / elapsed


def measure(
    model: nn.Module,
    codec: HeatmapCodec,
    candidates: list[RuntimeConfig],
    inputs: torch.Tensor,
    onnx_dir: str | Path,
    rounds: int = 2,
    slice_s: float = 0.25,
) -> tuple[list[Trial], dict[int, PoseRunner]]:
    """Agreement and crops/s of each candidate; the runners that built, by candidate index."""
    input_size = codec.input_size
    runners: dict[int, PoseRunner] = {}
    trials = [Trial(c.backend, c.dtype if c.dtype != "auto" else "float32", c.threads) for c in candidates]
    # torch runners cast and re-lay the module in place: each candidate gets its own copy
    reference_runner = create_runner(copy.deepcopy(model), input_size, RuntimeConfig(device="cpu", backend="torch"))
    reference = reference_runner(inputs)
    for i, (cfg, trial) in enumerate(zip(candidates, trials)):
        try:
            runner = create_runner(copy.deepcopy(model), input_size, cfg, onnx_dir=onnx_dir, calibration=inputs)
            trial.agreement = keypoint_agreement(reference, runner(inputs), codec)
        except Exception as exc:  # a backend that cannot build here is reported, not fatal
            trial.error = f"{type(exc).__name__}: {exc}"[:300]
            continue
        if trial.passed:
            runners[i] = runner
    batches = {b: inputs[:b].contiguous() for b in TIMED_BATCHES}
    samples: dict[int, dict[int, list[float]]] = {i: {b: [] for b in batches} for i in runners}
    for runner in runners.values():  # warm-up: allocator, OpenVINO's first-shape compilation
        for x in batches.values():
            runner(x)
    for _ in range(rounds):  # round-robin, so load that comes and goes hits every candidate alike
        for i, runner in runners.items():
            for b, x in batches.items():
                samples[i][b].append(_time(runner, x, slice_s))
    for i in runners:
        trials[i].crops_per_s = {b: statistics.median(v) for b, v in samples[i].items()}
    return trials, runners


def select_runner(
    model: nn.Module,
    codec: HeatmapCodec,
    runtime: RuntimeConfig,
    weights_sha256: str,
    mean: list[float],
    std: list[float],
    onnx_dir: str | Path,
    cache_path: Path | None,
) -> tuple[PoseRunner, RuntimeChoice]:
    """The runner for ``runtime``: measured among the CPU candidates when it says ``backend=auto``."""
    input_size = codec.input_size
    if runtime.backend != "auto" or resolve_device(runtime.device).type != "cpu":
        calibration = calibration_inputs(input_size, mean, std) if runtime.backend == "onnxruntime-int8" else None
        runner = create_runner(model, input_size, runtime, onnx_dir=onnx_dir, calibration=calibration)
        dtype = str(runner.dtype).removeprefix("torch.")
        return runner, RuntimeChoice(
            runner.backend, dtype, runtime.threads, "forced" if runtime.backend != "auto" else "default"
        )

    t0 = time.perf_counter()
    key = cache_key(weights_sha256, input_size, runtime)
    cached = _read_cache(cache_path, key)
    if cached is not None:
        try:
            cfg = RuntimeConfig(device="cpu", backend=cached.backend, dtype=cached.dtype, threads=cached.threads)
            calibration = calibration_inputs(input_size, mean, std) if cached.backend == "onnxruntime-int8" else None
            runner = create_runner(model, input_size, cfg, onnx_dir=onnx_dir, calibration=calibration)
            cached.seconds = time.perf_counter() - t0
            return runner, cached
        except Exception as exc:  # the cached backend no longer builds (a library removed): measure again
            log.warning("cached runtime %s/%s failed to build (%s); measuring again", cached.backend, cached.dtype, exc)

    inputs = calibration_inputs(input_size, mean, std)
    torch_threads = torch.get_num_threads()  # the torch candidates set it process-wide
    cores = available_cores()
    threads = runtime.threads or cores
    candidates = cpu_candidates(threads, runtime.dtype)
    trials, runners = measure(model, codec, candidates, inputs, onnx_dir)
    if not runners:
        raise RuntimeError(
            "no CPU backend built and agreed with float32: " + "; ".join(f"{t.backend}: {t.error}" for t in trials)
        )
    best = max(runners, key=lambda i: trials[i].speed)
    if not runtime.threads and threads > 1:  # fewer threads than cores can win where a core is busy with decoding
        half = replace(candidates[best], threads=threads // 2)
        more, more_runners = measure(model, codec, [candidates[best], half], inputs, onnx_dir)
        trials[best] = more[0]  # report the two timings that were compared, side by side
        trials += [more[1]]
        if 1 in more_runners and more[1].speed > more[0].speed:
            runners[len(trials) - 1], best = more_runners[1], len(trials) - 1
    chosen = trials[best]
    torch.set_num_threads(chosen.threads if chosen.backend == "torch" else torch_threads)
    choice = RuntimeChoice(
        chosen.backend, chosen.dtype, chosen.threads, "measured", time.perf_counter() - t0, trials=trials
    )
    _write_cache(cache_path, key, choice)
    return runners[best], choice


def calibration_inputs(input_size: tuple[int, int], mean: list[float], std: list[float]) -> torch.Tensor:
    """The calibration crops normalised for the network: (N, 3, H, W) float32."""
    crops = torch.from_numpy(calibration_crops(input_size)).permute(0, 3, 1, 2).float()
    return normalize(crops, mean, std)
