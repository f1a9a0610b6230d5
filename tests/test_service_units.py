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

from service import errors, imaging
from service.batching import DeadlineExceeded, MicroBatcher, QueueFull, Stopped
from service.detector import INPUT_SIZE, NUM_BINS, DetectorConfig, NanoDetPersonDetector, decode_gfl, nms
from service.metrics import ServiceMetrics
from service.pipeline import PoseJob, PoseResult
from service.settings import DEFAULT_DETECTOR
from _service_util import encode, noise_image, png_bomb, with_exif_orientation

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
    [(b"", 400), (b"hello world", 415), (b"GIF89a....", 415), (b"\xff\xd8\xff\xe0\x00", 400), (b"\x89PNG\r\n\x1a\n", 400)],
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
    # The figure's input photo: one person walking under an umbrella (hand-measured box).
    photo = cv2.cvtColor(cv2.imread(str(figure))[150:870, 0:560], cv2.COLOR_BGR2RGB)
    person = np.array([245, 155, 435, 580], np.float32)
    detector = NanoDetPersonDetector(DetectorConfig(DEFAULT_DETECTOR, score_threshold=0.1, nms_iou=0.5, threads=1))
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
    from model.runtime import RuntimeConfig
    from service.pipeline import PoseModel
    from _service_util import make_bundle

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
    from service.pipeline import PoseModel

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
