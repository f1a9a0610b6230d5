"""POST /v1/predict/video end to end: real videos written with OpenCV, a real server.

The person detector is replaced by one that finds the drawn figures by colour (so the true
boxes are known and the detector's calls can be counted); everything else is the real path:
upload, temporary file, FFmpeg decoding, the shared pose worker, tracking, smoothing.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from _service_util import assert_problem, service_settings
from prometheus_client.parser import text_string_to_metric_families

W, H = 160, 120
COLORS = {"A": (255, 0, 0), "B": (0, 0, 255)}  # RGB


def figure_positions(f: int, n: int) -> dict[str, tuple[float, float]]:
    """A walks right, B walks left; they cross in the middle (B slightly lower, A in front)."""
    t = f / max(n - 1, 1)
    return {"A": (25 + 110 * t, 60.0), "B": (135 - 110 * t, 66.0)}


def draw_frame(f: int, n: int) -> np.ndarray:
    img = np.full((H, W, 3), 235, np.uint8)
    pos = figure_positions(f, n)
    for name in ("B", "A"):  # A drawn last: in front
        cx, cy = pos[name]
        cv2.rectangle(img, (int(cx - 8), int(cy - 25)), (int(cx + 8), int(cy + 25)), COLORS[name], -1)
    return img


def write_video(path: Path, n: int, fps: float = 10.0, size=(W, H), frame_fn=None) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for f in range(n):
        img = frame_fn(f, n) if frame_fn else cv2.resize(draw_frame(f, n), size)
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class ColourDetector:
    """Boxes of the red and the blue figure (the order shuffled per call); counts its calls."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, image: np.ndarray, max_persons: int = 100):
        with self.lock:
            self.calls += 1
            call = self.calls
        if self.delay_s:
            time.sleep(self.delay_s)
        img = image.astype(np.int16)
        boxes = []
        for rgb in COLORS.values():
            c = int(np.argmax(rgb))
            mask = (img[..., c] > 150) & (img[..., (c + 1) % 3] < 100) & (img[..., (c + 2) % 3] < 100)
            ys, xs = np.nonzero(mask)
            if len(xs) > 20:
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        if call % 2:
            boxes = boxes[::-1]
        return np.array(boxes, np.float64).reshape(-1, 4), np.full(len(boxes), 0.9)


@pytest.fixture(scope="module")
def settings(bundle):
    return service_settings(bundle, queue_size=64, video_max_bytes=3_000_000, video_max_frames=80,
                            video_max_seconds=20, video_max_pixels=320 * 240, smooth_keypoint_threshold=0.0)  # fmt: skip


@pytest.fixture()
def detector(server):
    det = ColourDetector()
    server.app.state.service.detector = det
    return det


def post_video(client, data: bytes, filename="v.avi", headers=None, **fields):
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/v1/predict/video", files={"video": (filename, data, "video/x-msvideo")}, data=form,
                       headers=headers or {})  # fmt: skip


def metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def center(person) -> tuple[float, float]:
    x1, y1, x2, y2 = person["bbox"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def test_two_people_crossing_keep_their_ids(client, detector, tmp_path):
    n = 30
    data = write_video(tmp_path / "cross.avi", n).read_bytes()
    r = post_video(client, data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["width"] == W and body["height"] == H and body["fps"] == pytest.approx(10)
    assert [f["index"] for f in body["frames"]] == list(range(n))
    assert body["frames"][3]["time_s"] == pytest.approx(0.3)
    ids = {"A": set(), "B": set()}
    for frame in body["frames"]:
        truth = figure_positions(frame["index"], n)
        for person in frame["persons"]:
            assert len(person["keypoints"]) == 17 and {"bbox", "bbox_score", "score"} <= set(person)
            cx, cy = center(person)
            name = min(truth, key=lambda k: abs(truth[k][0] - cx))
            if abs(truth["A"][0] - truth["B"][0]) > 20:  # apart: the nearest figure is unambiguous
                ids[name].add(person["track_id"])
    assert len(ids["A"]) == 1 and len(ids["B"]) == 1 and ids["A"] != ids["B"], ids
    assert detector.calls == n


def figure_keypoints(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """17 points on the extent of the colour figure with the most pixels inside ``box``."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    part = image[max(0, y1) : y2, max(0, x1) : x2].astype(np.int16)
    best = None
    for rgb in COLORS.values():
        c = int(np.argmax(rgb))
        mask = (part[..., c] > 150) & (part[..., (c + 1) % 3] < 100) & (part[..., (c + 2) % 3] < 100)
        if best is None or mask.sum() > best.sum():
            best = mask
    ys, xs = np.nonzero(best)
    if len(xs) == 0:
        return np.tile([(x1 + x2) / 2, (y1 + y2) / 2], (17, 1))
    gx = np.linspace(xs.min(), xs.max() + 1, 17) + max(0, x1)
    gy = np.linspace(ys.min(), ys.max() + 1, 17) + max(0, y1)
    return np.stack([gx, gy], axis=1)


@pytest.fixture()
def perfect_pose(server):
    """The pose worker still runs the random model, then puts the keypoints on the figure: a
    pose model that is always right, so tracking between detector frames can be checked."""
    model = server.app.state.service.model
    real = model.run_jobs

    def run_jobs(jobs, *args, **kwargs):
        results = real(jobs, *args, **kwargs)
        for job, res in zip(jobs, results):
            res.keypoints = np.stack([figure_keypoints(job.image, b) for b in job.bboxes])
            res.scores = np.full(res.scores.shape, 0.9)
        return results

    model.run_jobs = run_jobs
    yield
    del model.run_jobs


def test_detect_every_5_calls_the_detector_one_frame_in_five(client, detector, perfect_pose, tmp_path):
    data = write_video(tmp_path / "v.avi", 20).read_bytes()
    r = post_video(client, data, detect_every=5)
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    assert len(frames) == 20
    assert detector.calls == 4
    # between detector frames the people keep their ids (their boxes come from their keypoints)
    assert all(len(f["persons"]) == 2 for f in frames)
    assert {p["track_id"] for f in frames for p in f["persons"]} == {p["track_id"] for p in frames[0]["persons"]}


def test_every_n_frames_and_max_frames(client, detector, tmp_path):
    data = write_video(tmp_path / "v.avi", 20).read_bytes()
    r = post_video(client, data, every_n_frames=3, max_frames=4)
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    assert [f["index"] for f in frames] == [0, 3, 6, 9]
    assert [f["time_s"] for f in frames] == pytest.approx([0, 0.3, 0.6, 0.9])


def test_smoothing_reduces_jitter(client, server, tmp_path):
    """A static figure whose drawn box jitters by a few pixels: the keypoints with smooth=true
    move much less from frame to frame than without."""
    rng = np.random.default_rng(0)
    offsets = rng.integers(-3, 4, (40, 2))

    class Jitter:
        calls = 0

        def __call__(self, image, max_persons=100):
            self.calls += 1
            dx, dy = offsets[(self.calls - 1) % 40]
            return np.array([[50.0 + dx, 20.0 + dy, 110.0 + dx, 110.0 + dy]]), np.array([0.9])

    still = np.full((H, W, 3), 120, np.uint8)
    cv2.circle(still, (80, 60), 30, (200, 50, 50), -1)
    data = write_video(tmp_path / "still.avi", 40, frame_fn=lambda f, n: still).read_bytes()

    def jitter(smooth: bool) -> float:
        server.app.state.service.detector = Jitter()
        frames = post_video(client, data, smooth=smooth).json()["frames"]
        pts = np.array([[[k["x"], k["y"]] for k in f["persons"][0]["keypoints"]] for f in frames])
        return float(np.abs(np.diff(pts[10:], axis=0)).mean())

    raw, smooth = jitter(False), jitter(True)
    assert raw > 0.3
    assert smooth < raw / 2, (raw, smooth)


def test_ndjson_streams_before_the_video_ends(client, server, tmp_path):
    det = ColourDetector(delay_s=0.08)
    server.app.state.service.detector = det
    n = 40
    data = write_video(tmp_path / "v.avi", n).read_bytes()
    t0 = time.perf_counter()
    lines = []
    first_at = None
    with client.stream("POST", "/v1/predict/video", files={"video": ("v.avi", data)},
                       headers={"Accept": "application/x-ndjson"}) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["x-video-width"] == str(W)
        for line in r.iter_lines():
            if not line:
                continue
            if first_at is None:
                first_at = time.perf_counter() - t0
                calls_at_first = det.calls
            lines.append(json.loads(line))
    total = time.perf_counter() - t0
    assert [f["index"] for f in lines] == list(range(n))
    assert all("track_id" in p for f in lines for p in f["persons"])
    assert calls_at_first < n / 2 and first_at < total / 2, (first_at, total, calls_at_first)


def test_client_that_leaves_frees_its_work(client, server, tmp_path):
    det = ColourDetector(delay_s=0.05)
    server.app.state.service.detector = det
    data = write_video(tmp_path / "v.avi", 60).read_bytes()
    before = metric(client, "hevitpose_frames_total", source="video")
    with httpx.Client(base_url=server.url, timeout=60) as other:
        with other.stream("POST", "/v1/predict/video", files={"video": ("v.avi", data)},
                          headers={"Accept": "application/x-ndjson"}) as r:  # fmt: skip
            next(r.iter_lines())
    deadline = time.monotonic() + 10
    while metric(client, "hevitpose_active_streams", source="video") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(client, "hevitpose_active_streams", source="video") == 0
    time.sleep(0.5)
    done = metric(client, "hevitpose_frames_total", source="video") - before
    assert done < 30, done
    calls = det.calls
    time.sleep(0.5)
    assert det.calls == calls  # nothing goes on decoding or detecting for it
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "hevitpose-video-*"))


def test_metrics_count_frames_and_tracks(client, detector, tmp_path):
    data = write_video(tmp_path / "v.avi", 30).read_bytes()
    frames0 = metric(client, "hevitpose_frames_total", source="video")
    tracks0 = metric(client, "hevitpose_tracks_started_total", source="video")
    assert post_video(client, data).status_code == 200
    assert metric(client, "hevitpose_frames_total", source="video") - frames0 == 30
    assert metric(client, "hevitpose_tracks_started_total", source="video") - tracks0 == 2
    assert metric(client, "hevitpose_frame_duration_seconds_count", source="video") >= 10


# ---------------------------------------------------------------------------- limits and bad input


def test_limits_each_say_which(client, detector, tmp_path):
    long = write_video(tmp_path / "long.avi", 90).read_bytes()
    body = assert_problem(post_video(client, long), 413, "too_large")
    assert "HEVITPOSE_VIDEO_MAX_FRAMES" in body["detail"]
    assert post_video(client, long, max_frames=20).status_code == 200  # the part read is within limits
    assert post_video(client, long, every_n_frames=2).status_code == 200

    slow = write_video(tmp_path / "slow.avi", 30, fps=1).read_bytes()  # 30 s
    assert "HEVITPOSE_VIDEO_MAX_SECONDS" in assert_problem(post_video(client, slow), 413, "too_large")["detail"]

    big = write_video(tmp_path / "big.avi", 3, size=(400, 300)).read_bytes()
    assert "HEVITPOSE_VIDEO_MAX_PIXELS" in assert_problem(post_video(client, big), 413, "too_large")["detail"]

    huge = os.urandom(3_100_000)
    assert_problem(post_video(client, huge), 413, "too_large")


def test_bad_videos_are_clear_4xx(client, detector, tmp_path):
    good = write_video(tmp_path / "v.avi", 30).read_bytes()
    cases = {
        "random bytes": os.urandom(20_000),
        "an image": cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes(),
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "header only": good[:300],
        "unknown codec": good.replace(b"MJPG", b"QQQQ"),
    }
    empty_writer = cv2.VideoWriter(str(tmp_path / "none.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    empty_writer.release()
    cases["no frames"] = (tmp_path / "none.avi").read_bytes()
    for name, data in cases.items():
        r = post_video(client, data)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), name
        assert r.json()["type"].split(":")[-1] in ("invalid_video", "unsupported_media_type", "invalid_field"), name
    # the worker goes on serving
    assert post_video(client, good, max_frames=2).status_code == 200


def test_bad_fields(client, detector, tmp_path):
    data = write_video(tmp_path / "v.avi", 3).read_bytes()
    for fields in ({"every_n_frames": 0}, {"detect_every": 0}, {"max_frames": 0}, {"detector": "boxes"},
                   {"min_score": 2}, {"smooth": "maybe"}):  # fmt: skip
        assert_problem(post_video(client, data, **fields), 422, "invalid_field")
    r = client.post("/v1/predict/video", files={"image": ("v.avi", data)})
    assert_problem(r, 422, "invalid_field")
