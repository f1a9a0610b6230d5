"""The pose service under load, end to end, beside the bare model, in one run.

Starts the real server (``hevitpose serve`` in a subprocess), drives it from another process
with N concurrent clients on loopback for a bounded time, and reports requests/s and p50/p95/p99
latency end to end. From the server's own metrics it takes the pose stage's crops/s (crops run
/ seconds spent in model calls) and the batch sizes it formed; then, with the server stopped,
it times the bare model through the same runner at the same batch sizes.

    python bench/service_load.py                                   # hevitpose-b, 16 clients, 30 s
    python bench/service_load.py --model hevitpose-t --concurrency 4 --duration 10 --no-write
    python bench/service_load.py --weights weights/hevitpose-t-default --device cuda

Without --weights a bundle with random weights is built for --model: speed does not depend
on the weights' values, only the (random) keypoint positions do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "service_load"


# ---------------------------------------------------------------------------- client process


def _client_main(
    url: str, image: bytes, boxes: str, concurrency: int, start_at: float, t_measure: float, t_end: float, out
):
    """Load from ``start_at``; record what completes in [t_measure, t_end] (wall-clock times, shared with
    the parent so that its metric scrapes bracket the same window)."""
    import httpx

    async def run():
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        await asyncio.sleep(max(0.0, start_at - time.time()))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

            async def worker():
                while True:
                    t0 = time.time()
                    if t0 >= t_end:
                        return
                    r = await client.post("/v1/predict", files={"image": ("x.jpg", image, "image/jpeg")},
                                          data={"boxes": boxes})  # fmt: skip
                    t1 = time.time()
                    # Throughput counts what completes inside the window, whenever it started.
                    if t_measure <= t1 <= t_end:
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 200:
                            latencies.append(t1 - t0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, statuses

    latencies, statuses = asyncio.run(run())
    out.put({"latencies": latencies, "statuses": statuses})


# ---------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: Path, port: int, args) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "HEVITPOSE_MAX_BATCH_SIZE": str(args.max_batch_size), "HEVITPOSE_MAX_WAIT_MS": str(args.max_wait_ms),
        "HEVITPOSE_QUEUE_SIZE": str(max(64, 4 * args.concurrency)), "HEVITPOSE_LOG_LEVEL": "WARNING",
        "HEVITPOSE_REQUEST_TIMEOUT_S": "60",
    })  # fmt: skip
    cmd = [sys.executable, "-m", "hevitpose_cli", "serve", "--weights", str(weights), "--port", str(port),
           "--device", args.device]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def scrape(url: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name in ("hevitpose_batch_size_sum", "hevitpose_batch_size_count", "hevitpose_queue_wait_seconds_sum",
                          "hevitpose_queue_wait_seconds_count"):  # fmt: skip
                values[s.name] = s.value
            elif s.name == "hevitpose_stage_duration_seconds_sum":
                values["stage_" + s.labels["stage"]] = s.value
            elif s.name == "hevitpose_stage_duration_seconds_count":
                values["count_" + s.labels["stage"]] = s.value
    return values


# ---------------------------------------------------------------------------- bare model


def _median_rate(run, batch: int, seconds: float, sync=lambda: None) -> float:
    """Median crops/s of ~1 s slices: a neighbour's burst on a shared machine hits one slice, not the result."""
    for _ in range(3):
        run()
    sync()
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            run()
            n += 1
        sync()
        rates.append(n * batch / (time.perf_counter() - t0))
    return float(np.median(rates))


def bare_crops_per_s(weights: Path, device: str, batch: int, seconds: float, runtime: dict) -> tuple[float, str]:
    """The bundle alone, through the backend, dtype and threads the server chose (``/v1/models``)."""
    import torch

    from model.bundle import load_bundle
    from model.runtime import RuntimeConfig, create_runner

    model, meta = load_bundle(weights)
    w, h = meta.input_size
    cfg = RuntimeConfig(device=device, backend=runtime["backend"], dtype=runtime["dtype"], threads=runtime["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        runner = create_runner(model, (w, h), cfg, onnx_dir=tmp)
        x = torch.randn(batch, 3, h, w)
        sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
        label = f"{runner.backend} {str(runner.dtype).removeprefix('torch.')}"
        return _median_rate(lambda: runner(x), batch, seconds, sync), label


def thunder_crops_per_s(path: Path, threads: int, seconds: float) -> float:
    """Bare MoveNet Thunder (ONNX Runtime, one 256x256 crop per call): the CPU yardstick of issue 13."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    crop = np.zeros((1, 256, 256, 3), np.int32)
    return _median_rate(lambda: session.run(None, {"input:0": crop}), 1, seconds)


# ---------------------------------------------------------------------------- report


def make_request(width: int, height: int, num_boxes: int) -> tuple[bytes, str]:
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC))
    boxes = []
    for i in range(num_boxes):  # people side by side, each a third of the width and most of the height
        x1 = (i % 3) * width / 3
        boxes.append([round(x1 + 5, 1), round(0.1 * height, 1), round(x1 + width / 3 - 5, 1), round(0.95 * height, 1)])
    return buf.tobytes(), json.dumps(boxes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hevitpose-b")
    p.add_argument("--weights", type=Path, help="a serving bundle; default: random weights for --model")
    p.add_argument("--input-size", type=int, nargs=2, default=(192, 256), metavar=("W", "H"))
    p.add_argument("--device", default="auto")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    p.add_argument("--boxes", type=int, default=2, help="client boxes per image")
    p.add_argument("--image-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--bare-seconds", type=float, default=10.0)
    p.add_argument(
        "--thunder",
        type=Path,
        default=ROOT.parent / "shared" / "models" / "movenet-thunder.onnx",
        help="MoveNet Thunder ONNX, timed bare after the server stops (skipped if absent)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="service-load-")
    weights, random_weights = args.weights, args.weights is None
    if weights is None:
        import torch

        from model import build_model
        from model.bundle import BundleMeta, save_bundle
        from model.keypoints import COCO17

        torch.manual_seed(0)
        weights = Path(tmp.name) / args.model
        meta = BundleMeta.for_model(args.model, COCO17, input_size=list(args.input_size), version="random")
        save_bundle(build_model(args.model), meta, weights)

    load_before = os.getloadavg()[0]
    image, boxes = make_request(*args.image_size, args.boxes)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(weights, port, args)
    try:
        wait_ready(url, proc)
        import httpx

        info = httpx.get(url + "/v1/models").json()["models"][0]
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        start_at = time.time() + 5.0  # room for the client process to start and import httpx
        t_measure = start_at + args.warmup
        t_end = t_measure + args.duration
        client = ctx.Process(target=_client_main,
                             args=(url, image, boxes, args.concurrency, start_at, t_measure, t_end, out))  # fmt: skip
        client.start()
        time.sleep(max(0.0, t_measure - time.time()))
        before = scrape(url)
        time.sleep(max(0.0, t_end - time.time()))
        after = scrape(url)
        result = out.get(timeout=120)
        client.join(30)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    lat = np.array(result["latencies"]) * 1e3
    ok = len(lat)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    crops = delta["hevitpose_batch_size_sum"]
    batches = max(delta["hevitpose_batch_size_count"], 1)
    mean_batch = crops / batches
    pose_s = max(delta["stage_pose"], 1e-9)
    stage_crops_per_s = crops / pose_s
    e2e_crops_per_s = ok * args.boxes / args.duration
    queue_ms = delta["hevitpose_queue_wait_seconds_sum"] / max(delta["hevitpose_queue_wait_seconds_count"], 1) * 1e3
    busy = pose_s / args.duration

    bare_batches = sorted({args.max_batch_size, max(1, round(mean_batch))})
    runtime = info["runtime"]
    bare = {b: bare_crops_per_s(weights, args.device, b, args.bare_seconds, runtime) for b in bare_batches}
    ref_batch = max(1, round(mean_batch))
    ref = bare[ref_batch][0]
    thunder = (
        thunder_crops_per_s(args.thunder, runtime["threads"], args.bare_seconds) if args.thunder.is_file() else None
    )

    rows = [
        "| measure | value |",
        "|---|---:|",
        f"| requests/s (200 OK) | {ok / args.duration:.1f} |",
        f"| latency p50 / p95 / p99 (ms) | {np.percentile(lat, 50):.0f} / {np.percentile(lat, 95):.0f} / "
        f"{np.percentile(lat, 99):.0f} |",
        f"| non-200 responses | {sum(v for k, v in result['statuses'].items() if int(k) != 200)} |",
        f"| mean batch formed (crops) | {mean_batch:.1f} |",
        f"| mean queue wait (ms) | {queue_ms:.1f} |",
        f"| pose worker busy (share of wall time in model calls) | {busy:.0%} |",
        f"| service, end to end: crops/s | {e2e_crops_per_s:.1f} |",
        f"| service, pose stage: crops/s | {stage_crops_per_s:.1f} |",
    ]
    for b, (cps, backend) in bare.items():
        rows.append(f"| bare model, batch {b} ({backend}): crops/s | {cps:.1f} |")
    rows += [
        f"| **pose stage / bare model at batch {ref_batch}** | **{stage_crops_per_s / ref:.2f}** |",
        f"| **end to end / bare model at batch {ref_batch}** | **{e2e_crops_per_s / ref:.2f}** |",
    ]
    if thunder is not None:
        rows += [
            f"| bare MoveNet Thunder (onnxruntime, 256x256, one crop per call): crops/s | {thunder:.1f} |",
            f"| **service end to end / bare MoveNet Thunder** | **{e2e_crops_per_s / thunder:.2f}** |",
        ]
    table = "\n".join(rows)
    load_after = os.getloadavg()[0]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    from report import machine, write_section  # bench/ is on sys.path; torch stays out of the clients

    body = (
        f"## Service under load\n\n"
        f"`bench/service_load.py`, {now}, {machine()}. Model {info['name']} "
        f"({'random weights' if random_weights else 'weights ' + str(args.weights)}), crops "
        f"{info['input_size'][0]}x{info['input_size'][1]}, device {info['device']}, backend {info['backend']} {info['dtype']} "
        f"({info['runtime']['how']}, {info['runtime']['threads']} threads). "
        f"{args.concurrency} concurrent clients on loopback (one client process, the same machine), "
        f"{args.boxes} client boxes per {args.image_size[0]}x{args.image_size[1]} JPEG, "
        f"{args.duration:g} s measured after {args.warmup:g} s of warm-up; max batch {args.max_batch_size}, "
        f"max wait {args.max_wait_ms:g} ms. Pose stage crops/s = crops run / seconds in model calls, from the "
        f"server's metrics; end-to-end crops/s = boxes of the requests answered inside the window / its "
        f"length. The bare model runs through the same runner after the server stopped, at the mean batch the service formed (median of 1 s "
        f"slices). 1-min load average before the run {load_before:.1f}, at its end {load_after:.1f} (this run "
        f"included; other work on the machine shares its cores).\n\n{table}"
    )
    print(body)
    if not args.no_write:
        write_section(args.out, KEY, body)
    tmp.cleanup()


if __name__ == "__main__":
    main()
