"""Person boxes: NanoDet-m (COCO) through ONNX Runtime, or the client's boxes, or the whole image.

NanoDet's graph (see ``service/assets/NOTICE.md``) takes one 416x416 RGB image scaled to
[0, 1], and returns, per stride 8/16/32, class probabilities (1, g*g, 80) and a GFL box
distribution (1, g*g, 44): 4 sides x 11 bins. The expected bin index times the stride is the
distance from the cell centre to each side, in input pixels.

The image is letterboxed into the input (resized keeping its aspect ratio, centred, padded),
and boxes are mapped back through the same scale and offset (:class:`Letterbox`). With
``letterbox=False`` it is stretched to 416x416 instead (the service's behaviour before issue 10,
kept for ``bench/detector_eval.py``'s baseline). An optional second pass (``tiles``) runs the
network on overlapping tiles of a large image, each letterboxed in its own right, so that
people a few dozen pixels tall are seen at a larger scale; its boxes join the first pass's
before one NMS. Thresholds and their measurement: ``docs/service.md``, "Person detection".

Two backends run the same network (``DetectorConfig.backend``): ONNX Runtime on the ONNX file, or
PyTorch (``service/nanodet.py``, the same weights read from that file) on the pose model's device,
so that on a CUDA host detection runs on the GPU in the same process as the pose model, in float16
autocast, several images per forward pass. ``auto`` takes torch on CUDA and onnxruntime on a CPU
(where it is the faster). Both hand the same per-stride arrays to the same letterbox, decoding
and NMS below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
NUM_BINS = 11
PERSON = 0

# One image's network outputs: per stride, class probabilities (g*g, 80) and GFL logits (g*g, 44).
NetOutputs = tuple[dict[int, np.ndarray], dict[int, np.ndarray]]
Backend = Literal["auto", "onnxruntime", "torch"]


@dataclass(frozen=True)
class DetectorConfig:
    path: Path
    score_threshold: float = 0.2  # chosen by bench/detector_eval.py (docs/service.md)
    nms_iou: float = 0.4
    device: str = "cpu"  # the pose model's device: cpu, cuda, cuda:N
    backend: Backend = "auto"  # auto: torch on CUDA, onnxruntime on a CPU
    threads: int = 0  # onnxruntime intra-op threads (0: its default); torch shares the pose model's
    half: bool = True  # torch on CUDA: float16 autocast
    max_batch: int = 16  # torch: most letterboxed images in one forward pass
    letterbox: bool = True  # False: stretch to 416x416 (the old behaviour)
    pad_value: int = 0  # letterbox padding, per channel, 0..255
    tiles: bool = False  # second pass on tiles of large images
    tile_min_side: int = 640  # ... when the image's longer side is at least this
    tile_max_found: int = 100  # ... and the first pass found fewer persons than this
    tile_grid: int = 2  # tiles per side (tile_grid x tile_grid tiles)
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour
    tile_max_height: float = 0.3  # tile boxes taller than this fraction of the tile are left to the first pass


@dataclass(frozen=True)
class Letterbox:
    """Image -> network input: ``input = image * scale + offset`` per axis."""

    scale_x: float
    scale_y: float
    dx: float
    dy: float
    new_w: int  # size of the resized image inside the input
    new_h: int

    @staticmethod
    def fit(width: int, height: int, size: int = INPUT_SIZE, keep_ratio: bool = True) -> Letterbox:
        if not keep_ratio:
            return Letterbox(size / width, size / height, 0.0, 0.0, size, size)
        scale = size / max(width, height)
        new_w = min(size, max(1, int(round(width * scale))))
        new_h = min(size, max(1, int(round(height * scale))))
        # The scale actually applied by cv2.resize to (new_w, new_h): exact, also after rounding.
        dx, dy = (size - new_w) // 2, (size - new_h) // 2
        return Letterbox(new_w / width, new_h / height, float(dx), float(dy), new_w, new_h)

    def apply(self, image: np.ndarray, size: int = INPUT_SIZE, pad_value: int = 0) -> np.ndarray:
        resized = cv2.resize(image, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        if (self.new_w, self.new_h) == (size, size):
            return resized
        canvas = np.full((size, size, image.shape[2]), pad_value, image.dtype)
        x0, y0 = int(self.dx), int(self.dy)
        canvas[y0 : y0 + self.new_h, x0 : x0 + self.new_w] = resized
        return canvas

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) input pixels -> image pixels (not clipped)."""
        offset = np.array([self.dx, self.dy, self.dx, self.dy], np.float32)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], np.float32)
        return ((boxes - offset) / scale).astype(np.float32)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        offset = np.array([self.dx, self.dy, self.dx, self.dy], np.float32)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], np.float32)
        return (boxes * scale + offset).astype(np.float32)


def tile_windows(width: int, height: int, grid: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``grid x grid`` windows (x0, y0, x1, y1) covering the image, neighbours sharing ``overlap``."""

    def spans(n: int) -> list[tuple[int, int]]:
        tile = n / (grid - (grid - 1) * overlap)
        step = tile * (1 - overlap)
        out = []
        for i in range(grid):
            a = int(round(i * step))
            b = n if i == grid - 1 else int(round(i * step + tile))
            out.append((a, min(b, n)))
        return out

    return [(x0, y0, x1, y1) for y0, y1 in spans(height) for x0, x1 in spans(width)]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_gfl(
    scores: dict[int, np.ndarray], regressions: dict[int, np.ndarray], score_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (N, 4) in 416x416 input pixels and their scores, before NMS.

    ``scores[stride]`` is (g*g, 80), ``regressions[stride]`` is (g*g, 44); cells row-major.
    """
    all_boxes, all_scores = [], []
    bins = np.arange(NUM_BINS, dtype=np.float32)
    for stride in STRIDES:
        person = scores[stride][:, PERSON]
        cells = np.nonzero(person > score_threshold)[0]
        if cells.size == 0:
            continue
        g = INPUT_SIZE // stride
        cx = (cells % g + 0.5) * stride
        cy = (cells // g + 0.5) * stride
        logits = regressions[stride][cells].reshape(-1, 4, NUM_BINS)
        logits = logits - logits.max(axis=-1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=-1, keepdims=True)
        dist = (prob @ bins) * stride  # (n, 4): left, top, right, bottom
        all_boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1))
        all_scores.append(person[cells])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32)


def resolve_backend(backend: Backend, device: str) -> Literal["onnxruntime", "torch"]:
    if backend == "auto":
        return "torch" if device.startswith("cuda") else "onnxruntime"
    return backend


class OnnxRuntimeNetwork:
    """The ONNX file in onnxruntime: letterboxed uint8 images (N, 416, 416, 3) -> outputs per image.

    One run per image: the graph's reshapes fix its batch at 1. With a CUDA device and
    onnxruntime-gpu installed, the CUDA provider runs it (``backend=onnxruntime`` on a GPU host).
    """

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers: list[str] = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        # Output names are not in stride order: tell them apart by shape.
        self.outputs: list[tuple[str, str, int]] = []
        for out in self.session.get_outputs():
            cells, channels = out.shape[1], out.shape[2]
            stride = INPUT_SIZE // int(round(cells**0.5))
            kind = "scores" if channels == 80 else "regression"
            if channels not in (80, 4 * NUM_BINS) or stride not in STRIDES:
                raise ValueError(f"unexpected NanoDet output {out.name} {out.shape}")
            self.outputs.append((out.name, kind, stride))

    def __call__(self, images: np.ndarray) -> list[NetOutputs]:
        results = []
        for image in images:
            x = (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
            values = self.session.run([name for name, _, _ in self.outputs], {self.input_name: x})
            scores, regressions = {}, {}
            for (_, kind, stride), value in zip(self.outputs, values):
                (scores if kind == "scores" else regressions)[stride] = value[0]
            results.append((scores, regressions))
        return results


@dataclass(eq=False)
class _Call:
    images: np.ndarray
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: list | None = None
    error: BaseException | None = None


class SharedPasses:
    """Concurrent calls share forward passes: images detected at the same moment go through together.

    The service detects in its thread pool, one image per thread (a batch request's images, a
    video's pipelined frames, other clients'). No call waits for company: the one that finds the
    network idle runs at once, taking every call queued by then (up to ``max_batch`` images);
    calls that arrive during its pass queue up, and when it ends the first of them runs the next
    pass with all of them. So a pass never waits, and on a GPU one pass serves many images.
    """

    def __init__(self, run: Callable[[np.ndarray], list], max_batch: int) -> None:
        self._run = run
        self.max_batch = max(1, max_batch)
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._busy = False
        self.passes = 0  # forward passes run so far
        self.images = 0  # images they held

    def __call__(self, images: np.ndarray) -> list:
        call = _Call(images)
        with self._lock:
            self._queue.append(call)
            lead = not self._busy
            self._busy = True
        if not lead:
            call.wake.wait()  # set when another pass served this call, or when it is this call's turn
        if not call.done:
            self._lead()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _lead(self) -> None:
        with self._lock:  # this call is the queue's head: it is always in its own pass
            batch = [self._queue.pop(0)]
            n = len(batch[0].images)
            while self._queue and n + len(self._queue[0].images) <= self.max_batch:
                batch.append(self._queue.pop(0))
                n += len(batch[-1].images)
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([c.images for c in batch])
            outputs: list = []
            for i in range(0, len(images), self.max_batch):  # one call may hold more (a large image's tiles)
                outputs += self._run(images[i : i + self.max_batch])
                self.passes += 1
            self.images += len(images)
            k = 0
            for c in batch:
                c.result = outputs[k : k + len(c.images)]
                k += len(c.images)
        except BaseException as exc:  # every call of the pass gets the error, none hangs
            for c in batch:
                c.error = exc
        for c in batch:
            c.done = True
        with self._lock:
            if self._queue:
                self._queue[0].wake.set()  # not done: it runs the next pass
            else:
                self._busy = False
        for c in batch[1:]:
            c.wake.set()


class TorchNetwork:
    """``service/nanodet.py`` on a torch device: letterboxed uint8 images (N, 416, 416, 3) -> outputs.

    The images travel to the device as uint8 (a quarter of float32's bytes) and are scaled to
    [0, 1] there. On CUDA: channels_last and float16 autocast, like the pose model, on the same
    device and default stream. Calls from several threads share passes (:class:`SharedPasses`).
    """

    def __init__(self, path: Path, device: str = "cpu", half: bool = True, max_batch: int = 16) -> None:
        import torch

        from service.nanodet import nanodet_from_onnx

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.half = half and self.cuda  # float16 on a CPU is slow, and bfloat16 too coarse for the scores
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.model = nanodet_from_onnx(path).to(self.device, memory_format=self.memory_format)
        self.providers = [f"torch:{self.device}" + (":float16" if self.half else ":float32")]
        self.shared = SharedPasses(self.forward, max_batch)

    def __call__(self, images: np.ndarray) -> list[NetOutputs]:
        return self.shared(images)

    def forward(self, images: np.ndarray) -> list[NetOutputs]:
        """One pass over all ``images``, whatever their number."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=self.memory_format)
            with torch.autocast("cuda", torch.float16, enabled=self.half):
                outs = self.model(x)
            outs = [o.float().cpu().numpy() for o in outs]
        return [
            ({s: outs[2 * i][n] for i, s in enumerate(STRIDES)}, {s: outs[2 * i + 1][n] for i, s in enumerate(STRIDES)})
            for n in range(len(images))
        ]


class NanoDetPersonDetector:
    """Callable: RGB uint8 (H, W, 3) -> boxes (N, 4) image pixels, scores (N,), best first.

    :meth:`detect_batch` takes several images and runs their first passes as one batch.
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self.backend = resolve_backend(cfg.backend, cfg.device)
        self.network: Callable[[np.ndarray], list[NetOutputs]]
        if self.backend == "torch":
            self.network = TorchNetwork(cfg.path, cfg.device, cfg.half, cfg.max_batch)
        elif self.backend == "onnxruntime":
            self.network = OnnxRuntimeNetwork(cfg.path, cfg.device, cfg.threads)
        else:
            raise ValueError(f"unknown detector backend {cfg.backend!r}")
        self.providers: list[str] = self.network.providers  # type: ignore[attr-defined]

    def _passes(self, images: Sequence[np.ndarray], threshold: float) -> list[tuple[np.ndarray, np.ndarray, Letterbox]]:
        """One network pass per image, all in one call: candidate boxes (input pixels) and scores before NMS."""
        lbs = [Letterbox.fit(im.shape[1], im.shape[0], INPUT_SIZE, self.cfg.letterbox) for im in images]
        batch = np.stack([lb.apply(im, INPUT_SIZE, self.cfg.pad_value) for lb, im in zip(lbs, images)])
        return [(*decode_gfl(scores, regressions, threshold), lb)
                for (scores, regressions), lb in zip(self.network(batch), lbs)]  # fmt: skip

    def wants_tiles(self, width: int, height: int, found: int) -> bool:
        c = self.cfg
        return c.tiles and c.tile_grid > 1 and max(width, height) >= c.tile_min_side and found < c.tile_max_found

    def _tile_candidates(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (image pixels) and scores from every tile, after each tile's own NMS.

        A box touching a tile edge that lies inside the image is dropped: it is a person cut by
        the tile, whom the first pass or a neighbouring tile sees whole. So is a box taller than
        ``tile_max_height`` of the tile: the tiles are there for small people, and a large one is
        seen whole by the first pass (a tile sees only part of them, and that part is a false box).
        """
        h, w = image.shape[:2]
        windows = tile_windows(w, h, self.cfg.tile_grid, self.cfg.tile_overlap)
        passes = self._passes([image[y0:y1, x0:x1] for x0, y0, x1, y1 in windows], self.cfg.score_threshold)
        all_boxes, all_scores = [], []
        for (x0, y0, x1, y1), (boxes, scores, lb) in zip(windows, passes):
            keep = nms(boxes, scores, self.cfg.nms_iou)
            boxes, scores = lb.to_image(boxes[keep]), scores[keep]
            tw, th = x1 - x0, y1 - y0
            margin = 2.0
            cut = np.zeros(len(boxes), bool)
            if x0 > 0:
                cut |= boxes[:, 0] <= margin
            if y0 > 0:
                cut |= boxes[:, 1] <= margin
            if x1 < w:
                cut |= boxes[:, 2] >= tw - margin
            if y1 < h:
                cut |= boxes[:, 3] >= th - margin
            cut |= boxes[:, 3] - boxes[:, 1] > self.cfg.tile_max_height * th
            boxes = boxes[~cut] + np.array([x0, y0, x0, y0], np.float32)
            all_boxes.append(boxes)
            all_scores.append(scores[~cut])
        return np.concatenate(all_boxes), np.concatenate(all_scores)

    def _finish(
        self, image: np.ndarray, boxes: np.ndarray, box_scores: np.ndarray, lb: Letterbox, max_persons: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One image's first-pass candidates -> its final boxes (NMS, back to the image, tiles, clip)."""
        h, w = image.shape[:2]
        keep = nms(boxes, box_scores, self.cfg.nms_iou)  # in input pixels, as NanoDet does
        boxes, box_scores = lb.to_image(boxes[keep]), box_scores[keep]
        if self.wants_tiles(w, h, len(keep)):
            tile_boxes, tile_scores = self._tile_candidates(image)
            boxes = np.concatenate([boxes, tile_boxes])
            box_scores = np.concatenate([box_scores, tile_scores])
            keep = nms(boxes, box_scores, self.cfg.nms_iou)  # in image pixels
            boxes, box_scores = boxes[keep], box_scores[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        boxes, box_scores = boxes[valid], box_scores[valid]
        if max_persons is not None:
            boxes, box_scores = boxes[:max_persons], box_scores[:max_persons]
        return boxes, box_scores

    def detect_batch(
        self, images: Sequence[np.ndarray], max_persons: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`__call__` for several images, their first passes in one network call."""
        if not images:
            return []
        firsts = self._passes(images, self.cfg.score_threshold)
        return [self._finish(image, *first, max_persons) for image, first in zip(images, firsts)]

    def __call__(self, image: np.ndarray, max_persons: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.detect_batch([image], max_persons)[0]


def whole_image_box(width: int, height: int) -> np.ndarray:
    return np.array([[0.0, 0.0, float(width), float(height)]], np.float32)
