"""The pose service end to end: a real uvicorn server on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import numpy as np
import pytest
from _service_util import (
    INPUT_SIZE,
    assert_problem,
    decode,
    encode,
    noise_image,
    png_bomb,
    service_settings,
    with_exif_orientation,
)
from prometheus_client.parser import text_string_to_metric_families

from model.bundle import load_bundle, sha256
from model.codec import bbox_to_center_scale
from model.keypoints import COCO17
from model.topdown import predict_bboxes

MAX_BODY = 1_000_000
MAX_PIXELS = 2_000_000


@pytest.fixture(scope="module")
def settings(bundle):
    return service_settings(bundle, max_wait_ms=5, queue_size=64, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS,
                            max_persons=20, detector_score_threshold=0.1)  # fmt: skip


def jpeg(width=160, height=120, seed=0) -> bytes:
    return encode(noise_image(width, height, seed), ".jpg")


def post(client, data: bytes, path="/v1/predict", filename="x.jpg", **fields):
    form = {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in fields.items()}
    return client.post(path, files={"image": (filename, data, "application/octet-stream")}, data=form)


# ---------------------------------------------------------------------------- endpoints


def test_health_ready_models(client, bundle):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    (info,) = client.get("/v1/models").json()["models"]
    assert info["name"] == "hevitpose-t" and info["version"] == "test-1"
    assert info["keypoint_names"] == list(COCO17.names)
    assert info["skeleton"] == [list(p) for p in COCO17.skeleton]
    assert info["input_size"] == list(INPUT_SIZE)
    assert info["weights_sha256"] == sha256(bundle.with_suffix(".safetensors"))
    assert info["device"] == "cpu" and info["backend"] in ("onnxruntime", "openvino", "torch")
    runtime = info["runtime"]  # backend=auto on a CPU: measured at start-up (or taken from that cache)
    assert runtime["how"] in ("measured", "cached") and (runtime["backend"], runtime["dtype"]) == (
        info["backend"],
        info["dtype"],
    )
    assert any(
        t["passed"] and (t["backend"], t["dtype"]) == (info["backend"], info["dtype"]) for t in runtime["trials"]
    )
    assert info["params"] > 1_000_000


def test_openapi_lists_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/render", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in paths
    fields = paths["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert client.get("/docs").status_code == 200
    assert fields  # the form schema is published


def test_predict_with_client_boxes(client):
    boxes = [[20.0, 10.0, 70.0, 110.0], [90.5, 30.25, 150.0, 100.0]]
    r = post(client, jpeg(160, 120), boxes=boxes)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 160, "height": 120}
    assert body["model"] == {"name": "hevitpose-t", "version": "test-1"}
    assert set(body["timings_ms"]) >= {"decode", "detect", "pose", "total"}
    assert body["timings_ms"]["pose"] > 0 and body["timings_ms"]["total"] >= body["timings_ms"]["pose"]
    assert len(body["persons"]) == 2
    aspect = INPUT_SIZE[0] / INPUT_SIZE[1]
    for person, box in zip(body["persons"], boxes):
        assert person["bbox"] == pytest.approx(box, abs=0.01)
        assert person["bbox_score"] == 1.0
        assert [k["name"] for k in person["keypoints"]] == list(COCO17.names)
        # every keypoint lies inside the padded crop the network saw (to the answer's 0.01 px rounding: the
        # decode clamps to the crop, so a keypoint can sit on its edge)
        center, scale = bbox_to_center_scale(np.array([box]), aspect, 1.25)
        lo, hi = center[0] - scale[0] / 2 - 0.006, center[0] + scale[0] / 2 + 0.006
        for k in person["keypoints"]:
            assert lo[0] <= k["x"] <= hi[0] and lo[1] <= k["y"] <= hi[1]
            assert 0 <= k["score"] <= 1.5 and math.isfinite(k["score"])
        # MMPose's rescoring: box score (1 here) x mean of the keypoint scores above 0.2 (0 if none)
        above = [k["score"] for k in person["keypoints"] if k["score"] > 0.2]
        assert person["score"] == pytest.approx(np.mean(above) if above else 0.0, abs=1e-3)


def test_keypoints_match_an_offline_top_down_pass(client, bundle):
    """The service's answer equals model/topdown's pass with the eager model on the same boxes, with the
    flip test (the default) and without it."""
    image = noise_image(160, 120, seed=3)
    boxes = [[20, 10, 70, 110], [90, 30, 150, 100]]
    model, meta = load_bundle(bundle)
    for flip in (None, "false"):
        form = {} if flip is None else {"flip_test": flip}
        r = post(client, encode(image, ".png"), filename="x.png", boxes=boxes, **form)
        got = np.array([[[k["x"], k["y"]] for k in p["keypoints"]] for p in r.json()["persons"]])
        flip_index = COCO17.flip_index if flip is None else None  # the default is the flip test
        expected, _ = predict_bboxes(model, image, np.array(boxes, float), meta.codec, meta.mean, meta.std, flip_index)
        error = np.linalg.norm(got - expected, axis=-1)  # onnxruntime vs eager, and JSON's 2 decimals
        assert np.median(error) < 0.02 and np.mean(error < 0.05) > 0.9, (flip, error)


def test_same_request_same_answer(client):
    data = jpeg(128, 96, seed=3)
    a = post(client, data, boxes=[[10, 10, 60, 90]]).json()["persons"]
    b = post(client, data, boxes=[[10, 10, 60, 90]]).json()["persons"]
    assert a == b


def test_whole_image_mode(client):
    r = post(client, jpeg(100, 140), detector="whole_image")
    assert r.status_code == 200, r.text
    (person,) = r.json()["persons"]
    assert person["bbox"] == [0, 0, 100, 140]


def test_nanodet_mode_runs(client):
    r = post(client, jpeg(200, 150), detector="nanodet")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timings_ms"]["detect"] > 0
    for person in body["persons"]:  # smooth noise rarely holds a person; if it does, the box is in the image
        x1, y1, x2, y2 = person["bbox"]
        assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 150 and 0 < person["bbox_score"] <= 1


def test_nanodet_finds_the_astronaut_over_http(client):
    """A real photo pasted on a wide canvas (letterboxed by the detector): her box in image pixels."""
    skimage_data = pytest.importorskip("skimage.data")
    canvas = np.full((520, 1100, 3), 90, np.uint8)
    canvas[8:520, 500:1012] = skimage_data.astronaut()  # hand-measured box on the photo: 15,15-368,512
    r = post(client, encode(canvas, ".png"), filename="x.png", detector="nanodet")
    assert r.status_code == 200, r.text
    persons = r.json()["persons"]
    assert persons and persons[0]["bbox_score"] >= 0.5
    x1, y1, x2, y2 = persons[0]["bbox"]
    assert abs(x1 - 515) < 25 and abs(y1 - 23) < 25 and abs(x2 - 868) < 25 and abs(y2 - 520) < 5
    assert 0 <= persons[0]["score"] <= persons[0]["bbox_score"] * 1.5  # box x keypoint confidence
    assert len(persons[0]["keypoints"]) == 17


def test_flip_test_and_filters(client):
    data = jpeg(120, 120, seed=5)
    plain = post(client, data, boxes=[[10, 10, 100, 110]], flip_test="false").json()["persons"][0]
    flipped = post(client, data, boxes=[[10, 10, 100, 110]], flip_test="true").json()["persons"][0]
    assert flipped["bbox"] == plain["bbox"] and len(flipped["keypoints"]) == 17
    assert flipped["keypoints"] != plain["keypoints"]  # the mirrored crop's heatmaps were averaged in
    assert post(client, data, boxes=[[10, 10, 100, 110]]).json()["persons"][0] == flipped  # the default
    assert post(client, data, boxes=[[10, 10, 100, 110]], min_score=1.0).json()["persons"] == []
    r = post(client, data, detector="nanodet", max_persons=1)
    assert r.status_code == 200 and len(r.json()["persons"]) <= 1


def test_min_score_filters_on_the_person_score(client):
    """min_score applies to ``score`` (box x keypoint confidence), the one number clients filter on."""
    data = jpeg(120, 120, seed=5)
    persons = post(client, data, boxes=[[10, 10, 60, 110], [60, 10, 110, 110]]).json()["persons"]
    cut = (persons[0]["score"] + persons[1]["score"]) / 2
    kept = post(client, data, boxes=[[10, 10, 60, 110], [60, 10, 110, 110]], min_score=cut).json()["persons"]
    assert [p["score"] for p in kept] == [p["score"] for p in persons if p["score"] >= cut]


def test_accepts_png_webp_bmp(client):
    image = noise_image(90, 70, seed=7)
    for ext in (".png", ".webp", ".bmp"):
        r = post(client, encode(image, ext), filename="x" + ext, detector="whole_image")
        assert r.status_code == 200, (ext, r.text)
        assert r.json()["image"] == {"width": 90, "height": 70}


def test_exif_orientation_is_applied(client):
    data = with_exif_orientation(jpeg(80, 40), 6)  # stored 80x40 landscape, shown rotated 90 degrees
    body = post(client, data, detector="whole_image").json()
    assert body["image"] == {"width": 40, "height": 80}
    assert body["persons"][0]["bbox"] == [0, 0, 40, 80]
    # boxes are checked against the upright size: y up to 80 is fine, x up to 80 is not
    assert post(client, data, boxes=[[0, 0, 40, 80]]).status_code == 200
    assert_problem(post(client, data, boxes=[[0, 0, 80, 40]]), 422, "invalid_field")


def test_batch_keeps_order(client):
    sizes = [(64, 48), (160, 120), (96, 128)]
    files = [("images", (f"{i}.jpg", jpeg(w, h, seed=i), "image/jpeg")) for i, (w, h) in enumerate(sizes)]
    boxes = [[[0, 0, 30, 40]], None, [[10, 10, 50, 90], [0, 0, 96, 128]]]
    r = client.post("/v1/predict/batch", files=files, data={"boxes": json.dumps(boxes)})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["image"] for res in results] == [{"width": w, "height": h} for w, h in sizes]
    assert [p["bbox"] for p in results[0]["persons"]] == [[0, 0, 30, 40]]
    assert [p["bbox"] for p in results[2]["persons"]] == [[10, 10, 50, 90], [0, 0, 96, 128]]
    # the same image alone gives the same keypoints as inside the batch
    alone = post(client, jpeg(96, 128, seed=2), boxes=[[10, 10, 50, 90], [0, 0, 96, 128]]).json()
    for a, b in zip(alone["persons"], results[2]["persons"]):
        np.testing.assert_allclose([[k["x"], k["y"]] for k in a["keypoints"]],
                                   [[k["x"], k["y"]] for k in b["keypoints"]], atol=0.05)  # fmt: skip


def test_batch_errors_name_the_image(client):
    files = [("images", ("a.jpg", jpeg(), "image/jpeg")), ("images", ("b.txt", b"hello", "text/plain"))]
    body = assert_problem(client.post("/v1/predict/batch", files=files), 415, "unsupported_media_type")
    assert "images[1]" in body["detail"]
    files = [("images", (f"{i}.jpg", jpeg(32, 32), "image/jpeg")) for i in range(17)]
    assert_problem(client.post("/v1/predict/batch", files=files), 422, "invalid_field")
    files = [("images", ("a.jpg", jpeg(), "image/jpeg"))]
    assert_problem(client.post("/v1/predict/batch", files=files, data={"boxes": "[[], []]"}), 422, "invalid_field")


def test_render_jpeg_and_png(client):
    image = noise_image(160, 120, seed=1)
    data = encode(image, ".png")
    r = post(client, data, path="/v1/render", boxes=[[20, 20, 100, 110]])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    out = decode(r.content)
    assert out.shape == (120, 160, 3)
    r = post(client, data, path="/v1/render", boxes=[[20, 20, 100, 110]], format="png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    out = decode(r.content)[:, :, ::-1]  # BGR -> RGB; PNG is lossless so untouched pixels match exactly
    changed = np.any(out != image, axis=2)
    assert changed[20, 20:100].mean() > 0.9 and changed[20:110, 20].mean() > 0.9  # the box outline
    assert changed[:10, :].sum() == 0 and changed[115:, :].sum() == 0  # nothing drawn far from it


def test_request_id_is_echoed(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32


# ---------------------------------------------------------------------------- bad input


def test_undecodable_images(client):
    full = jpeg(160, 120)
    assert_problem(post(client, full[: len(full) // 2]), 400, "invalid_image")  # truncated JPEG
    assert_problem(post(client, full[:200]), 400, "invalid_image")  # cut inside the headers
    assert_problem(post(client, b""), 400, "invalid_image")  # zero bytes
    png = encode(noise_image(50, 50), ".png")
    assert_problem(post(client, png[:40] + b"\x00" * 200), 400, "invalid_image")  # corrupt PNG data


def test_unsupported_types(client):
    assert_problem(post(client, b"just some text\n" * 20, filename="notes.txt"), 415, "unsupported_media_type")
    gif = b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00" + b";"
    assert_problem(post(client, gif, filename="x.gif"), 415, "unsupported_media_type")
    r = client.post("/v1/predict", json={"image": "aGVsbG8="})  # not multipart at all
    assert_problem(r, 415, "unsupported_media_type")


def test_decompression_bomb_refused_from_header(client):
    bomb = png_bomb(100_000, 100_000)
    assert len(bomb) < 10_000
    body = assert_problem(post(client, bomb, filename="bomb.png"), 413, "too_large")
    assert "100000x100000" in body["detail"]
    assert_problem(post(client, png_bomb(2000, 1001), filename="b.png"), 413, "too_large")  # just over 2 M pixels


def test_body_too_large(client):
    big = jpeg(64, 64) + b"\x00" * (MAX_BODY + 10)
    assert_problem(post(client, big), 413, "too_large")

    def chunks():  # no Content-Length: the limit is enforced while streaming
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'
        for _ in range(20):
            yield b"\x00" * 100_000
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_problem(r, 413, "too_large")


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"boxes": [[0, 0, 10, 10]] * 500}, "500 boxes"),
        ({"boxes": "[[0, 0, 10, 10"}, "malformed JSON"),
        ({"boxes": "[[NaN, 0, 10, 10]]"}, "finite"),
        ({"boxes": "[[0, 0, Infinity, 10]]"}, "finite"),
        ({"boxes": [[-5, 0, 10, 10]]}, "outside"),
        ({"boxes": [[0, 0, 161, 10]]}, "outside"),
        ({"boxes": [[0, 0, 10, 500]]}, "outside"),
        ({"boxes": [[10, 10, 5, 20]]}, "x2 > x1"),
        ({"boxes": [[0, 0, 10]]}, "[x1, y1, x2, y2]"),
        ({"boxes": [["a", 0, 10, 10]]}, "numbers"),
        ({"boxes": '{"x": 1}'}, "list"),
        ({"detector": "yolo"}, "detector"),
        ({"detector": "boxes"}, "needs the boxes"),
        ({"min_score": "2"}, "min_score"),
        ({"max_persons": "0"}, "max_persons"),
        ({"max_persons": "1000"}, "max_persons"),
        ({"flip_test": "maybe"}, "flip_test"),
        ({"boxes": [[0, 0, 10, 10]] * 3, "max_persons": "2"}, "max_persons"),
    ],
)
def test_bad_fields(client, fields, needle):
    body = assert_problem(post(client, jpeg(160, 120), **fields), 422, "invalid_field")
    assert needle in body["detail"]


def test_missing_image_field(client):
    assert_problem(client.post("/v1/predict", files={"other": ("x", b"1")}), 422, "invalid_field")
    assert_problem(client.post("/v1/predict", data={"image": "not a file"}, files={"x": ("x", b"1")}),
                   422, "invalid_field")  # fmt: skip


def test_unknown_route_and_method(client):
    assert_problem(client.get("/v2/nothing"), 404, "not_found")
    assert_problem(client.get("/v1/predict"), 405, "method_not_allowed")


# ---------------------------------------------------------------------------- load, then metrics


def test_many_concurrent_clients(server, client):
    images = [jpeg(96 + 8 * (i % 5), 96, seed=100 + i) for i in range(32)]
    boxes = [[[4 + i % 7, 6, 60 + i % 9, 90]] for i in range(32)]
    flip = ["true" if i % 2 else "false" for i in range(32)]  # flip and plain crops share batches
    solo = [post(client, images[i], boxes=boxes[i], flip_test=flip[i]).json() for i in range(6)]

    async def drive():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as ac:

            async def one(i):
                files = {"image": ("x.jpg", images[i], "image/jpeg")}
                data = {"boxes": json.dumps(boxes[i]), "flip_test": flip[i]}
                return await ac.post("/v1/predict", files=files, data=data)

            return await asyncio.gather(*(one(i) for i in range(32)))

    responses = asyncio.run(drive())
    assert [r.status_code for r in responses] == [200] * 32
    for i, r in enumerate(responses):
        body = r.json()
        assert body["image"]["width"] == 96 + 8 * (i % 5)
        assert body["persons"][0]["bbox"] == boxes[i][0]
    for i in range(6):  # batched with strangers, each request still gets its own answer
        a = np.array([[k["x"], k["y"]] for k in solo[i]["persons"][0]["keypoints"]])
        b = np.array([[k["x"], k["y"]] for k in responses[i].json()["persons"][0]["keypoints"]])
        np.testing.assert_allclose(a, b, atol=0.05)
    # and afterwards the server still answers correctly
    assert client.get("/healthz").status_code == 200
    again = post(client, images[0], boxes=boxes[0], flip_test="false").json()
    assert again["persons"][0]["keypoints"] == solo[0]["persons"][0]["keypoints"]


def test_metrics_scrape(client):
    post(client, jpeg(), detector="nanodet")
    assert_problem(post(client, b""), 400, "invalid_image")
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # the parser drops the counters' _total suffix from family names
    for name in ("hevitpose_requests", "hevitpose_request_duration_seconds", "hevitpose_stage_duration_seconds",
                 "hevitpose_queue_wait_seconds", "hevitpose_batch_size", "hevitpose_queue_depth",
                 "hevitpose_persons_per_image", "hevitpose_rejections", "hevitpose_model_info"):  # fmt: skip
        assert name in families, name
    assert "hevitpose_requests_total{" in text and "hevitpose_rejections_total{" in text

    def value(family, suffix="", **labels):
        return sum(s.value for s in families[family].samples
                   if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip

    assert value("hevitpose_requests", "_total", endpoint="/v1/predict", status="200") >= 40
    assert value("hevitpose_requests", "_total", endpoint="/v1/predict", status="400") >= 1
    assert value("hevitpose_requests", "_total", endpoint="/v1/predict", status="413") >= 1  # refused before routing
    assert value("hevitpose_requests", "_total", endpoint="/v1/predict", status="415") >= 1
    assert value("hevitpose_requests", "_total", endpoint="other", status="404") >= 1
    assert value("hevitpose_request_duration_seconds", "_count", endpoint="/v1/predict") >= 40
    for reason in ("invalid_image", "unsupported_media_type", "too_large", "invalid_field"):
        assert value("hevitpose_rejections", "_total", reason=reason) >= 1, reason
    for stage in ("decode", "detect", "crop", "pose", "postprocess"):
        assert value("hevitpose_stage_duration_seconds", "_count", stage=stage) >= 1, stage
    batches = value("hevitpose_batch_size", "_count")
    crops = value("hevitpose_batch_size", "_sum")
    assert batches >= 1 and crops > batches  # the concurrent requests were batched together
    assert value("hevitpose_batch_size", "_bucket", le="8.0") == batches  # never above max_batch_size
    assert value("hevitpose_queue_wait_seconds", "_count") >= 32
    assert value("hevitpose_queue_depth") == 0
    assert value("hevitpose_persons_per_image", "_count") >= 40
    (info,) = families["hevitpose_model_info"].samples
    assert info.value == 1 and info.labels["name"] == "hevitpose-t" and info.labels["device"] == "cpu"
    assert "hevitpose_gpu_memory_bytes" not in text or "device=" not in text.split("hevitpose_gpu_memory_bytes")[-1]
