"""Helpers for the service tests: a tiny random bundle, the tests' settings, crafted images, a real
uvicorn server, the check of a problem answer. The fixtures built on them are in ``conftest.py``."""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import torch
import uvicorn

from model import build_model
from model.bundle import BundleMeta, save_bundle
from model.keypoints import COCO17
from service import errors
from service.app import create_app
from service.settings import Settings

INPUT_SIZE = (64, 96)  # (w, h): small and not square, so aspect handling is exercised


def make_bundle(directory: Path, name: str = "hevitpose-t", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(name, COCO17.num_keypoints)
    path = directory / "tiny"
    meta = BundleMeta.for_model(name, COCO17, input_size=list(INPUT_SIZE), version="test-1")
    save_bundle(model, meta, path)
    return path


def service_settings(weights: Path, **overrides) -> Settings:
    """The settings every service test starts from: a CPU, one thread per library (the tests share
    the cores), a generous deadline; a test module changes what it tests."""
    base = dict(weights=weights, device="cpu", threads=1, detector_threads=1, cpu_workers=2, request_timeout_s=60,
                max_batch_size=8, max_wait_ms=2)  # fmt: skip
    return Settings(**{**base, **overrides})


# ---------------------------------------------------------------------------- images


def noise_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB picture (noise compresses badly and makes big test files)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def encode(image_rgb: np.ndarray, ext: str = ".jpg", params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params or [])
    assert ok
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG that declares a huge canvas in a few hundred bytes.

    Its IDAT holds the first rows of zeros, deflated; a decoder that trusted the header
    would allocate width * height * 3 bytes (30 GB here) before finding out.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment whose only tag is Orientation (0x0112)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


# ---------------------------------------------------------------------------- server


class ServerThread:
    """The real app under uvicorn on 127.0.0.1, on a socket bound before start (no port race)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, ready_timeout: float = 120.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {ready_timeout} s: {self.app.state.service.load_error}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


# ---------------------------------------------------------------------------- answers


def assert_problem(response: httpx.Response, status: int, reason: str) -> dict:
    """A problem details answer (RFC 9457) with this status and reason, and no stack trace in it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(errors.PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["type"] == errors.TYPE_PREFIX + reason and body["status"] == status, body
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body
