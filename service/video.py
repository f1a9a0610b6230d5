"""Frames of a video or a live stream: poses with track ids, optional smoothing, detection every N frames.

A :class:`PoseSession` is the state of one video or one WebSocket connection: its tracker, its
smoothers and the previous frame's persons. :class:`VideoSource` reads an uploaded video (written
to a temporary file: OpenCV's FFmpeg reads from a path) one frame at a time, refusing what breaks
a limit before the work starts. :func:`video_frames` drives a source through a session and the
shared pose worker, a few frames in flight at once, and yields one frame's answer at a time.
:class:`Mp4Writer` writes the drawn frames of ``/v1/render/video`` to a temporary MP4 file.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from service import errors, imaging
from service.pose_service import PoseService, Prediction, _filter, person_scores
from service.schemas import PredictOptions, TrackedPerson, VideoFrame, make_options
from service.smoothing import TrackSmoother
from service.tracking import Tracker, TrackerConfig, keypoint_box

COPY_CHUNK = 1 << 20
# H.264 where this OpenCV's FFmpeg has an encoder for it (builds with libx264 or openh264), else
# MPEG-4 Part 2, which every FFmpeg build encodes (pip's opencv-python wheels have no H.264 encoder).
MP4_CODECS = ("avc1", "mp4v")
DEFAULT_FPS = 25.0  # of a rendered video whose source declares no frame rate


@dataclass(frozen=True)
class SessionOptions:
    predict: PredictOptions
    detect_every: int = 1  # run the detector on every N-th processed frame, track in between
    smooth: bool = False


def session_options(service: PoseService, detector: str | None, flip_test: bool | None, min_score: float,
                    max_persons: int | None, detect_every: int, smooth: bool) -> SessionOptions:  # fmt: skip
    """A video's or stream's options; 422 when they clash. ``HEVITPOSE_DETECTOR=boxes`` means
    NanoDet here: a video has no client boxes."""
    s = service.settings
    predict = make_options(detector, None, flip_test, min_score, max_persons, "nanodet" if s.detector == "boxes"
                           else s.detector, s.flip_test, s.max_persons)  # fmt: skip
    return SessionOptions(predict, detect_every, smooth)


@dataclass
class Plan:
    options: PredictOptions
    track_ids: list[int] | None = None  # set when the boxes came from the tracks (no detector)
    box_scores: np.ndarray | None = None


class PoseSession:
    def __init__(self, service: PoseService, options: SessionOptions, source: str) -> None:
        s = service.settings
        self.service = service
        self.source = source
        self.tracker = Tracker(
            TrackerConfig(high_score=s.track_high_score, low_score=s.track_low_score, new_score=s.track_high_score,
                          match_iou=s.track_match_iou, max_lost=s.track_max_lost_frames)
        )  # fmt: skip
        self.smoother = TrackSmoother(s.smooth_min_cutoff, s.smooth_beta, s.smooth_keypoint_threshold)
        self.options = options
        self.started = 0  # frames planned
        self.previous: list[tuple[int, np.ndarray, np.ndarray, float]] = []  # id, keypoints, scores, bbox score

    def next_is_detector_frame(self) -> bool:
        opts = self.options
        return opts.predict.detector != "nanodet" or self.started % opts.detect_every == 0

    def plan(self, width: int, height: int) -> Plan:
        """The next frame's boxes: the detector's, or (between detector frames) each tracked
        person's box from their keypoints in the previous frame, moved by their velocity."""
        detector_frame = self.next_is_detector_frame()
        self.started += 1
        if detector_frame or not self.previous:
            return Plan(self.options.predict)
        threshold = self.service.settings.smooth_keypoint_threshold
        ids, boxes, scores = [], [], []
        for tid, kps, kp_scores, bbox_score in self.previous:
            box = keypoint_box(kps, kp_scores, threshold, width, height)
            if box is None:
                continue
            v = self.tracker.velocity_of(tid)
            box = box + np.array([v[0], v[1], v[0], v[1]])
            box[[0, 2]] = box[[0, 2]].clip(0, width)
            box[[1, 3]] = box[[1, 3]].clip(0, height)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            ids.append(tid), boxes.append(box), scores.append(bbox_score)
        if not boxes:
            return Plan(self.options.predict)
        opts = replace(self.options.predict, detector="boxes", boxes=np.array(boxes), min_score=0.0)
        return Plan(opts, ids, np.array(scores))

    def finish(self, pred: Prediction, plan: Plan, t: float) -> list[TrackedPerson]:
        """Track ids (and smoothing) for one frame's prediction, in frame order; the persons answered."""
        before = self.tracker.started
        if plan.track_ids is None:
            ids = self.tracker.update(pred.bboxes, pred.bbox_scores)
        else:
            ids = np.array(plan.track_ids, np.int64)
            pred.bbox_scores = plan.box_scores
            thr = self.service.settings.person_keypoint_threshold
            pred.person_scores = person_scores(pred.bbox_scores, pred.scores, thr)
            self.tracker.propagate(plan.track_ids, pred.bboxes)
            keep = pred.person_scores >= self.options.predict.min_score
            pred = _filter(pred, self.options.predict.min_score)
            ids = ids[keep] if self.options.predict.min_score > 0 else ids
        if self.tracker.started > before:
            self.service.metrics.tracks_started.labels(self.source).inc(self.tracker.started - before)
        keep = ids >= 0
        raw_kps, scores = pred.keypoints[keep], pred.scores[keep]
        pred.bboxes, pred.bbox_scores = pred.bboxes[keep], pred.bbox_scores[keep]
        pred.person_scores, pred.scores = pred.person_scores[keep], scores
        ids = ids[keep]
        self.previous = [(int(i), k, s, float(b)) for i, k, s, b in zip(ids, raw_kps, scores, pred.bbox_scores)]
        if self.options.smooth:
            heights = pred.bboxes[:, 3] - pred.bboxes[:, 1]
            pred.keypoints = np.stack([self.smoother(int(i), k, s, t, h) for i, k, s, h in
                                       zip(ids, raw_kps, scores, heights)]) if len(ids) else raw_kps  # fmt: skip
        else:
            pred.keypoints = raw_kps
        return self.service.persons(pred, ids)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- reading videos


def spool_upload(file, suffix: str, limit: int) -> Path:
    """Copy an upload (a file object) to a named temporary file in 1 MiB chunks."""
    fd, name = tempfile.mkstemp(prefix="hevitpose-video-", suffix=suffix)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := file.read(COPY_CHUNK):
                if written == 0 and (fmt := imaging.sniff_format(chunk)) is not None:
                    # FFmpeg would read it as a one-frame video; it is an image: say where it goes
                    raise errors.unsupported_media_type(f"this is a {fmt.upper()} image, not a video: "
                                                        "send it to /v1/predict")  # fmt: skip
                written += len(chunk)
                if written > limit:
                    raise errors.too_large(f"the video exceeds {limit} bytes (HEVITPOSE_VIDEO_MAX_BYTES)")
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    if written == 0:
        os.unlink(name)
        raise errors.invalid_video("the video is empty (0 bytes)")
    return Path(name)


class VideoSource:
    """An opened video file: its size, rate and frames, read one at a time (not thread-safe:
    one read at a time). Opening reads the first frame, so a video without one is refused
    before any answer starts. Deletes the file when closed."""

    def __init__(self, path: Path, settings, every_n_frames: int = 1, max_frames: int | None = None) -> None:
        self.path = path
        self.every = every_n_frames
        self.max_pixels = settings.video_max_pixels
        self.limit_frames = settings.video_max_frames
        self.limit_seconds = settings.video_max_seconds
        self.max_frames = max_frames
        self.lock = threading.Lock()
        self.closed = False
        self.cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        cap = self.cap
        if not cap.isOpened():
            raise errors.unsupported_media_type(
                "not a video this server can open (unknown container or codec, or not a video at all)"
            )
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else 0.0
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._check_pixels(self.width, self.height)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared_frames = int(count) if math.isfinite(count) and count > 0 else 0
        if self.declared_frames:
            to_read = self.declared_frames
            if self.max_frames is not None:
                to_read = min(to_read, self.max_frames * self.every)
            processed = math.ceil(to_read / self.every)
            if processed > self.limit_frames:
                raise errors.too_large(
                    f"the video has {processed} frames to process (every_n_frames={self.every}), at most "
                    f"{self.limit_frames} (HEVITPOSE_VIDEO_MAX_FRAMES); send max_frames or a larger every_n_frames"
                )
            if self.fps and to_read / self.fps > self.limit_seconds:
                raise errors.too_large(
                    f"the video is {to_read / self.fps:.1f} s long, at most {self.limit_seconds:g} s "
                    "(HEVITPOSE_VIDEO_MAX_SECONDS); send max_frames"
                )
        self.index = -1  # of the last frame decoded or skipped
        self.returned = 0
        self._first = self._read()
        if self._first is None:
            raise errors.invalid_video(
                "the video has no frame that decodes (empty, truncated before its first frame, or corrupt)"
            )
        if not self.width or not self.height:
            self.height, self.width = self._first[2].shape[:2]

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise errors.too_large(
                f"the video is {width}x{height}, more than {self.max_pixels} pixels (HEVITPOSE_VIDEO_MAX_PIXELS)"
            )

    def _read(self) -> tuple[int, float, np.ndarray] | None:
        if self.max_frames is not None and self.returned >= self.max_frames:
            return None
        while (self.index + 1) % self.every != 0:
            if not self.cap.grab():
                self._check_complete()
                return None
            self.index += 1
        ok, frame = self.cap.read()
        if not ok or frame is None:
            self._check_complete()
            return None
        self.index += 1
        self.returned += 1
        h, w = frame.shape[:2]
        self._check_pixels(w, h)
        if self.returned > self.limit_frames:
            raise errors.too_large(f"the video has more than {self.limit_frames} frames to process "
                                   "(HEVITPOSE_VIDEO_MAX_FRAMES; its header declared fewer)")  # fmt: skip
        t = self.index / self.fps if self.fps else self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
        if t > self.limit_seconds:
            raise errors.too_large(f"the video is longer than {self.limit_seconds:g} s (HEVITPOSE_VIDEO_MAX_SECONDS)")
        return self.index, float(t), cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def _check_complete(self) -> None:
        """At the end of the stream: far fewer frames than the header declared means the file
        was cut (containers' counts can be estimates, hence the tolerance)."""
        n, seen = self.declared_frames, self.index + 1
        if n and seen < n - max(2, int(0.05 * n)):
            raise errors.invalid_video(f"the video is truncated or corrupt: {seen} of the {n} frames its header "
                                       "declares decode")  # fmt: skip

    def read(self) -> tuple[int, float, np.ndarray] | None:
        """The next frame to process: (index in the video, time in s, RGB image), or None at the end."""
        with self.lock:
            if self._first is not None:
                first, self._first = self._first, None
                return first
            if self.closed:
                return None
            return self._read()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.cap.release()
            self.path.unlink(missing_ok=True)


async def video_frames(
    service: PoseService, source: VideoSource, session: PoseSession, with_images: bool = False
) -> AsyncIterator[tuple[VideoFrame, np.ndarray | None]]:
    """Answers for the frames of ``source``, in order, each with the frame itself (RGB, for drawing
    on) with ``with_images``, else ``None``.

    Frames whose boxes come from the detector are pipelined (up to ``HEVITPOSE_VIDEO_PIPELINE_DEPTH``
    in flight, so they ride in the pose worker's batches together); a frame whose boxes come from
    the previous frame's keypoints waits for it. Closing the generator (the client left) cancels the
    frames in flight, takes their jobs out of the pose queue and closes the source.
    """
    depth = service.settings.video_pipeline_depth
    metrics = service.metrics
    pending: collections.deque = collections.deque()
    metrics.active_streams.labels("video").inc()

    async def complete(item) -> tuple[VideoFrame, np.ndarray | None]:
        index, t, plan, task, t0 = item
        pred = await task
        persons = session.finish(pred, plan, t)
        metrics.frames.labels("video").inc()
        metrics.frame_duration.labels("video").observe(time.perf_counter() - t0)
        return VideoFrame(index=index, time_s=round(t, 4), persons=persons), pred.image if with_images else None

    try:
        while True:
            item = await service.run_in_pool(source.read)
            if item is None:
                break
            index, t, image = item
            t0 = time.perf_counter()
            if not session.next_is_detector_frame():
                while pending:
                    yield await complete(pending.popleft())
            h, w = image.shape[:2]
            plan = session.plan(w, h)
            task = asyncio.ensure_future(service.predict_frame(image, plan.options))
            pending.append((index, t, plan, task, t0))
            while pending and (len(pending) >= depth or pending[0][3].done()):
                yield await complete(pending.popleft())
        while pending:
            yield await complete(pending.popleft())
    finally:
        # No awaits here: inside a cancelled scope (the client left) each would be cancelled again.
        for item in pending:
            item[3].add_done_callback(_retrieve)
            item[3].cancel()  # its finally takes the job out of the pose queue
        metrics.active_streams.labels("video").dec()
        service.executor.submit(source.close)  # after a read still running in the pool (the lock)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


# ---------------------------------------------------------------------------- writing videos


@functools.cache
def mp4_codec() -> str:
    """The first of :data:`MP4_CODECS` that OpenCV's FFmpeg writer encodes. Probed once per process:
    a codec that fails logs FFmpeg's errors on every try."""
    for codec in MP4_CODECS:
        fd, name = tempfile.mkstemp(prefix="hevitpose-probe-", suffix=".mp4")
        os.close(fd)
        try:
            writer = cv2.VideoWriter(name, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), DEFAULT_FPS, (64, 64))
            opened = writer.isOpened()
            if opened:
                writer.write(np.zeros((64, 64, 3), np.uint8))
            writer.release()
            if opened and os.path.getsize(name) > 0:
                return codec
        finally:
            os.unlink(name)
    return MP4_CODECS[-1]


class Mp4Writer:
    """An MP4 written frame by frame to a temporary file (``hevitpose-render-*.mp4``), so a long
    video is never held in memory.

    4:2:0 video needs even sizes, so an odd width or height loses its last column or row (done here,
    not by the encoder's own silent rounding, so the size is known before the first frame). A frame
    of another size than the first (a stream that changes resolution) is scaled to it. Writes,
    :meth:`finish` and :meth:`discard` take a lock: a discard from a request that was cancelled
    waits for a write still running in the thread pool instead of releasing the encoder under it.
    """

    def __init__(self, fps: float, width: int, height: int) -> None:
        self.fps = fps
        self.width, self.height = max(2, width - width % 2), max(2, height - height % 2)
        self.frames = 0
        self.lock = threading.Lock()
        self.closed = False
        fd, name = tempfile.mkstemp(prefix="hevitpose-render-", suffix=".mp4")
        os.close(fd)
        self.path = Path(name)
        self.codec = mp4_codec()
        self.writer = self._open(self.codec)
        if not self.writer.isOpened() and self.codec != MP4_CODECS[-1]:  # e.g. a size the H.264 encoder refuses
            self.codec = MP4_CODECS[-1]
            self.writer = self._open(self.codec)
        if not self.writer.isOpened():
            self.path.unlink(missing_ok=True)
            raise RuntimeError(f"OpenCV's FFmpeg cannot write a {self.width}x{self.height} {self.codec} MP4")

    def _open(self, codec: str) -> cv2.VideoWriter:
        size = (self.width, self.height)
        return cv2.VideoWriter(str(self.path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), self.fps, size)

    def write(self, rgb: np.ndarray) -> None:
        frame = rgb[: self.height, : self.width]
        if frame.shape[:2] != (self.height, self.width):
            frame = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        with self.lock:
            if self.closed:
                return
            self.writer.write(bgr)
            self.frames += 1

    def finish(self) -> Path:
        """Close the file (an MP4's index is written last) and hand it over; the caller deletes it."""
        with self.lock:
            self.closed = True
            self.writer.release()
        return self.path

    def discard(self) -> None:
        with self.lock:
            self.closed = True
            self.writer.release()
            self.path.unlink(missing_ok=True)
