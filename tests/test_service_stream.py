"""WS /v1/stream through Starlette's TestClient (the app in process; no WebSocket library needed)."""

from __future__ import annotations

import json
import time

import pytest
from _service_util import encode, service_settings
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from test_service_video import ColourDetector, draw_frame

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def app(bundle):
    app = create_app(service_settings(bundle, stream_max_concurrent=2, stream_idle_timeout_s=1.0))
    with TestClient(app) as client:
        assert app.state.service.wait_ready(120), app.state.service.load_error
        app.state.client = client
        yield app


@pytest.fixture()
def client(app):
    app.state.service.detector = ColourDetector()
    return app.state.client


def frame_bytes(f: int, n: int = 30) -> bytes:
    return encode(draw_frame(f, n), ".jpg")


def test_answers_frame_by_frame_with_track_ids(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"options": {"smooth": True, "detect_every": 2}}))
        ids = []
        for f in range(8):
            ws.send_bytes(frame_bytes(f))
            reply = ws.receive_json()
            assert reply["index"] == f and reply["dropped"] == 0
            assert len(reply["persons"]) == 2
            assert all(len(p["keypoints"]) == 17 for p in reply["persons"])
            ids.append(sorted(p["track_id"] for p in reply["persons"]))
        assert ids[0] == [1, 2]


def test_drops_frames_under_overload(client, app):
    app.state.service.detector = ColourDetector(delay_s=0.15)
    n = 12
    with client.websocket_connect("/v1/stream") as ws:
        for f in range(n):
            ws.send_bytes(frame_bytes(f))
        replies = []
        while not replies or replies[-1]["index"] != n - 1:
            replies.append(ws.receive_json())
    assert len(replies) < n
    assert sum(r["dropped"] for r in replies) + len(replies) == n
    assert [r["index"] for r in replies] == sorted(r["index"] for r in replies)


def test_bad_messages_get_an_error_and_the_stream_goes_on(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(b"this is not an image")
        reply = ws.receive_json()
        assert reply["index"] == 0 and reply["error"]["status"] in (400, 415)
        ws.send_text("{not json")
        assert ws.receive_json()["error"]["status"] == 422
        ws.send_text(json.dumps({"options": {"detect_every": 0}}))
        assert "detect_every" in ws.receive_json()["error"]["detail"]
        ws.send_text(json.dumps({"options": {"nonsense": 1}}))
        assert ws.receive_json()["error"]["status"] == 422
        ws.send_bytes(frame_bytes(0))
        reply = ws.receive_json()
        assert reply["index"] == 1 and len(reply["persons"]) == 2


def test_most_concurrent_streams(client):
    with client.websocket_connect("/v1/stream"), client.websocket_connect("/v1/stream"):
        with pytest.raises(WebSocketDenialResponse) as info:
            with client.websocket_connect("/v1/stream"):
                pass
        assert info.value.status_code == 503
        assert info.value.json()["type"].endswith(":too_many_streams")
    with client.websocket_connect("/v1/stream") as ws:  # room again once they closed
        ws.send_bytes(frame_bytes(0))
        assert "persons" in ws.receive_json()


def test_idle_stream_is_closed(client):
    with client.websocket_connect("/v1/stream") as ws:
        t0 = time.monotonic()
        reply = ws.receive_json()
        assert reply["error"]["type"].endswith(":idle_timeout")
        assert 0.8 < time.monotonic() - t0 < 10
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 4408


def test_stream_metrics(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(frame_bytes(0))
        ws.receive_json()
        text = client.get("/metrics").text
        assert 'hevitpose_active_streams{source="stream"} 1.0' in text
    text = client.get("/metrics").text
    assert 'hevitpose_active_streams{source="stream"} 0.0' in text
    assert 'hevitpose_frames_total{source="stream"}' in text
    assert 'hevitpose_frames_dropped_total{source="stream"}' in text
    assert 'hevitpose_tracks_started_total{source="stream"}' in text


def test_over_a_real_server(bundle):
    """uvicorn serves the WebSocket (with the websockets package, a dependency)."""
    ws_client = pytest.importorskip("websockets.sync.client")
    from _service_util import ServerThread

    settings = Settings(weights=bundle, device="cpu", threads=1, detector_threads=1,
                        stream_max_concurrent=1)  # fmt: skip
    srv = ServerThread(settings).start()
    try:
        srv.app.state.service.detector = ColourDetector()
        url = srv.url.replace("http://", "ws://") + "/v1/stream"
        with ws_client.connect(url) as ws:
            ws.send(frame_bytes(0))
            reply = json.loads(ws.recv(timeout=60))
            assert reply["index"] == 0 and len(reply["persons"]) == 2
            with pytest.raises(Exception) as info:  # the second stream is refused with the problem's status
                ws_client.connect(url, open_timeout=10)
            assert "503" in str(info.value)
    finally:
        srv.stop()
