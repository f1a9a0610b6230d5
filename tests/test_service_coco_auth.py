"""``format=coco`` on /v1/predict and /v1/predict/video, and the optional API key
(``HEVITPOSE_API_KEY``), against a real uvicorn server.

The COCO entries are checked the way evaluation uses them: loaded by pycocotools' ``COCO.loadRes``
against a ground truth written here, and scored by ``COCOeval`` (a ground truth equal to the
default format's persons must score AP 1, which fails if a keypoint is out of place).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json

import httpx
import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client
from _service_util import assert_problem, encode, noise_image, service_settings
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_service_video import ColourDetector, draw_frame, write_video

from model.keypoints import COCO17, MPII16
from service import coco_format, errors
from service.middleware import ApiKeyMiddleware

KEY = "s3cret-key-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
W, H = 160, 120
BOXES = [[10.0, 8.0, 70.0, 110.0], [84.0, 5.0, 150.0, 100.0]]


class SortedColourDetector(ColourDetector):
    """ColourDetector without its shuffling, so that track ids are the same in every request."""

    def __call__(self, image: np.ndarray, max_persons: int = 100):
        boxes, scores = super().__call__(image, max_persons)
        order = np.argsort(boxes[:, 0], kind="stable")
        return boxes[order], scores[order]


@pytest.fixture(scope="module")
def settings(bundle):
    # Batches of one crop and one frame in flight: every crop's numbers are the same in every
    # request, so two formats of the same input can be compared exactly.
    return service_settings(bundle, backend="torch", max_batch_size=1, video_pipeline_depth=1, max_wait_ms=1,
                            api_key=KEY)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def sorted_detector(server):
    server.app.state.service.detector = SortedColourDetector()


@pytest.fixture(scope="module")
def client(server):
    """conftest's client, with the key."""
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def anonymous(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# ---------------------------------------------------------------------------- format=coco


def expected_entry(person: dict, image_id: int) -> dict:
    """The test's own conversion of a default-format person (not the service's)."""
    by_name = {k["name"]: k for k in person["keypoints"]}
    flat = [v for name in COCO17.names for v in (by_name[name]["x"], by_name[name]["y"], by_name[name]["score"])]
    x1, y1, x2, y2 = person["bbox"]
    entry = {"image_id": image_id, "category_id": 1, "keypoints": flat, "score": person["score"],
             "bbox": [x1, y1, x2 - x1, y2 - y1]}  # fmt: skip
    if "track_id" in person:
        entry["track_id"] = person["track_id"]
    return entry


def assert_entries_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w)
        assert g["bbox"] == pytest.approx(w["bbox"], abs=0.006)  # w, h rounded to 2 decimals
        assert {k: v for k, v in g.items() if k != "bbox"} == {k: v for k, v in w.items() if k != "bbox"}


def ground_truth(tmp_path, persons_by_image: dict[int, list[dict]]) -> COCO:
    """A COCO keypoints file whose people are exactly ``persons_by_image`` (all joints visible)."""
    images, annotations = [], []
    for image_id, persons in persons_by_image.items():
        images.append({"id": image_id, "width": W, "height": H, "file_name": f"{image_id}.jpg"})
        for p in persons:
            e = expected_entry(p, image_id)
            kps = np.array(e["keypoints"]).reshape(17, 3)
            kps[:, 2] = 2
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "keypoints": kps.ravel().tolist(), "num_keypoints": 17, "bbox": e["bbox"],
                "area": e["bbox"][2] * e["bbox"][3]})  # fmt: skip
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO17.names),
                   "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton]}]  # fmt: skip
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return COCO(str(path))


def keypoint_ap(gt: COCO, entries: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        res = gt.loadRes(copy.deepcopy(entries))  # loadRes writes into the entries it is given
        ev = COCOeval(gt, res, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(res.getAnnIds()) == len(entries)
    return float(ev.stats[0])


def post_image(client, **fields) -> httpx.Response:
    data = encode(noise_image(W, H, seed=3), ".png")
    form = {"boxes": json.dumps(BOXES), **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/predict", files={"image": ("p.png", data, "image/png")}, data=form)


def test_predict_coco_entries_are_the_default_persons_and_load_into_pycocotools(client, tmp_path):
    default = post_image(client)
    assert default.status_code == 200, default.text
    persons = default.json()["persons"]
    assert len(persons) == 2
    r = post_image(client, format="coco", image_id=42)
    assert r.status_code == 200, r.text
    entries = r.json()
    assert_entries_equal(entries, [expected_entry(p, 42) for p in persons])
    assert all(len(e["keypoints"]) == 51 for e in entries)
    assert keypoint_ap(ground_truth(tmp_path, {42: persons}), entries) == pytest.approx(1.0)


def test_predict_coco_image_id_defaults_to_0_and_bad_values_are_refused(client):
    r = post_image(client, format="coco")
    assert r.status_code == 200, r.text
    assert {e["image_id"] for e in r.json()} == {0}
    assert_problem(post_image(client, format="xml"), 422, "invalid_field")
    assert "image_id" in assert_problem(post_image(client, format="coco", image_id=-1), 422, "invalid_field")["detail"]


def post_video(client, data: bytes, headers=None, **fields) -> httpx.Response:
    return client.post("/v1/predict/video", files={"video": ("v.avi", data, "video/x-msvideo")},
                       data={k: str(v) for k, v in fields.items()}, headers=headers or {})  # fmt: skip


def test_video_coco_json_and_ndjson_are_the_default_frames_with_frame_index_as_image_id(client, tmp_path):
    n = 8
    data = write_video(tmp_path / "cross.avi", n).read_bytes()
    default = post_video(client, data, every_n_frames=2)
    assert default.status_code == 200, default.text
    frames = default.json()["frames"]
    assert [f["index"] for f in frames] == [0, 2, 4, 6]
    want = [expected_entry(p, f["index"]) for f in frames for p in f["persons"]]
    assert len(want) == 8 and all("track_id" in e for e in want)

    r = post_video(client, data, every_n_frames=2, format="coco")
    assert r.status_code == 200, r.text
    assert r.headers["x-video-width"] == str(W) and float(r.headers["x-video-fps"]) == pytest.approx(10)
    assert_entries_equal(r.json(), want)

    streamed = post_video(client, data, headers={"Accept": "application/x-ndjson"}, every_n_frames=2, format="coco")
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert len(lines) == len(frames) and all(isinstance(line, list) for line in lines)  # one line per frame
    assert [{e["image_id"] for e in line} for line in lines] == [{f["index"]} for f in frames]
    assert_entries_equal([e for line in lines for e in line], want)

    gt = ground_truth(tmp_path, {f["index"]: f["persons"] for f in frames})
    assert keypoint_ap(gt, r.json()) == pytest.approx(1.0)


def test_coco_is_refused_for_a_model_without_the_coco_keypoints():
    coco_format.check_keypoints(COCO17.names[::-1])  # any order will do: entries follow COCO's
    with pytest.raises(errors.Problem) as info:
        coco_format.check_keypoints(MPII16.names)
    assert info.value.status == 422 and "nose" in info.value.detail


# ---------------------------------------------------------------------------- API key


def test_routes_refuse_a_missing_or_wrong_key(anonymous):
    wrong_headers = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"},
                     {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}]  # fmt: skip
    image = {"image": ("p.png", encode(noise_image(W, H), ".png"), "image/png")}
    requests = [("GET", "/v1/models", {}), ("POST", "/v1/predict", {"files": image}), ("GET", "/docs", {}),
                ("GET", "/openapi.json", {}), ("GET", "/no/such/route", {})]  # fmt: skip
    for headers in wrong_headers:
        for method, path, kwargs in requests:
            r = anonymous.request(method, path, headers=headers, **kwargs)
            body = assert_problem(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
            assert body["request_id"] == r.headers["x-request-id"]


def test_the_right_key_is_let_through(client, anonymous):
    assert client.get("/v1/models").status_code == 200
    assert anonymous.get("/v1/models", headers={"Authorization": f"bearer  {KEY}"}).status_code == 200
    assert post_image(client).status_code == 200


def test_health_readiness_and_metrics_need_no_key(anonymous):
    before = rejections(anonymous, "unauthorized")
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert anonymous.get("/v1/models").status_code == 401
    assert rejections(anonymous, "unauthorized") == before + 1


def rejections(anonymous, reason: str) -> float:
    r = anonymous.get("/metrics")
    assert r.status_code == 200
    for line in r.text.splitlines():
        if line.startswith(f'hevitpose_rejections_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_websocket_refused_without_the_key_and_served_with_it(server):
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            websockets.sync.client.connect(url, additional_headers=headers, open_timeout=30)
        response = info.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(response.body)["type"] == errors.TYPE_PREFIX + "unauthorized"
    with websockets.sync.client.connect(url, additional_headers=AUTH, open_timeout=30) as ws:
        ws.send(encode(draw_frame(0, 10), ".jpg"))
        reply = json.loads(ws.recv(timeout=60))
    assert reply["index"] == 0 and len(reply["persons"]) == 2


def test_websocket_closed_with_1008_where_the_server_has_no_denial_responses(server):
    """Servers without the ASGI WebSocket denial extension: the handshake is refused by a close."""
    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    middleware = ApiKeyMiddleware(inner, server.app.state.service)
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    def scope(headers):
        return {"type": "websocket", "path": "/v1/stream", "headers": headers, "extensions": {}}

    asyncio.run(middleware(scope([]), receive, send))
    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1008)] and reached == []
    asyncio.run(middleware(scope([(b"authorization", f"Bearer {KEY}".encode())]), receive, send))
    assert reached == ["/v1/stream"] and len(sent) == 1
