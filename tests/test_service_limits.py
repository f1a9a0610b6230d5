"""Overload, deadlines and readiness, against real servers configured to hit them."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from _service_util import ServerThread, encode, noise_image
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.cli import main as serve_main
from service.settings import Settings

JPEG = encode(noise_image(96, 96), ".jpg")


def rejections(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "hevitpose_rejections"]
    return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_queue_full_is_503_and_deadline_is_504(bundle):
    # The worker waits up to 4 s for a batch of 16 crops, longer than the 2 s deadline; the
    # queue holds two images. Of five one-box requests sent together, two are admitted and
    # time out (504), three find the queue full (503 with Retry-After).
    settings = Settings(weights=bundle, device="cpu", backend="torch", max_batch_size=16, max_wait_ms=4000,
                        queue_size=2, request_timeout_s=2.0, max_persons=16)  # fmt: skip
    server = ServerThread(settings).start()
    try:

        async def burst():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:

                async def one():
                    files = {"image": ("x.jpg", JPEG, "image/jpeg")}
                    return await ac.post("/v1/predict", files=files, data={"boxes": "[[0, 0, 50, 90]]"})

                return await asyncio.gather(*(one() for _ in range(5)))

        responses = asyncio.run(burst())
        codes = sorted(r.status_code for r in responses)
        assert codes == [503, 503, 503, 504, 504], [r.text for r in responses]
        for r in responses:
            assert r.headers["content-type"].startswith("application/problem+json")
            body = r.json()
            assert body["status"] == r.status_code
            if r.status_code == 503:
                assert body["type"].endswith(":queue_full") and int(r.headers["retry-after"]) >= 1
            else:
                assert body["type"].endswith(":deadline")
        counts = rejections(server.url)
        assert counts["queue_full"] == 3 and counts["deadline"] == 2

        # A full batch does not wait: 16 boxes in one image go straight through, and the
        # timed-out jobs left in the queue were skipped, not run for nobody.
        boxes = [[i, 0, i + 30, 90] for i in range(16)]
        files = {"image": ("x.jpg", JPEG, "image/jpeg")}
        r = httpx.post(server.url + "/v1/predict", files=files, data={"boxes": json.dumps(boxes)}, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["persons"]) == 16
        text = httpx.get(server.url + "/metrics").text
        (batch,) = [f for f in text_string_to_metric_families(text) if f.name == "hevitpose_batch_size"]
        counts = {s.name: s.value for s in batch.samples if s.name.endswith(("_count", "_sum"))}
        assert counts == {"hevitpose_batch_size_count": 1.0, "hevitpose_batch_size_sum": 16.0}
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


def test_not_ready_until_loaded(bundle):
    # The app before its lifespan ran: alive, not ready, and requests get 503 rather than a crash.
    app = create_app(Settings(weights=bundle, device="cpu"))

    async def probe():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            files = {"image": ("x.jpg", JPEG, "image/jpeg")}
            return (await ac.get("/healthz"), await ac.get("/readyz"), await ac.post("/v1/predict", files=files),
                    await ac.get("/v1/models"))  # fmt: skip

    health, ready, predict, models = asyncio.run(probe())
    assert health.status_code == 200
    for r in (ready, predict, models):
        assert r.status_code == 503 and r.json()["type"].endswith(":not_ready")
        assert r.headers["retry-after"] == "1"


def test_broken_weights_keep_the_service_unready(tmp_path):
    (tmp_path / "bad.json").write_text('{"model": "hevitpose-t", "keypoint_names": ["a"], "skeleton": [], '
                                       '"flip_pairs": [], "input_size": [64, 96]}')  # fmt: skip
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    app = create_app(Settings(weights=tmp_path / "bad", device="cpu"))
    service = app.state.service
    service.start()
    assert service.wait_ready(60) is False
    assert service.load_error
    service.stop()


@pytest.fixture
def restore_logging():
    """`hevitpose serve` run in-process (service.logs.setup_logging) points the root logger at the test's
    captured stderr, which pytest closes after the test: later tests' log lines would meet a closed file
    ("--- Logging error ---"), and pytest's own log capture would have lost its handler."""
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(log.handlers[:], log.level, log.propagate, log.disabled) for log in loggers]
    yield
    for log, (handlers, level, propagate, disabled) in zip(loggers, saved):
        log.handlers[:], log.propagate, log.disabled = handlers, propagate, disabled
        log.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_serve_exits_when_the_model_fails_to_load(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"model": "hevitpose-t", "keypoint_names": ["a"], "skeleton": [], '
                                       '"flip_pairs": [], "input_size": [64, 96]}')  # fmt: skip
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    assert serve_main(["--weights", str(tmp_path / "bad"), "--port", "0", "--device", "cpu"]) == 1
    assert "the model failed to load" in capsys.readouterr().err


def test_serve_refuses_missing_weights(tmp_path, capsys):
    assert serve_main(["--weights", str(tmp_path / "nothing"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "model weights not found" in err and "HEVITPOSE_WEIGHTS" in err


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HEVITPOSE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("HEVITPOSE_DETECTOR_SCORE_THRESHOLD", "0.5")
    monkeypatch.setenv("HEVITPOSE_WEIGHTS", str(tmp_path / "w"))
    s = Settings()
    assert s.max_batch_size == 7 and s.detector_score_threshold == 0.5 and s.weights == tmp_path / "w"
    monkeypatch.setenv("HEVITPOSE_QUEUE_SIZE", "0")
    with pytest.raises(ValueError):
        Settings()


def test_every_setting_is_documented():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()
    for name in Settings.model_fields:
        assert f"`HEVITPOSE_{name.upper()}`" in docs, name


def test_hevitpose_serve_command(bundle, tmp_path):
    """The real command: flags and environment, JSON logs with request ids, clean exit on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEVITPOSE_")}
    env.update(HEVITPOSE_MAX_BATCH_SIZE="4", HEVITPOSE_DETECTOR_THREADS="1")
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hevitpose_cli", "serve", "--weights", str(bundle), "--port", str(port),
             "--device", "cpu", "--backend", "torch"],
            cwd=Path(__file__).resolve().parents[1], env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        (info,) = httpx.get(url + "/v1/models").json()["models"]
        assert info["backend"] == "torch"
        r = httpx.post(url + "/v1/predict", files={"image": ("x.jpg", JPEG, "image/jpeg")},
                       data={"detector": "whole_image"}, headers={"X-Request-ID": "cli-test-1"})  # fmt: skip
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]  # all JSON
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    access = [line for line in lines if line.get("request_id") == "cli-test-1"]
    assert access and access[0]["path"] == "/v1/predict" and access[0]["status"] == 200
    assert any(line["msg"] == "model ready" for line in lines)
    assert any("shutdown complete" in line["msg"].lower() for line in lines)
