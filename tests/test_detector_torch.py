"""The PyTorch NanoDet (service/nanodet.py) against the ONNX file in onnxruntime, and its shared passes."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from service.detector import (
    INPUT_SIZE,
    STRIDES,
    DetectorConfig,
    Letterbox,
    NanoDetPersonDetector,
    OnnxRuntimeNetwork,
    SharedPasses,
    resolve_backend,
)
from service.nanodet import NanoDet, nanodet_from_onnx, read_onnx_convs

ROOT = Path(__file__).resolve().parents[1]
# service.settings' default, spelled out: the GPU image has no pydantic-settings, and these tests run there too.
DEFAULT_DETECTOR = ROOT / "service" / "assets" / "nanodet-m-416-coco.onnx"
BACKGROUNDS = ROOT / "training" / "synth" / "assets" / "backgrounds"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()  # (512, 512, 3) RGB, one woman


def _background(name: str, width: int, height: int) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(cv2.imread(str(BACKGROUNDS / name)), (width, height)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def photos(astronaut) -> dict[str, np.ndarray]:
    """Real-looking pictures: the photo; two people of different sizes on a street photo; a wide
    landscape with a person cut by the right border (large enough for the tiled pass)."""
    street = _background("storm_road.jpg", 960, 640)
    street[100:612, 30:542] = astronaut
    street[330:586, 640:896] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    wide = _background("mountain_path.jpg", 1400, 600)
    wide[60:572, 1400 - 300 :] = cv2.resize(astronaut, (512, 512))[:, :300]
    return {"astronaut": astronaut, "street": street, "wide": wide}


@pytest.fixture(scope="module")
def onnx_network() -> OnnxRuntimeNetwork:
    return OnnxRuntimeNetwork(DEFAULT_DETECTOR, threads=1)


@pytest.fixture(scope="module")
def torch_model() -> NanoDet:
    return nanodet_from_onnx(DEFAULT_DETECTOR)


def _letterboxed(image: np.ndarray) -> np.ndarray:
    return Letterbox.fit(image.shape[1], image.shape[0]).apply(image)


def test_network_outputs_equal_onnxruntime(photos, onnx_network, torch_model):
    """All six outputs, on two real-looking inputs run as one batch: the same as the ONNX graph's."""
    images = np.stack([_letterboxed(photos["astronaut"]), _letterboxed(photos["street"])])
    expected = onnx_network(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        outs = [o.numpy() for o in torch_model(x)]
    for n, (scores, regressions) in enumerate(expected):
        for i, stride in enumerate(STRIDES):
            g = INPUT_SIZE // stride
            assert outs[2 * i][n].shape == scores[stride].shape == (g * g, 80)
            assert outs[2 * i + 1][n].shape == regressions[stride].shape == (g * g, 44)
            np.testing.assert_allclose(outs[2 * i][n], scores[stride], atol=2e-5)  # probabilities
            np.testing.assert_allclose(outs[2 * i + 1][n], regressions[stride], atol=1e-4)  # logits, |x| < 40
        assert max(s[:, 0].max() for s in scores.values()) > 0.3  # a person is there: not a blank test


def test_a_graph_with_other_constants_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(DEFAULT_DETECTOR))
    relu = next(n for n in model.graph.node if n.op_type == "LeakyRelu")
    next(a for a in relu.attribute if a.name == "alpha").f = 0.2
    changed = tmp_path / "nanodet-alpha.onnx"
    onnx.save(model, str(changed))
    with pytest.raises(ValueError, match="alpha"):
        nanodet_from_onnx(changed)
    assert len(read_onnx_convs(DEFAULT_DETECTOR)) == 34


@pytest.fixture(scope="module")
def detectors() -> dict[str, NanoDetPersonDetector]:
    cfg = DetectorConfig(DEFAULT_DETECTOR, threads=1)
    return {
        "onnxruntime": NanoDetPersonDetector(replace(cfg, backend="onnxruntime")),
        "torch": NanoDetPersonDetector(replace(cfg, backend="torch")),
    }


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _assert_same_boxes(
    got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], score_atol: float
) -> None:
    """Same number of boxes, each wanted box matched by its own got box at IoU > 0.99, same scores.

    Matched by IoU rather than by rank: two near-equal scores may swap places in float16.
    """
    (boxes, scores), (want_boxes, want_scores) = got, want
    assert len(boxes) == len(want_boxes), (boxes, want_boxes)
    if len(boxes) == 0:
        return
    iou = _iou_matrix(want_boxes, boxes)
    j = iou.argmax(axis=1)
    assert len(set(j.tolist())) == len(j) and np.all(iou.max(axis=1) > 0.99), (boxes, want_boxes)
    np.testing.assert_allclose(scores[j], want_scores, atol=score_atol)


@pytest.mark.parametrize("name, tiles", [("astronaut", False), ("street", False), ("wide", True)])
def test_torch_and_onnxruntime_give_the_same_person_boxes(detectors, photos, name, tiles):
    image = photos[name]
    results = {}
    for backend, det in detectors.items():
        det.cfg = replace(det.cfg, tiles=tiles)
        results[backend] = det(image)
    assert detectors["torch"].wants_tiles(image.shape[1], image.shape[0], 1) == tiles
    want = results["onnxruntime"]
    assert len(want[0]) >= {"astronaut": 1, "street": 2, "wide": 1}[name]
    _assert_same_boxes(results["torch"], want, score_atol=1e-4)


def test_detect_batch_is_one_pass_and_equals_one_by_one(detectors, photos):
    det = detectors["torch"]
    det.cfg = replace(det.cfg, tiles=False)
    images = [photos["astronaut"], photos["street"], photos["wide"]]
    shared = det.network.shared  # type: ignore[attr-defined]
    before = shared.passes
    batched = det.detect_batch(images)
    assert shared.passes == before + 1
    for image, got in zip(images, batched):
        _assert_same_boxes(got, det(image), score_atol=1e-5)
    assert det.detect_batch([]) == []


def _wait_for(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError
        time.sleep(0.001)


@pytest.mark.parametrize("max_batch, expected_passes", [(16, [1, 7]), (4, [1, 4, 3])])
def test_shared_passes_serve_concurrent_calls_together(max_batch, expected_passes):
    """Seven calls arrive while a first pass runs: they share the next pass(es), each gets its own answer."""
    sizes: list[int] = []
    holder: dict[str, SharedPasses] = {}

    def run(images: np.ndarray) -> list:
        sizes.append(len(images))
        if len(sizes) == 1:  # hold the first pass until the others have queued behind it
            _wait_for(lambda: len(holder["shared"]._queue) == 7)
        return [int(im[0, 0, 0]) * 10 for im in images]

    shared = SharedPasses(run, max_batch)
    holder["shared"] = shared
    answers: dict[int, list] = {}

    def call(i: int) -> None:
        answers[i] = shared(np.full((1, 2, 2, 3), i, np.uint8))

    first = threading.Thread(target=call, args=(0,))
    first.start()
    _wait_for(lambda: len(sizes) == 1)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 8)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(10)
    assert answers == {i: [10 * i] for i in range(8)}
    assert sizes == expected_passes and shared.passes == len(expected_passes) and shared.images == 8
    assert not shared._busy and not shared._queue


def test_shared_passes_give_every_caller_the_error():
    gate = threading.Event()

    def run(images: np.ndarray) -> list:
        gate.wait(10)
        raise RuntimeError("device lost")

    shared = SharedPasses(run, 8)
    errors: list[str] = []

    def call() -> None:
        try:
            shared(np.zeros((1, 2, 2, 3), np.uint8))
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    _wait_for(lambda: len(shared._queue) == 2)
    gate.set()
    for t in threads:
        t.join(10)
    assert errors == ["device lost"] * 3
    assert not shared._busy  # the next call runs


def test_backend_setting_and_auto_choice(monkeypatch):
    assert resolve_backend("auto", "cuda") == resolve_backend("auto", "cuda:1") == "torch"
    assert resolve_backend("auto", "cpu") == "onnxruntime"
    assert resolve_backend("onnxruntime", "cuda:0") == "onnxruntime"
    settings = pytest.importorskip("service.settings")
    assert settings.DEFAULT_DETECTOR == DEFAULT_DETECTOR
    assert settings.Settings().detector_backend == "auto"
    monkeypatch.setenv("HEVITPOSE_DETECTOR_BACKEND", "torch")
    assert settings.Settings().detector_backend == "torch"
    monkeypatch.setenv("HEVITPOSE_DETECTOR_BACKEND", "tensorrt")
    with pytest.raises(ValueError):
        settings.Settings()


@pytest.mark.parametrize("setting, expected", [("auto", "onnxruntime"), ("torch", "torch")])
def test_the_service_builds_the_detector_its_setting_names(tmp_path, astronaut, setting, expected):
    pytest.importorskip("pydantic_settings")
    from _service_util import make_bundle

    from service.pose_service import PoseService
    from service.settings import Settings

    settings = Settings(weights=make_bundle(tmp_path), device="cpu", backend="torch", detector_backend=setting,
                        detector_threads=1, warmup=False)  # fmt: skip
    service = PoseService(settings)
    service.start()
    try:
        assert service.wait_ready(120), service.load_error
        assert service.detector is not None and service.detector.backend == expected
        boxes, _ = service.detector(astronaut)
        assert len(boxes) == 1
    finally:
        service.stop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float16_boxes_match_cpu_onnxruntime(detectors, photos):
    gpu = NanoDetPersonDetector(DetectorConfig(DEFAULT_DETECTOR, device="cuda"))
    assert gpu.backend == "torch" and gpu.providers == ["torch:cuda:float16"]
    cpu = detectors["onnxruntime"]
    cpu.cfg = replace(cpu.cfg, tiles=False)
    images = list(photos.values())
    for image, got in zip(images, gpu.detect_batch(images)):
        _assert_same_boxes(got, cpu(image), score_atol=5e-3)  # float16 activations
