"""Real container formats through POST /v1/predict/video and POST /v1/render/video, on a real server.

The videos are written with OpenCV's FFmpeg in the test: scikit-image's astronaut photograph (public
domain) sliding over its rocket photograph, in MP4 (mp4v, and H.264 where the writer has an encoder),
AVI/MJPG and WebM (VP8, VP9). The real NanoDet finds her, so the answers can be checked against where
she was put; the pose model is a tiny random one (its keypoints mean nothing, only their count).
"""

from __future__ import annotations

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

from service.video import MP4_CODECS, Mp4Writer

skimage_data = pytest.importorskip("skimage.data")

W, H, FPS, N = 320, 240, 15.0, 12
SIDE = 180  # the astronaut photo's size in the frame; NanoDet's box on it spans about x+4 .. x+129
FORMATS = [(".mp4", "mp4v"), (".mp4", "avc1"), (".avi", "MJPG"), (".webm", "VP80"), (".webm", "VP90")]
MAX_BODY = 60_000  # the image routes' limit; the video routes have HEVITPOSE_VIDEO_MAX_BYTES


def astronaut_x(f: int) -> int:
    return 20 + 10 * f


def astronaut_frame(f: int, size=(W, H)) -> np.ndarray:
    """RGB frame ``f``: the astronaut photo moving right by 10 px a frame over the rocket photo
    (at W x H; other sizes scale the picture)."""
    w, h = size
    frame = cv2.resize(skimage_data.rocket(), (w, h), interpolation=cv2.INTER_AREA)
    side = SIDE * h // H
    photo = cv2.resize(skimage_data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    x, y = min(astronaut_x(f) * w // W, w - 1), h - side - 10 * h // H
    frame[y : y + side, x : x + side] = photo[:, : w - x]
    return frame


def write_video(path: Path, codec: str, n: int = N, fps: float = FPS, size=(W, H)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), fps, size)
    if not writer.isOpened():
        pytest.skip(f"OpenCV's FFmpeg writer has no {codec} encoder for {path.suffix} here")
    for f in range(n):
        writer.write(cv2.cvtColor(astronaut_frame(f, size), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video(path: Path) -> tuple[float, list[np.ndarray]]:
    """(fps, RGB frames) as OpenCV's FFmpeg decodes them."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return fps, frames


class SlowDetector:
    """The real detector, slowed down, counting its calls."""

    def __init__(self, real, delay_s: float) -> None:
        self.real, self.delay_s, self.calls = real, delay_s, 0
        self.lock = threading.Lock()

    def __call__(self, image, max_persons: int = 100):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return self.real(image, max_persons)


@pytest.fixture(scope="module")
def settings(bundle):
    return service_settings(bundle, queue_size=64, max_body_bytes=MAX_BODY, video_max_bytes=3_000_000,
                            video_max_frames=60, video_max_seconds=20, video_max_pixels=400 * 300)  # fmt: skip


@pytest.fixture()
def temp_dir(tmp_path, monkeypatch) -> Path:
    """The server's temporary files (it runs in this process) go to a folder of this test only."""
    folder = tmp_path / "server-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def post(client, route: str, data: bytes, filename: str = "v.mp4", **fields) -> httpx.Response:
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post(route, files={"video": (filename, data, "application/octet-stream")}, data=form)


def metric(client, name: str, **labels) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_until_empty(folder: Path, timeout_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := os.listdir(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ---------------------------------------------------------------------------- real containers


@pytest.mark.parametrize(("suffix", "codec"), FORMATS, ids=[f"{s[1:]}-{c}" for s, c in FORMATS])
def test_real_containers_predicted_and_rendered(client, tmp_path, temp_dir, suffix, codec):
    data = write_video(tmp_path / f"in{suffix}", codec).read_bytes()

    r = post(client, "/v1/predict/video", data, filename=f"walk{suffix}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (W, H) and body["fps"] == pytest.approx(FPS)
    assert [f["index"] for f in body["frames"]] == list(range(N))
    assert body["frames"][3]["time_s"] == pytest.approx(3 / FPS, abs=1e-3)
    found = {f["index"]: f["persons"] for f in body["frames"] if f["persons"]}
    assert len(found) >= N - 2, body["frames"]
    for index, persons in found.items():  # she is where she was put, with one id all along
        x1, _, x2, _ = persons[0]["bbox"]
        assert abs((x1 + x2) / 2 - (astronaut_x(index) + 66)) < 25, (index, persons[0]["bbox"])
    assert len({p[0]["track_id"] for p in found.values()}) == 1

    r = post(client, "/v1/render/video", data, filename=f"walk{suffix}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    used = r.headers["x-video-codec"]
    assert used in MP4_CODECS and used.encode() in r.content  # the MP4's sample entry names the codec
    assert r.headers["x-video-frames"] == str(N) and float(r.headers["x-video-fps"]) == pytest.approx(FPS)
    assert (r.headers["x-video-width"], r.headers["x-video-height"]) == (str(W), str(H))
    assert 'filename="walk-poses.mp4"' in r.headers["content-disposition"]
    out = tmp_path / "out.mp4"
    out.write_bytes(r.content)
    fps, rendered = read_video(out)
    assert fps == pytest.approx(FPS) and len(rendered) == N
    assert all(frame.shape == (H, W, 3) for frame in rendered)
    assert_drawn_where_predicted(rendered, read_video(tmp_path / f"in{suffix}")[1], found)
    assert wait_until_empty(temp_dir) == []  # the upload's and the answer's temporary files


def assert_drawn_where_predicted(rendered: list[np.ndarray], source: list[np.ndarray], found: dict) -> None:
    """The box's top edge is drawn where /v1/predict/video put it: the rendered frame differs from
    the source there far more than on the background away from the person (encoder noise)."""
    for index, persons in found.items():
        x1, y1, x2, _ = (int(round(v)) for v in persons[0]["bbox"])
        diff = np.abs(rendered[index].astype(np.int16) - source[index].astype(np.int16)).max(axis=2)
        edge = diff[max(y1 - 1, 0) : y1 + 2, x1 + 15 : x2 - 15].max(axis=0).mean()  # the line may blur by 1 px
        background = diff[: max(y1 - 30, 10), :].mean()  # above her label and box
        assert edge > 60 and background < 15, (index, edge, background)


def test_every_n_frames_keeps_the_duration(client, tmp_path, temp_dir):
    data = write_video(tmp_path / "in.avi", "MJPG").read_bytes()
    r = post(client, "/v1/render/video", data, filename="x.avi", every_n_frames=2, detect_every=3, smooth=True)
    assert r.status_code == 200, r.text
    assert r.headers["x-video-frames"] == str(N // 2)
    out = tmp_path / "out.mp4"
    out.write_bytes(r.content)
    fps, frames = read_video(out)
    assert fps == pytest.approx(FPS / 2) and len(frames) == N // 2


def test_mp4_writer_sizes_and_cleanup(temp_dir):
    """OpenCV's FFmpeg rounds odd sizes down itself (so no odd test video can be written with it);
    the writer does it up front, so the size it reports is the file's. A frame of another size is
    scaled to the first's; a discarded render leaves no file."""
    writer = Mp4Writer(FPS, W + 1, H + 1)
    assert (writer.width, writer.height) == (W, H) and writer.codec in MP4_CODECS
    writer.write(astronaut_frame(0, (W + 1, H + 1)))
    writer.write(astronaut_frame(1, (W // 2, H // 2)))
    path = writer.finish()
    fps, frames = read_video(path)
    assert fps == pytest.approx(FPS) and len(frames) == 2 and {f.shape for f in frames} == {(H, W, 3)}
    original = astronaut_frame(0, (W + 1, H + 1))[:H, :W].astype(np.int16)
    assert np.abs(frames[0].astype(np.int16) - original).mean() < 8  # cropped, not scaled
    path.unlink()
    gone = Mp4Writer(FPS, W, H)
    gone.write(astronaut_frame(0))
    gone.discard()
    gone.write(astronaut_frame(1))  # a write that comes after (the request was cancelled) does nothing
    assert os.listdir(temp_dir) == []


def test_body_limit_is_the_video_one(client, tmp_path, temp_dir):
    data = write_video(tmp_path / "in.avi", "MJPG").read_bytes()
    assert MAX_BODY < len(data) < 3_000_000  # over the image routes' limit, within the video routes'
    assert post(client, "/v1/render/video", data, filename="x.avi", max_frames=2).status_code == 200
    assert_problem(post(client, "/v1/render/video", os.urandom(3_100_000)), 413, "too_large")


def test_render_limits_each_say_which(client, tmp_path, temp_dir):
    long = write_video(tmp_path / "long.avi", "MJPG", n=70, size=(64, 48)).read_bytes()
    body = assert_problem(post(client, "/v1/render/video", long, filename="x.avi"), 413, "too_large")
    assert "HEVITPOSE_VIDEO_MAX_FRAMES" in body["detail"]
    slow = write_video(tmp_path / "slow.avi", "MJPG", n=25, fps=1, size=(64, 48)).read_bytes()  # 25 s
    body = assert_problem(post(client, "/v1/render/video", slow, filename="x.avi"), 413, "too_large")
    assert "HEVITPOSE_VIDEO_MAX_SECONDS" in body["detail"]
    big = write_video(tmp_path / "big.avi", "MJPG", n=2, size=(480, 320)).read_bytes()
    body = assert_problem(post(client, "/v1/render/video", big, filename="x.avi"), 413, "too_large")
    assert "HEVITPOSE_VIDEO_MAX_PIXELS" in body["detail"]
    assert wait_until_empty(temp_dir) == []


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("route", ["/v1/predict/video", "/v1/render/video"])
def test_bad_videos_are_clear_4xx(client, tmp_path, temp_dir, route):
    mp4 = write_video(tmp_path / "in.mp4", "mp4v").read_bytes()
    avi = write_video(tmp_path / "in.avi", "MJPG", n=30).read_bytes()
    start, end = mp4.index(b"mdat") + 4, mp4.index(b"moov") - 4  # OpenCV writes the index (moov) last
    mp4_garbled = mp4[:start] + os.urandom(end - start) + mp4[end:]  # the index intact, every frame noise
    cases = {
        "empty": (b"", "invalid_video"),
        "text": (b"name,x,y\n" * 500, "unsupported_media_type"),
        "an image": (cv2.imencode(".png", astronaut_frame(0))[1].tobytes(), "unsupported_media_type"),
        "mp4 without its index": (mp4[: len(mp4) // 2], "unsupported_media_type"),  # moov comes last
        "mp4 with garbled frames": (mp4_garbled, "invalid_video"),
        "truncated avi": (avi[: len(avi) // 2], "invalid_video"),  # found after frames were drawn
    }
    for name, (data, reason) in cases.items():
        r = post(client, route, data)
        body = assert_problem(r, 400 if reason == "invalid_video" else 415, reason)
        assert body["detail"], name
    assert wait_until_empty(temp_dir) == []
    assert post(client, route, mp4, max_frames=2).status_code == 200  # the worker goes on serving


def test_render_bad_fields(client, tmp_path):
    data = write_video(tmp_path / "in.avi", "MJPG", n=3).read_bytes()
    for fields in ({"every_n_frames": 0}, {"detect_every": 0}, {"max_frames": 0}, {"detector": "boxes"},
                   {"min_score": 2}, {"smooth": "maybe"}):  # fmt: skip
        assert_problem(post(client, "/v1/render/video", data, filename="x.avi", **fields), 422, "invalid_field")
    assert_problem(client.post("/v1/render/video", files={"image": ("x.avi", data)}), 422, "invalid_field")
    r = client.post("/v1/render/video", content=data, headers={"content-type": "video/x-msvideo"})
    assert "'video' file field" in assert_problem(r, 415, "unsupported_media_type")["detail"]


# ---------------------------------------------------------------------------- a client that leaves


def test_client_that_leaves_frees_the_render(client, server, tmp_path, temp_dir):
    service = server.app.state.service
    real = service.detector
    slow = SlowDetector(real, 0.1)
    service.detector = slow
    try:
        data = write_video(tmp_path / "in.avi", "MJPG", n=50, size=(160, 120)).read_bytes()
        left0 = metric(client, "hevitpose_requests_total", endpoint="/v1/render/video", status="499")
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60, read=0.8)) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                post(impatient, "/v1/render/video", data, filename="x.avi")
        deadline = time.monotonic() + 10
        while metric(client, "hevitpose_active_streams", source="video") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(client, "hevitpose_active_streams", source="video") == 0
        calls = slow.calls
        assert calls < 40, calls  # stopped long before the end
        time.sleep(0.5)
        assert slow.calls == calls  # nothing goes on decoding or detecting for it
        assert metric(client, "hevitpose_requests_total", endpoint="/v1/render/video", status="499") == left0 + 1
        assert wait_until_empty(temp_dir) == []
    finally:
        service.detector = real
