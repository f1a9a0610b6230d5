"""Frames/s through the service's video routes, in process, side by side in one run.

    nice -n 10 .venv/bin/python bench/video_speed.py                 # prints, writes BENCHMARKS.md
    nice -n 10 .venv/bin/python bench/video_speed.py --no-write --frames 20 --rounds 1

Configurations: ``POST /v1/predict/video`` with ``detect_every`` 1 and 5, smoothing off and on, and
with the detector on the first frame only (``detect_every`` 10000: every other frame's boxes come from
the tracks, the most any ``detect_every`` can gain), and ``POST /v1/render/video`` (the drawn MP4)
with ``detect_every`` 1 and 5. Each request goes through the
real app (middleware, multipart upload, temporary file, FFmpeg decoding, detector thread pool, the
shared pose worker, tracking, JSON or the MP4 writer) over httpx's in-process ASGI transport, so no
socket or client process shares the CPU. Frames/s = processed frames / wall time of the request.

The configurations are interleaved: each round runs every one of them once over the whole video,
starting from a different one each round, so a load that comes and goes (on a shared machine) hits
them alike. Each ratio is taken within a round (against that round's ``detect_every=1``, smoothing
off) and the median over the rounds is reported, with their range.

The video is built here, nothing is downloaded: scikit-image's astronaut photograph (public domain)
twice, one of them mirrored, walking towards each other across one of the repository's background
photographs (training/synth/assets/backgrounds), written as an MP4 (mp4v) by OpenCV.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import machine, write_section  # noqa: E402

BACKGROUND = ROOT / "training" / "synth" / "assets" / "backgrounds" / "living_room.jpg"
KEY = "video_speed"
TRACK_ONLY = 10_000  # detect_every beyond the video's length: the detector runs on the first frame only


@dataclass(frozen=True)
class Config:
    route: str  # "predict" or "render"
    detect_every: int
    smooth: bool

    @property
    def label(self) -> tuple[str, str, str]:
        every = "first frame only" if self.detect_every == TRACK_ONLY else str(self.detect_every)
        return f"/v1/{self.route}/video", every, "on" if self.smooth else "off"


CONFIGS = [Config("predict", 1, False), Config("predict", 1, True), Config("predict", 5, False),
           Config("predict", 5, True), Config("predict", TRACK_ONLY, False), Config("render", 1, False),
           Config("render", 5, False)]  # fmt: skip
BASELINE = CONFIGS[0]


@dataclass
class Result:
    fps: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)  # fps / the baseline's fps in the same round
    detector_per_frame: list[float] = field(default_factory=list)
    persons_per_frame: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------- the video


def build_video(path: Path, frames: int, size: tuple[int, int], fps: float) -> Path:
    """Two people (the astronaut photo and its mirror image) crossing a living room."""
    from skimage import data

    w, h = size
    room = cv2.resize(cv2.imread(str(BACKGROUND)), (w, h), interpolation=cv2.INTER_AREA)
    side = int(0.8 * h)
    person = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (side, side), interpolation=cv2.INTER_AREA)
    mirrored = person[:, ::-1]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise SystemExit("OpenCV's FFmpeg cannot write mp4v here")
    y = h - side
    span = w - side
    for f in range(frames):
        t = f / max(frames - 1, 1)
        frame = room.copy()
        for photo, x in ((mirrored, round(span * (1 - t))), (person, round(span * t))):
            frame[y:, x : x + side] = photo
        writer.write(frame)
    writer.release()
    return path


# ---------------------------------------------------------------------------- the service


class CountingDetector:
    """The service's detector, counting its calls (to check detect_every's share of detector frames)."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, image, max_persons: int = 100):
        with self.lock:
            self.calls += 1
        return self.real(image, max_persons)


def start_service(args):
    from service.app import create_app
    from service.pose_service import PoseService
    from service.settings import Settings

    settings = Settings(device=args.device, log_level="WARNING", request_timeout_s=60)
    service = PoseService(settings)
    app = create_app(settings, service)
    service.start()  # httpx's ASGI transport runs no lifespan: start the service here
    if not service.wait_ready(600):
        raise SystemExit(f"the service did not load: {service.load_error}")
    service.detector = CountingDetector(service.detector)
    return app, service


async def run_once(client, service, video: bytes, config: Config, frames: int) -> tuple[float, float, float]:
    """(frames/s, detector calls per frame, persons per frame) of one request over the whole video."""
    detector = service.detector
    calls0 = detector.calls
    fields = {"detect_every": str(config.detect_every), "smooth": str(config.smooth).lower()}
    t0 = time.perf_counter()
    r = await client.post(f"/v1/{config.route}/video", files={"video": ("walk.mp4", video, "video/mp4")}, data=fields)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"{config}: {r.status_code} {r.text[:500]}")
    if config.route == "predict":
        answer = r.json()["frames"]
        done, persons = len(answer), sum(len(f["persons"]) for f in answer) / len(answer)
    else:
        done, persons = int(r.headers["x-video-frames"]), float("nan")
    if done != frames:
        raise SystemExit(f"{config}: {done} frames answered, the video has {frames}")
    return done / elapsed, (detector.calls - calls0) / done, persons


async def measure(app, service, video: bytes, frames: int, rounds: int) -> dict[Config, Result]:
    import httpx

    results = {c: Result() for c in CONFIGS}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=3600) as client:
        for config in CONFIGS:  # warm-up: first-call costs (FFmpeg, the MP4 codec probe, allocations)
            await run_once(client, service, video, config, frames)
        for r in range(rounds):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            this_round = {}
            for config in order:
                this_round[config] = await run_once(client, service, video, config, frames)
                print(f"round {r + 1}/{rounds} {config.label}: {this_round[config][0]:.2f} frames/s",
                      file=sys.stderr, flush=True)  # fmt: skip
            for config, (fps, det, persons) in this_round.items():
                res = results[config]
                res.fps.append(fps)
                res.ratio.append(fps / this_round[BASELINE][0])
                res.detector_per_frame.append(det)
                res.persons_per_frame.append(persons)
    return results


# ---------------------------------------------------------------------------- the report


def format_table(results: dict[Config, Result]) -> str:
    rows = [
        "| route | detect_every | smooth | frames/s (median) | vs detect_every=1, smooth off (median, range) "
        "| detector calls / frame | persons / frame |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for config in CONFIGS:
        res = results[config]
        route, every, smooth = config.label
        ratio = statistics.median(res.ratio)
        spread = f"{min(res.ratio):.2f}-{max(res.ratio):.2f}"
        persons = statistics.median(res.persons_per_frame)
        rows.append(
            f"| {route} | {every} | {smooth} | {statistics.median(res.fps):.2f} | **{ratio:.2f}x** ({spread}) "
            f"| {statistics.median(res.detector_per_frame):.2f} | {'-' if np.isnan(persons) else f'{persons:.2f}'} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 360], metavar=("W", "H"))
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu", help="the service's HEVITPOSE_DEVICE (cpu, cuda, auto)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        video = build_video(Path(tmp) / "walk.mp4", args.frames, tuple(args.size), args.fps).read_bytes()
    app, service = start_service(args)
    try:
        results = asyncio.run(measure(app, service, video, args.frames, args.rounds))
        model = service.model_info()
        s = service.settings
    finally:
        service.stop()
    load_after = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    shared = (
        f"**The machine was shared**: its 1-minute load average was {load_before:.1f} before this run "
        f"started and {load_after:.1f} at its end (this run included), on {cpus} CPU threads: other work (a "
        "training job) ran beside it, so the frames/s are not this CPU's; read the ratios, measured side by "
        "side in the same rounds."
        if load_before >= 0.5 else
        f"1-minute load average before the run {load_before:.1f}, at its end {load_after:.1f}."
    )  # fmt: skip
    body = (
        "## Video frames/s (detect_every, smoothing, rendering)\n\n"
        f"`bench/video_speed.py`, {datetime.date.today().isoformat()}, {machine()}. "
        f"Model {model['name']} ({model['input_size'][0]}x{model['input_size'][1]}, the default weights), "
        f"device {model['device']}, backend {model['backend']}; NanoDet-m; {s.cpu_workers} CPU workers, "
        f"pipeline depth {s.video_pipeline_depth}. The video: {args.frames} frames of {args.size[0]}x{args.size[1]} "
        f"at {args.fps:g} fps (MP4, mp4v), two people (scikit-image's astronaut photo and its mirror image) "
        "crossing a background photo, built by the script. Each request goes through the whole app in "
        "process (httpx ASGI transport: upload, FFmpeg decoding, detector, pose worker, tracking, the JSON "
        "or the drawn MP4); frames/s = frames / the request's wall time. "
        f"{args.rounds} rounds, the configurations interleaved (each round runs all of them, starting from "
        "a different one); a ratio is against the same round's detect_every=1, smoothing off; median and "
        f"range over the rounds.\n\n{shared}\n\n{format_table(results)}"
    )
    print(body)
    if not args.no_write:
        write_section(args.out, KEY, body)


if __name__ == "__main__":
    main()
