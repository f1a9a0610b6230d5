"""Pieces of the service on their own: header probe, JPEG truncation, NanoDet decoding, the batcher."""

from __future__ import annotations

import concurrent.futures
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _service_util import encode, noise_image, png_bomb, with_exif_orientation

from service import errors, imaging
from service.batching import DeadlineExceeded, MicroBatcher, QueueFull, Stopped
from service.detector import (
    INPUT_SIZE,
    NUM_BINS,
    DetectorConfig,
    Letterbox,
    NanoDetPersonDetector,
    decode_gfl,
    nms,
    tile_windows,
)
from service.metrics import ServiceMetrics
from service.pose_model import PoseJob, PoseResult
from service.pose_service import person_scores
from service.settings import DEFAULT_DETECTOR

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# ---------------------------------------------------------------------------- imaging


@pytest.mark.parametrize("ext, fmt", [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp"), (".bmp", "bmp")])
def test_probe_reads_size_of_each_format(ext, fmt):
    data = encode(noise_image(53, 37), ext)
    assert imaging.probe(data) == imaging.ImageHeader(fmt, 53, 37)
    assert imaging.decode(data, 10_000).shape == (37, 53, 3)


def test_probe_lossless_webp_progressive_jpeg_and_exif():
    image = noise_image(41, 29)
    assert imaging.probe(encode(image, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])).width == 41  # VP8L
    progressive = encode(image, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert imaging.probe(progressive) == imaging.ImageHeader("jpeg", 41, 29)
    assert imaging.jpeg_is_complete(progressive)
    assert imaging.probe(with_exif_orientation(progressive, 6)).width == 41  # the stored size


def test_bmp_top_down_rows():
    data = bytearray(encode(noise_image(20, 10), ".bmp"))
    struct.pack_into("<i", data, 22, -10)  # same pixels, stored top-down
    assert imaging.probe(bytes(data)) == imaging.ImageHeader("bmp", 20, 10)


def test_bomb_refused_before_decoding():
    with pytest.raises(errors.Problem) as exc:
        imaging.decode(png_bomb(60_000, 60_000), max_pixels=10_000_000)
    assert exc.value.status == 413


@pytest.mark.parametrize(
    "data, status",
    [
        (b"", 400),
        (b"hello world", 415),
        (b"GIF89a....", 415),
        (b"\xff\xd8\xff\xe0\x00", 400),
        (b"\x89PNG\r\n\x1a\n", 400),
    ],
)
def test_probe_errors(data, status):
    with pytest.raises(errors.Problem) as exc:
        imaging.decode(data, 10_000)
    assert exc.value.status == status


def test_jpeg_truncation_found_even_with_an_exif_thumbnail():
    full = encode(noise_image(120, 90), ".jpg")
    assert imaging.jpeg_is_complete(full) and imaging.jpeg_is_complete(full + b"trailing junk")
    assert not imaging.jpeg_is_complete(full[:-2])
    # an APP1 segment that itself ends in FF D9 (as an embedded thumbnail does)
    thumb = encode(noise_image(16, 16), ".jpg")
    app1 = b"Exif\x00\x00" + thumb
    with_thumb = full[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + full[2:]
    assert imaging.jpeg_is_complete(with_thumb)
    assert not imaging.jpeg_is_complete(with_thumb[: len(with_thumb) - 500])


# ---------------------------------------------------------------------------- detector


def _one_hot_bins(distances_bins: list[float]) -> np.ndarray:
    """GFL logits whose softmax puts all mass on each side's bin (a large logit there)."""
    logits = np.full((4, NUM_BINS), -50.0, np.float32)
    for side, b in enumerate(distances_bins):
        logits[side, int(b)] = 50.0
    return logits.reshape(-1)


def test_gfl_decoding_known_answer():
    scores = {s: np.zeros(((INPUT_SIZE // s) ** 2, 80), np.float32) for s in (8, 16, 32)}
    regs = {s: np.zeros(((INPUT_SIZE // s) ** 2, 44), np.float32) for s in (8, 16, 32)}
    g = INPUT_SIZE // 16
    row, col = 5, 7  # cell centre (7.5 * 16, 5.5 * 16) = (120, 88)
    scores[16][row * g + col, 0] = 0.9  # person
    scores[16][row * g + col + 1, 3] = 0.99  # a motorbike: ignored
    regs[16][row * g + col] = _one_hot_bins([2, 1, 3, 4])  # left, top, right, bottom in bins
    boxes, box_scores = decode_gfl(scores, regs, 0.35)
    np.testing.assert_allclose(boxes, [[120 - 32, 88 - 16, 120 + 48, 88 + 64]], atol=1e-3)
    np.testing.assert_allclose(box_scores, [0.9])
    # expected value of a two-bin split: half in bin 2 and half in bin 3 -> 2.5 bins
    logits = np.full((4, NUM_BINS), -50.0, np.float32)
    logits[:, 2] = logits[:, 3] = 10.0
    regs[16][row * g + col] = logits.reshape(-1)
    boxes, _ = decode_gfl(scores, regs, 0.35)
    np.testing.assert_allclose(boxes[0], [120 - 40, 88 - 40, 120 + 40, 88 + 40], atol=1e-3)


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.4], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0, 3]


def test_nanodet_finds_the_walker_in_the_paper_figure():
    figure = SHARED / "paper" / "network.png"
    if not figure.is_file():
        pytest.skip("shared/paper/network.png not beside the repository")
    # The figure's input photo: one person walking under an umbrella (hand-measured box). The
    # figure draws a patch grid over him: NanoDet scores him 0.17 stretched to 416x416 and only
    # 0.07 letterboxed, so this checks the stretch path's decoding on a real picture; the
    # letterbox path is checked on the astronaut photo below.
    photo = cv2.cvtColor(cv2.imread(str(figure))[150:870, 0:560], cv2.COLOR_BGR2RGB)
    person = np.array([245, 155, 435, 580], np.float32)
    detector = NanoDetPersonDetector(
        DetectorConfig(DEFAULT_DETECTOR, score_threshold=0.1, nms_iou=0.5, threads=1, letterbox=False)
    )
    boxes, scores = detector(photo)
    assert len(boxes) >= 1 and np.all(np.diff(scores) <= 0)  # best first
    assert np.all((boxes[:, :2] >= 0) & (boxes[:, 2:] <= [560, 720]))
    x1 = np.maximum(boxes[:, 0], person[0])
    y1 = np.maximum(boxes[:, 1], person[1])
    x2 = np.minimum(boxes[:, 2], person[2])
    y2 = np.minimum(boxes[:, 3], person[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (area + (person[2] - person[0]) * (person[3] - person[1]) - inter)
    assert iou.max() > 0.5
    assert detector(photo, max_persons=1)[0].shape == (1, 4)


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("width, height", [(300, 900), (1000, 200), (416, 416), (37, 1), (1, 1), (20000, 10)])
def test_letterbox_maps_boxes_exactly(width, height):
    """A white rectangle drawn in the image lands where to_input says, and to_image undoes it."""
    lb = Letterbox.fit(width, height)
    assert lb.scale_x == pytest.approx(lb.scale_y, rel=0.05 if min(width, height) > 20 else 1.0)
    assert 1 <= lb.new_w <= INPUT_SIZE and 1 <= lb.new_h <= INPUT_SIZE and max(lb.new_w, lb.new_h) == INPUT_SIZE
    assert lb.dx == (INPUT_SIZE - lb.new_w) // 2 and lb.dy == (INPUT_SIZE - lb.new_h) // 2
    box = np.array([[0.2 * width, 0.3 * height, 0.7 * width, 0.9 * height]], np.float32)
    np.testing.assert_allclose(lb.to_image(lb.to_input(box)), box, rtol=1e-5, atol=1e-3)
    # the image's own corners go to the resized image's corners inside the canvas
    corners = lb.to_input(np.array([[0, 0, width, height]], np.float32))[0]
    np.testing.assert_allclose(corners, [lb.dx, lb.dy, lb.dx + lb.new_w, lb.dy + lb.new_h], atol=1e-3)
    if min(width, height) < 50:
        return
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box[0].round().astype(int)
    image[y1:y2, x1:x2] = 255
    canvas = lb.apply(image, INPUT_SIZE, pad_value=0)
    assert canvas.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    ys, xs = np.nonzero(canvas[:, :, 0] > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    expected = lb.to_input(np.array([[x1, y1, x2, y2]], np.float32))[0]
    np.testing.assert_allclose(found, expected, atol=1.0)


def test_stretch_mapping_is_the_old_resize():
    lb = Letterbox.fit(640, 480, keep_ratio=False)
    assert (lb.dx, lb.dy, lb.new_w, lb.new_h) == (0, 0, INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_allclose(lb.to_image(np.array([[0, 0, 416, 416]], np.float32)), [[0, 0, 640, 480]])


def test_tile_windows_cover_the_image_with_overlap():
    for w, h, grid in [(768, 576, 2), (1920, 1080, 3), (641, 2000, 2)]:
        windows = tile_windows(w, h, grid, 0.25)
        assert len(windows) == grid * grid
        covered = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in windows:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            covered[y0:y1, x0:x1] = True
        assert covered.all()
        (ax0, _, ax1, _), (bx0, _, _, _) = windows[0], windows[1]
        assert ax1 - bx0 == pytest.approx(0.25 * (ax1 - ax0), abs=1.5)


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()  # (512, 512, 3) RGB: a woman from the hair to below the frame


ASTRONAUT = np.array([15, 15, 368, 512], np.float32)  # hand-measured on the photo (cut by its bottom edge)


@pytest.fixture(scope="module")
def nanodet():
    return NanoDetPersonDetector(DetectorConfig(DEFAULT_DETECTOR, threads=1))  # the service's defaults


@pytest.mark.parametrize(
    "canvas_wh, at", [((600, 1400), (50, 600)), ((1800, 512), (1200, 0)), ((1400, 700), (37, 150))]
)
def test_person_found_and_mapped_back_in_tall_and_wide_images(nanodet, astronaut, canvas_wh, at):
    """The photo pasted at a known place on a tall or wide canvas: its box comes back at that place."""
    cw, ch = canvas_wh
    canvas = np.full((ch, cw, 3), 90, np.uint8)
    canvas[at[1] : at[1] + 512, at[0] : at[0] + 512] = astronaut
    boxes, scores = nanodet(canvas)
    expected = ASTRONAUT + np.array([*at, *at], np.float32)
    assert len(boxes) >= 1
    assert _iou(boxes[0], expected) > 0.8, (boxes, expected)
    # the same as on the photo alone, shifted: the mapping back adds no error of its own
    alone, _ = nanodet(astronaut)
    assert _iou(boxes[0], alone[0] + np.array([*at, *at], np.float32)) > 0.85


def test_stretching_loses_the_person_that_letterbox_finds(astronaut):
    canvas = np.full((512, 1800, 3), 90, np.uint8)
    canvas[:, 1200:1712] = astronaut
    stretch = NanoDetPersonDetector(DetectorConfig(DEFAULT_DETECTOR, threads=1, letterbox=False))
    letterbox = NanoDetPersonDetector(DetectorConfig(DEFAULT_DETECTOR, threads=1))
    expected = ASTRONAUT + np.array([1200, 0, 1200, 0], np.float32)
    assert not any(_iou(b, expected) > 0.5 for b in stretch(canvas)[0])  # why letterbox: issue 10
    assert any(_iou(b, expected) > 0.5 for b in letterbox(canvas)[0])


@pytest.mark.parametrize("crop", ["left", "right", "top", "top_left"])
def test_person_cut_by_the_border_still_gets_a_box(nanodet, astronaut, crop):
    """The photo cropped so that the image border cuts her: a box reaching that border."""
    x0, y0, x1 = {"left": (200, 0, 512), "right": (0, 0, 230), "top": (0, 160, 512), "top_left": (170, 120, 512)}[crop]
    image = np.ascontiguousarray(astronaut[y0:, x0:x1])
    h, w = image.shape[:2]
    visible = np.clip(ASTRONAUT - np.array([x0, y0, x0, y0], np.float32), 0, [w, h, w, h])
    boxes, _ = nanodet(image)
    assert len(boxes) >= 1
    best = max(boxes, key=lambda b: _iou(b, visible))
    assert _iou(best, visible) > 0.6, (boxes, visible)
    if crop in ("left", "top_left"):
        assert best[0] < 5
    if crop == "right":
        assert best[2] > w - 5
    if crop in ("top", "top_left"):
        assert best[1] < 5


def test_tiles_find_a_small_person_in_a_large_image(astronaut):
    """The photo shrunk to 100 px in a 1600x1200 frame: too small for one 416 pass, found on tiles."""
    canvas = np.full((1200, 1600, 3), 90, np.uint8)
    canvas[700:800, 300:400] = cv2.resize(astronaut, (100, 100), interpolation=cv2.INTER_AREA)
    expected = ASTRONAUT * (100 / 512) + np.array([300, 700, 300, 700], np.float32)
    one_pass = NanoDetPersonDetector(DetectorConfig(DEFAULT_DETECTOR, threads=1))
    tiled = NanoDetPersonDetector(DetectorConfig(DEFAULT_DETECTOR, threads=1, tiles=True))
    assert not any(_iou(b, expected) > 0.5 for b in one_pass(canvas)[0])
    assert tiled.wants_tiles(1600, 1200, 0) and not tiled.wants_tiles(600, 400, 0)
    boxes, _ = tiled(canvas)
    assert max(_iou(b, expected) for b in boxes) > 0.6


@pytest.mark.parametrize("shape", [(1, 1, 3), (10, 20000, 3), (20000, 8, 3), (64, 64, 3)])
def test_degenerate_images_give_valid_boxes_or_none(nanodet, shape):
    boxes, scores = nanodet(np.full(shape, 128, np.uint8))
    assert boxes.shape == (len(scores), 4)
    h, w = shape[:2]
    assert np.all((boxes[:, 0] >= 0) & (boxes[:, 2] <= w) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= h))


def test_person_scores_are_mmpose_rescoring():
    kp = np.array([[0.9, 0.8, 0.1, 0.0], [0.15, 0.2, 0.05, 0.1], [0.5, 0.5, 0.5, 0.5]])
    box = np.array([0.5, 0.9, 1.0])
    np.testing.assert_allclose(person_scores(box, kp, 0.2), [0.5 * 0.85, 0.0, 0.5])  # 0.2 itself does not count
    np.testing.assert_allclose(person_scores(box, kp, 0.0), [0.5 * 0.6, 0.9 * 0.125, 0.5])
    assert person_scores(np.zeros(0), np.zeros((0, 17)), 0.2).shape == (0,)


# ---------------------------------------------------------------------------- batcher


def _job(n: int, deadline_s: float = 30.0) -> PoseJob:
    return PoseJob(np.zeros((4, 4, 3), np.uint8), np.zeros((n, 4)), np.zeros((n, 2, 3)), None, False,
                   time.monotonic() + deadline_s)  # fmt: skip


def test_batcher_merges_bounds_and_answers_every_job():
    calls: list[list[int]] = []

    def run(jobs):
        calls.append([j.num_crops for j in jobs])
        return [PoseResult(np.zeros((j.num_crops, 17, 2)), np.zeros((j.num_crops, 17))) for j in jobs]

    batcher = MicroBatcher(run, max_batch_size=4, max_wait_s=0.2, queue_size=5, metrics=ServiceMetrics())
    jobs = [_job(1), _job(2), _job(1), _job(3), _job(1, deadline_s=-1)]
    batcher.submit(jobs)
    with pytest.raises(QueueFull):
        batcher.submit([_job(1)])
    batcher.start()
    done, _ = concurrent.futures.wait([j.future for j in jobs], timeout=10)
    assert len(done) == 5
    assert calls[0] == [1, 2, 1]  # filled up to max_batch_size crops, in arrival order
    assert [j.future.result().keypoints.shape[0] for j in jobs[:4]] == [1, 2, 1, 3]
    assert isinstance(jobs[4].future.exception(), DeadlineExceeded)  # expired while queued: told, not run
    assert sum(calls, []) == [1, 2, 1, 3]
    late = _job(1)
    batcher.stop()
    with pytest.raises(Stopped):
        batcher.submit([late])


def test_batcher_reports_a_failed_batch_to_each_job():
    def run(jobs):
        raise RuntimeError("backend exploded")

    batcher = MicroBatcher(run, max_batch_size=8, max_wait_s=0.0, queue_size=8, metrics=ServiceMetrics())
    batcher.start()
    jobs = [_job(1), _job(1)]
    batcher.submit(jobs)
    for job in jobs:
        with pytest.raises(RuntimeError, match="exploded"):
            job.future.result(timeout=10)
    batcher.stop()


# ---------------------------------------------------------------------------- pipeline


def test_device_crops_match_opencv_crops(tmp_path):
    """The GPU path (warp_crops_torch in the worker) gives the CPU path's keypoints; run here on the CPU."""
    from _service_util import make_bundle

    from model.runtime import RuntimeConfig
    from service.pose_model import PoseModel

    pose = PoseModel(make_bundle(tmp_path), RuntimeConfig(device="cpu", backend="torch"))
    image = noise_image(120, 90, seed=4)
    boxes = np.array([[10, 5, 60, 85], [50, 20, 118, 70]], np.float64)
    cpu_job = pose.prepare_job(image, boxes, flip_test=False, deadline=time.monotonic() + 10)
    (cpu,) = pose.run_jobs([cpu_job], max_batch_size=8)
    pose.crop_on_device = True
    dev_job = pose.prepare_job(image, boxes, flip_test=False, deadline=time.monotonic() + 10)
    assert dev_job.inputs is None
    (dev,) = pose.run_jobs([dev_job], max_batch_size=8)
    # bilinear sampling differs by rounding only: the same heatmap peaks
    assert np.mean(np.linalg.norm(cpu.keypoints - dev.keypoints, axis=-1) < 1.0) > 0.9
    assert cpu.keypoints.shape == (2, 17, 2)


def test_json_logs_carry_the_request_id():
    import json
    import logging

    from service.logs import JsonFormatter, request_id_var

    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "request", (), None)
    record.status = 413
    token = request_id_var.set("req-42")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "req-42" and line["status"] == 413 and line["msg"] == "request"
    assert line["level"] == "INFO" and line["ts"].endswith("Z")


def test_mutated_images_are_decoded_or_refused_never_crash():
    """Bit flips, cuts and header scribbles: each answer is an image or a 400/413/415 problem."""
    rng = np.random.default_rng(0)
    image = noise_image(64, 48, seed=1)
    bases = [encode(image, ext) for ext in (".jpg", ".png", ".webp", ".bmp")]
    bases.append(encode(image, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]))
    outcomes = set()
    for it in range(200):
        data = bytearray(bases[it % len(bases)])
        mode = it // len(bases) % 3
        if mode == 0:
            for _ in range(rng.integers(1, 8)):
                data[rng.integers(len(data))] = rng.integers(256)
        elif mode == 1:
            data = data[: rng.integers(1, len(data))]
        else:
            i = rng.integers(2, 60)
            data[i : i + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        try:
            out = imaging.decode(bytes(data), 10_000_000)
            assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
            outcomes.add("ok")
        except errors.Problem as exc:
            assert exc.status in (400, 413, 415)
            outcomes.add(exc.status)
    assert {"ok", 400} <= outcomes


def test_bundle_normalisation_is_honoured(tmp_path):
    import json as _json

    from _service_util import make_bundle

    from model.runtime import RuntimeConfig
    from service.pose_model import PoseModel

    path = make_bundle(tmp_path)
    pose = PoseModel(path, RuntimeConfig(device="cpu", backend="torch"))
    crops = torch.full((1, 3, 8, 8), 128.0)
    imagenet = pose.normalize(crops)
    meta = _json.loads(path.with_suffix(".json").read_text())
    meta["mean"], meta["std"] = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    path.with_suffix(".json").write_text(_json.dumps(meta))
    custom = PoseModel(path, RuntimeConfig(device="cpu", backend="torch")).normalize(crops)
    torch.testing.assert_close(custom, (crops - 127.5) / 63.75)
    assert not torch.allclose(custom, imagenet)
