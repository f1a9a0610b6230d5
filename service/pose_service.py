"""The service object behind the routes: loads the models, owns the pose worker, answers requests.

A request flows: decode (thread pool) -> detect (thread pool) -> crop (thread pool on a
CPU; the worker on a GPU) -> pose (the worker, batched with other requests) -> response.
The event loop only awaits; it never decodes, detects or runs the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.runtime import RuntimeConfig
from service import errors, imaging
from service.batching import DeadlineExceeded, MicroBatcher, QueueFull, Stopped
from service.detector import DetectorConfig, NanoDetPersonDetector, whole_image_box
from service.metrics import ServiceMetrics
from service.pose_model import PoseJob, PoseModel, PoseResult
from service.schemas import (
    ImageSize,
    Keypoint,
    ModelInfo,
    ModelRef,
    Person,
    PredictOptions,
    PredictResponse,
    Timings,
    TrackedPerson,
    check_boxes_inside,
)
from service.settings import Settings

log = logging.getLogger("service.pose_service")


@dataclass
class Prediction:
    """One image's answer, before it becomes JSON or a picture."""

    width: int
    height: int
    image: np.ndarray  # RGB, kept for /v1/render
    bboxes: np.ndarray  # (N, 4)
    bbox_scores: np.ndarray  # (N,)
    keypoints: np.ndarray  # (N, K, 2)
    scores: np.ndarray  # (N, K)
    timings_ms: dict[str, float]
    person_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,): see person_scores()


class PoseService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.model: PoseModel | None = None
        self.detector: NanoDetPersonDetector | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.load_error: str | None = None
        self.executor = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="cpu")
        self._loader: threading.Thread | None = None
        self._in_flight = 0  # images admitted and not yet answered

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load and warm up in the background, so /healthz answers while /readyz says 503."""
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready

    def _load(self) -> None:
        s = self.settings
        try:
            t0 = time.perf_counter()
            runtime = RuntimeConfig(device=s.device, backend=s.backend, dtype=s.dtype, threads=s.threads)
            self.model = PoseModel(
                s.weights, runtime, s.codec_overrides(), Path(s.runtime_cache) if s.runtime_cache else None
            )
            self.detector = NanoDetPersonDetector(
                DetectorConfig(
                    s.detector_path,
                    s.detector_score_threshold,
                    s.detector_nms_iou,
                    device=str(self.model.device),
                    backend=s.detector_backend,
                    threads=s.detector_threads,
                    letterbox=s.detector_letterbox,
                    tiles=s.detector_tiles,
                    tile_min_side=s.detector_tile_min_side,
                    tile_max_found=s.detector_tile_max_found,
                    tile_grid=s.detector_tile_grid,
                    tile_overlap=s.detector_tile_overlap,
                    tile_max_height=s.detector_tile_max_height,
                )  # fmt: skip
            )
            if s.warmup:
                self.model.warmup(s.max_batch_size)
                self.detector(np.zeros((64, 64, 3), np.uint8))
            self.batcher = MicroBatcher(
                self._run_batch, s.max_batch_size, s.max_wait_ms / 1000, s.queue_size, self.metrics
            )
            self.batcher.start()
            m = self.model
            self.metrics.model_info.labels(m.name, m.version, str(m.device), m.backend).set(1)
            self.metrics.update_gpu_memory(m.device)
            self.ready = True
            log.info(
                "model ready",
                extra={"model": m.name, "device": str(m.device), "backend": m.backend, "dtype": m.dtype,
                       "threads": m.runtime_choice.threads, "backend_chosen": m.runtime_choice.how,
                       "backend_choice_s": round(m.runtime_choice.seconds, 2),
                       "detector_providers": self.detector.providers, "load_s": round(time.perf_counter() - t0, 2)},
            )  # fmt: skip
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def stop(self) -> None:
        self.ready = False
        if self._loader is not None:
            self._loader.join(60)
        if self.batcher is not None:
            self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.model is not None:
            self.model.close()

    # ------------------------------------------------------------------ worker side

    def _run_batch(self, jobs: list[PoseJob]) -> list[PoseResult]:
        assert self.model is not None
        results = self.model.run_jobs(jobs, self.settings.max_batch_size, self.metrics.batch_size.observe)
        first = results[0]
        stage = self.metrics.stage_duration
        stage.labels("pose").observe(first.pose_s)
        stage.labels("postprocess").observe(first.postprocess_s)
        for result in results:
            stage.labels("crop").observe(result.crop_s)
        self.metrics.update_gpu_memory(self.model.device)
        return results

    # ------------------------------------------------------------------ request side

    def count_rejection(self, problem: errors.Problem) -> None:
        self.metrics.rejections.labels(problem.reason).inc()
        log.info("refused", extra={"status": problem.status, "reason": problem.reason, "detail": problem.detail})

    def check_ready(self) -> None:
        if not self.ready:
            raise errors.not_ready(f"the model failed to load: {self.load_error}" if self.load_error else
                                   "the model is still loading")  # fmt: skip

    async def run_in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _decode(self, data: bytes) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        image = imaging.decode(data, self.settings.max_pixels)
        return image, time.perf_counter() - t0

    def _boxes(self, image: np.ndarray, options: PredictOptions) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        if options.detector == "boxes":
            assert options.boxes is not None
            check_boxes_inside(options.boxes, w, h)
            if len(options.boxes) > options.max_persons:
                raise errors.invalid_field(f"boxes: {len(options.boxes)} boxes, max_persons is {options.max_persons}")
            boxes, scores = options.boxes, np.ones(len(options.boxes))
        elif options.detector == "whole_image":
            boxes, scores = whole_image_box(w, h), np.ones(1)
        else:
            assert self.detector is not None
            boxes, scores = self.detector(image, options.max_persons)
        return np.asarray(boxes, np.float64), np.asarray(scores, np.float64), time.perf_counter() - t0

    def _prepare(self, data: bytes, options: PredictOptions, deadline: float):
        """Everything before the pose worker, in one thread-pool slot."""
        if time.monotonic() > deadline:  # its client was answered 504 while this waited for a thread
            raise DeadlineExceeded("deadline passed before decoding")
        image, decode_s = self._decode(data)
        self.metrics.stage_duration.labels("decode").observe(decode_s)
        return self._prepare_decoded(image, options, deadline, decode_s)

    def _prepare_decoded(self, image: np.ndarray, options: PredictOptions, deadline: float, decode_s: float = 0.0):
        if time.monotonic() > deadline:
            raise DeadlineExceeded("deadline passed before detecting")
        boxes, box_scores, detect_s = self._boxes(image, options)
        if options.detector == "nanodet":
            self.metrics.stage_duration.labels("detect").observe(detect_s)
        assert self.model is not None
        job = self.model.prepare_job(image, boxes, options.flip_test, deadline) if len(boxes) else None
        return image, boxes, box_scores, job, {"decode": decode_s, "detect": detect_s}

    async def _prepare_nth(self, i: int, n: int, data: bytes, options: PredictOptions, deadline: float):
        try:
            return await self.run_in_pool(self._prepare, data, options, deadline)
        except errors.Problem as exc:
            if n > 1:
                exc.detail = f"images[{i}]: {exc.detail}"
            raise

    async def predict_many(self, images: list[bytes], options: list[PredictOptions]) -> list[Prediction]:
        """Predict several images as one unit of work: all answered, or one problem for all."""
        self.check_ready()
        assert self.batcher is not None and self.model is not None
        # Admission: a bounded number of images in flight, counted from arrival (not only once they
        # reach the pose queue), so an overload is refused at once instead of piling up in the
        # thread pool until deadlines pass. Only the event loop touches the counter.
        n = len(images)
        if self._in_flight + n > self.settings.queue_size:
            raise errors.queue_full(self.batcher.retry_after_s(self._in_flight))
        self._in_flight += n
        try:
            return await self._predict_admitted(images, options)
        finally:
            self._in_flight -= n

    async def _predict_admitted(self, images: list[bytes], options: list[PredictOptions]) -> list[Prediction]:
        assert self.batcher is not None and self.model is not None
        start = time.perf_counter()
        timeout = self.settings.request_timeout_s
        deadline = time.monotonic() + timeout
        jobs: list[PoseJob] = []
        try:
            async with asyncio.timeout(timeout):
                prepared = await asyncio.gather(
                    *(self._prepare_nth(i, len(images), data, opts, deadline)
                      for i, (data, opts) in enumerate(zip(images, options)))
                )  # fmt: skip
                jobs = [p[3] for p in prepared if p[3] is not None]
                if jobs:
                    try:
                        self.batcher.submit(jobs)
                    except QueueFull:
                        raise errors.queue_full(self.batcher.retry_after_s()) from None
                    self.metrics.queue_depth.set(self.batcher.depth)
                    pose_results = await asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs))
                else:
                    pose_results = []
        except TimeoutError:
            self.batcher.discard(jobs)
            raise errors.deadline(timeout) from None
        except DeadlineExceeded:
            raise errors.deadline(timeout) from None
        except Stopped:
            raise errors.not_ready("the service is shutting down") from None

        results = iter(pose_results)
        return [self._finish(p, None if p[3] is None else next(results), opts, start)
                for p, opts in zip(prepared, options)]  # fmt: skip

    def _finish(self, prepared, res: PoseResult | None, opts: PredictOptions, start: float) -> Prediction:
        assert self.model is not None
        image, boxes, box_scores, job, t = prepared
        if res is None:
            k = self.model.meta.num_keypoints
            res = PoseResult(np.zeros((0, k, 2)), np.zeros((0, k)))
        h, w = image.shape[:2]
        pred = Prediction(w, h, image, boxes, box_scores, res.keypoints, res.scores, {})
        pred.person_scores = person_scores(box_scores, res.scores, self.settings.person_keypoint_threshold)
        pred = _filter(pred, opts.min_score)
        self.metrics.persons_per_image.observe(len(pred.bboxes))
        pred.timings_ms = {
            "decode": t["decode"] * 1e3, "detect": t["detect"] * 1e3, "crop": res.crop_s * 1e3,
            "queue": res.queue_s * 1e3, "pose": res.pose_s * 1e3, "postprocess": res.postprocess_s * 1e3,
            "total": (time.perf_counter() - start) * 1e3,
        }  # fmt: skip
        return pred

    async def predict_frame(self, image: np.ndarray, options: PredictOptions, wait_for_room: bool = True) -> Prediction:
        """One decoded video or stream frame through the detector and the shared pose worker.

        ``wait_for_room``: when the pose queue is full, wait for room until the frame's deadline
        (a video: its frames are not refused half-way) instead of raising 503 (a live stream drops
        the frame). Cancelling the caller takes its job out of the queue.
        """
        self.check_ready()
        assert self.batcher is not None
        start = time.perf_counter()
        timeout = self.settings.request_timeout_s
        deadline = time.monotonic() + timeout
        job = None
        try:
            async with asyncio.timeout(timeout):
                prepared = await self.run_in_pool(self._prepare_decoded, image, options, deadline)
                job = prepared[3]
                res = None
                if job is not None:
                    while True:
                        try:
                            self.batcher.submit([job])
                            break
                        except QueueFull:
                            if not wait_for_room:
                                raise errors.queue_full(self.batcher.retry_after_s()) from None
                            await asyncio.sleep(0.01)
                    self.metrics.queue_depth.set(self.batcher.depth)
                    res = await asyncio.wrap_future(job.future)
        except TimeoutError:
            raise errors.deadline(timeout) from None
        except DeadlineExceeded:
            raise errors.deadline(timeout) from None
        except Stopped:
            raise errors.not_ready("the service is shutting down") from None
        finally:
            if job is not None and not job.future.done():
                self.batcher.discard([job])  # cancelled (the client left) or timed out
        return self._finish(prepared, res, options, start)

    def response(self, pred: Prediction) -> PredictResponse:
        """One image's ``/v1/predict`` body."""
        assert self.model is not None
        return PredictResponse(
            image=ImageSize(width=pred.width, height=pred.height),
            persons=self.persons(pred),
            model=ModelRef(name=self.model.name, version=self.model.version),
            timings_ms=Timings(**{k: round(v, 3) for k, v in pred.timings_ms.items()}),
        )

    def persons(self, pred: Prediction, track_ids: np.ndarray | None = None) -> list[Person]:
        """The persons of a prediction, rounded as the API answers them (2 decimals for pixels, 4
        for scores); :class:`TrackedPerson` with ``track_ids`` (one per person: video frames)."""
        assert self.model is not None
        names = self.model.meta.keypoint_names
        # Plain floats once, not per element: numpy scalars would make each round() slower.
        bboxes, bbox_scores = pred.bboxes.tolist(), pred.bbox_scores.tolist()
        keypoints, scores, person_scores = pred.keypoints.tolist(), pred.scores.tolist(), pred.person_scores.tolist()
        persons: list[Person] = []
        for i in range(len(bboxes)):
            fields = dict(
                bbox=[round(v, 2) for v in bboxes[i]],
                bbox_score=round(bbox_scores[i], 4),
                score=round(person_scores[i], 4),
                keypoints=[Keypoint(name=names[k], x=round(x, 2), y=round(y, 2), score=round(s, 4))
                           for k, ((x, y), s) in enumerate(zip(keypoints[i], scores[i]))],
            )  # fmt: skip
            persons.append(
                Person(**fields) if track_ids is None else TrackedPerson(**fields, track_id=int(track_ids[i]))
            )
        return persons

    def model_info(self) -> ModelInfo:
        m = self.model
        assert m is not None
        return ModelInfo(
            name=m.name, version=m.version, params=m.num_params, input_size=list(m.input_size),
            keypoint_names=list(m.meta.keypoint_names), skeleton=[list(p) for p in m.meta.skeleton],
            weights_sha256=m.weights_sha256, device=str(m.device), backend=m.backend, dtype=m.dtype,
            runtime=m.runtime_choice.as_json(), codec=m.codec.to_dict(), description=m.meta.description,
            metrics=m.meta.metrics,
        )  # fmt: skip


def person_scores(bbox_scores: np.ndarray, keypoint_scores: np.ndarray, threshold: float) -> np.ndarray:
    """A person's ``score``: box score x mean of its keypoint scores above ``threshold``.

    MMPose's ``bbox_keypoint`` rescoring (its CocoMetric, ``keypoint_score_thr`` 0.2): keypoints at
    or below the threshold do not count; a person with none above it scores 0.
    """
    keypoint_scores = np.asarray(keypoint_scores, np.float64)
    if keypoint_scores.size == 0:
        return np.zeros(len(bbox_scores))
    valid = keypoint_scores > threshold
    count = valid.sum(axis=1)
    mean = np.where(count > 0, (keypoint_scores * valid).sum(axis=1) / np.maximum(count, 1), 0.0)
    return np.asarray(bbox_scores, np.float64) * mean


def _filter(pred: Prediction, min_score: float) -> Prediction:
    if min_score <= 0 or len(pred.bboxes) == 0:
        return pred
    keep = pred.person_scores >= min_score
    pred.bboxes, pred.bbox_scores = pred.bboxes[keep], pred.bbox_scores[keep]
    pred.keypoints, pred.scores = pred.keypoints[keep], pred.scores[keep]
    pred.person_scores = pred.person_scores[keep]
    return pred
