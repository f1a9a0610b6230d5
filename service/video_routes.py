"""Routes for videos and live streams: ``POST /v1/predict/video`` (JSON or NDJSON),
``POST /v1/render/video`` (an MP4 with the poses drawn), ``WS /v1/stream``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as PydanticField
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service import coco_format, errors, imaging, render
from service.pose_service import PoseService
from service.schemas import PROBLEM_RESPONSES, make_options
from service.video import (
    DEFAULT_FPS,
    Mp4Writer,
    PoseSession,
    SessionOptions,
    VideoSource,
    spool_upload,
    video_frames,
)

router = APIRouter()

NDJSON = "application/x-ndjson"
CLIENT_CLOSED = 499  # nginx's status for "the client left before the answer": logged and counted, never seen

VideoDetector = Literal["nanodet", "whole_image"]

# Form fields shared by /v1/predict/video and /v1/render/video.
VideoField = Annotated[
    UploadFile, File(description="a video OpenCV's FFmpeg reads: MP4/H.264, AVI/MJPEG, WebM, ...")
]
EveryNField = Annotated[int, Form(ge=1, le=10_000, description="process every N-th frame")]
MaxFramesField = Annotated[int | None, Form(ge=1, description="process at most this many frames")]
DetectEveryField = Annotated[
    int, Form(ge=1, le=10_000, description="run the detector on every N-th processed frame, track in between")
]
SmoothField = Annotated[bool, Form(description="One Euro smoothing of each track's keypoints")]
VideoDetectorField = Annotated[VideoDetector | None, Form(description="nanodet (default) or whole_image")]
FlipField = Annotated[bool | None, Form(description="average with the mirrored crops")]
MinScoreField = Annotated[float, Form(ge=0, le=1, description="drop persons whose score is lower")]
MaxPersonsField = Annotated[int | None, Form(ge=1, description="at most this many persons per frame")]
FormatField = Annotated[Literal["json", "coco"], Form(
    description="json (default), or coco: COCO keypoint results, image_id = the frame's index")]  # fmt: skip


def _service(request: Request) -> PoseService:
    return request.app.state.service


def session_options(service: PoseService, detector, flip_test, min_score: float, max_persons, detect_every: int,
                    smooth: bool) -> SessionOptions:  # fmt: skip
    s = service.settings
    predict = make_options(detector, None, flip_test, min_score, max_persons, "nanodet" if s.detector == "boxes"
                           else s.detector, s.flip_test, s.max_persons)  # fmt: skip
    return SessionOptions(predict, detect_every, smooth)


async def open_video(service: PoseService, video: UploadFile, every_n_frames: int, max_frames: int | None):
    suffix = Path(video.filename or "").suffix.lower()[:8] or ".bin"
    path = await service.run_in_pool(spool_upload, video.file, suffix, service.settings.video_max_bytes)
    return await service.run_in_pool(VideoSource, path, service.settings, every_n_frames, max_frames)


@router.post(
    "/v1/predict/video",
    summary="Keypoints with track ids for the frames of a video (JSON, or NDJSON one frame per line)",
    responses={**PROBLEM_RESPONSES, 200: {"content": {"application/json": {}, NDJSON: {}}}},
)
async def predict_video(
    request: Request,
    video: VideoField,
    every_n_frames: EveryNField = 1,
    max_frames: MaxFramesField = None,
    detect_every: DetectEveryField = 1,
    smooth: SmoothField = False,
    detector: VideoDetectorField = None,
    flip_test: FlipField = None,
    min_score: MinScoreField = 0.0,
    max_persons: MaxPersonsField = None,
    format: FormatField = "json",
) -> Response:
    service = _service(request)
    options = session_options(service, detector, flip_test, min_score, max_persons, detect_every, smooth)
    service.check_ready()
    coco = format == "coco"
    if coco:
        coco_format.check_keypoints(service.model.meta.keypoint_names)
    source = await open_video(service, video, every_n_frames, max_frames)
    session = PoseSession(service, options, "video")
    frames = video_frames(service, source, session)
    head = {"fps": round(source.fps, 4), "width": source.width, "height": source.height}
    # On every answer: the COCO ones (a bare list) have nowhere else to say them.
    headers = {"X-Video-FPS": str(head["fps"]), "X-Video-Width": str(source.width),
               "X-Video-Height": str(source.height)}  # fmt: skip
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_ndjson(frames, request, coco), media_type=NDJSON, headers=headers)
    out = []
    try:
        async for frame in frames:
            if coco:  # one list over the whole video, as a COCO results file is
                out.extend(coco_format.entries(frame["persons"], frame["index"]))
            else:
                out.append(frame)
            if await request.is_disconnected():
                break  # nobody to answer: stop decoding and free the frames in flight
    finally:
        await frames.aclose()
    return JSONResponse(out if coco else {**head, "frames": out}, headers=headers)


async def _ndjson(frames, request: Request, coco: bool = False):
    """One JSON line per frame (with ``coco``, the list of that frame's entries, ``[]`` for a frame
    without persons, so that every processed frame still shows); a problem that happens after the
    answer started becomes a last line ``{"error": {problem}}`` (the status is already 200)."""
    try:
        async for frame in frames:
            line = coco_format.entries(frame["persons"], frame["index"]) if coco else frame
            yield json.dumps(line, separators=(",", ":")) + "\n"
    except errors.Problem as exc:
        service = _service(request)
        service.count_rejection(exc)
        body = json.loads(errors.problem_response(exc, getattr(request.state, "request_id", None)).body)
        yield json.dumps({"error": body}) + "\n"
    finally:
        await frames.aclose()


# ---------------------------------------------------------------------------- POST /v1/render/video


class TempFileResponse(FileResponse):
    """A file response that deletes its file once sent, or once sending failed. Not a background
    task alone: servers of ASGI 2.4 raise on a send to a client that left, which skips it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            Path(self.path).unlink(missing_ok=True)


@router.post(
    "/v1/render/video",
    summary="The video with skeletons, boxes and track ids drawn (MP4: H.264, or MPEG-4 Part 2 where "
            "the server has no H.264 encoder; X-Video-Codec says which)",
    responses={**PROBLEM_RESPONSES, 200: {"content": {"video/mp4": {}}}},
)  # fmt: skip
async def render_video(
    request: Request,
    video: VideoField,
    every_n_frames: EveryNField = 1,
    max_frames: MaxFramesField = None,
    detect_every: DetectEveryField = 1,
    smooth: SmoothField = False,
    detector: VideoDetectorField = None,
    flip_test: FlipField = None,
    min_score: MinScoreField = 0.0,
    max_persons: MaxPersonsField = None,
) -> Response:
    service = _service(request)
    options = session_options(service, detector, flip_test, min_score, max_persons, detect_every, smooth)
    service.check_ready()
    source = await open_video(service, video, every_n_frames, max_frames)
    # The processed frames only, at the rate that keeps the video's duration.
    fps = (source.fps or DEFAULT_FPS) / every_n_frames
    try:
        writer = await service.run_in_pool(Mp4Writer, fps, source.width, source.height)
    except BaseException:
        service.executor.submit(source.close)
        raise
    frames = video_frames(service, source, PoseSession(service, options, "video"), with_images=True)
    try:
        left = await _render_frames(request, service, frames, writer)
        path = await service.run_in_pool(writer.finish)
    except BaseException:
        service.executor.submit(writer.discard)  # after a write still running in the pool (the lock)
        raise
    finally:
        await frames.aclose()
    if left:
        Path(path).unlink(missing_ok=True)
        return Response(status_code=CLIENT_CLOSED)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(video.filename or "video").stem)[:64] or "video"
    return TempFileResponse(path, media_type="video/mp4", filename=f"{stem}-poses.mp4", headers={
        "X-Video-Codec": writer.codec, "X-Video-FPS": str(round(fps, 4)), "X-Video-Width": str(writer.width),
        "X-Video-Height": str(writer.height), "X-Video-Frames": str(writer.frames)})  # fmt: skip


async def _render_frames(request: Request, service: PoseService, frames, writer: Mp4Writer) -> bool:
    """Draw each frame's persons and append it to ``writer``, in order, as the frames are ready.
    True when the client left (checked after each frame), which stops the work."""
    meta = service.model.meta
    threshold = service.settings.render_keypoint_threshold

    def draw_and_write(frame: dict) -> None:
        writer.write(render.draw_persons(frame["image"], frame["persons"], meta.skeleton, meta.keypoint_names,
                                         threshold))  # fmt: skip

    async for frame in frames:
        await service.run_in_pool(draw_and_write, frame)
        if await request.is_disconnected():
            return True
    return False


# ---------------------------------------------------------------------------- WS /v1/stream


class StreamOptions(BaseModel):
    """The optional ``{"options": {...}}`` text message of a stream (it may come again later)."""

    model_config = ConfigDict(extra="forbid")

    detect_every: int = PydanticField(1, ge=1, le=10_000)
    smooth: bool = False
    detector: VideoDetector | None = None
    flip_test: bool | None = None
    min_score: float = PydanticField(0.0, ge=0, le=1)
    max_persons: int | None = PydanticField(None, ge=1)


def _problem_body(problem: errors.Problem) -> dict:
    return {"type": errors.TYPE_PREFIX + problem.reason, "title": errors.TITLES.get(problem.reason, problem.reason),
            "status": problem.status, "detail": problem.detail}  # fmt: skip


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    """A live feed: binary messages are encoded frames (JPEG, PNG, WebP, BMP); each processed frame
    gets one text reply ``{"index", "persons", "dropped"}``. Only the newest unanswered frame is
    kept: a frame that arrives while an older one still waits replaces it (``dropped`` counts those,
    since the previous reply)."""
    service: PoseService = websocket.app.state.service
    s = service.settings
    metrics = service.metrics
    app_state = websocket.app.state
    open_streams = getattr(app_state, "open_streams", 0)
    refusal = None
    if not service.ready:
        refusal = errors.not_ready("the model failed to load" if service.load_error else "the model is still loading")
    elif open_streams >= s.stream_max_concurrent:
        refusal = errors.too_many_streams(s.stream_max_concurrent)
    if refusal is not None:
        service.count_rejection(refusal)
        await websocket.send_denial_response(errors.problem_response(refusal))
        return
    app_state.open_streams = open_streams + 1
    metrics.active_streams.labels("stream").inc()
    try:
        await websocket.accept()
        await _serve_stream(websocket, service)
    finally:
        app_state.open_streams -= 1
        metrics.active_streams.labels("stream").dec()


async def _serve_stream(websocket: WebSocket, service: PoseService) -> None:
    s = service.settings
    metrics = service.metrics
    session = PoseSession(service, session_options(service, None, None, 0.0, None, 1, False), "stream")
    send_lock = asyncio.Lock()
    latest: list = []  # at most one (index, data, received_at)
    wake = asyncio.Event()
    dropped = 0  # since the last reply
    t_start = time.monotonic()

    async def send(obj: dict) -> None:
        async with send_lock:
            await websocket.send_text(json.dumps(obj, separators=(",", ":")))

    def drop(n: int = 1) -> None:
        nonlocal dropped
        dropped += n
        metrics.frames_dropped.labels("stream").inc(n)

    async def receive() -> None:
        index = 0
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), s.stream_idle_timeout_s)
            except TimeoutError:
                problem = errors.Problem(408, "idle_timeout", f"no message for {s.stream_idle_timeout_s:g} s "
                                         "(HEVITPOSE_STREAM_IDLE_TIMEOUT_S)")  # fmt: skip
                service.count_rejection(problem)
                await send({"error": _problem_body(problem)})
                await websocket.close(4408, "idle timeout")
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                if latest:
                    latest.clear()
                    drop()
                latest.append((index, message["bytes"], time.monotonic()))
                index += 1
                wake.set()
            elif message.get("text") is not None:
                try:
                    session.options = _parse_options(service, message["text"])
                except errors.Problem as exc:
                    service.count_rejection(exc)
                    await send({"error": _problem_body(exc)})

    async def work() -> None:
        nonlocal dropped
        while True:
            await wake.wait()
            wake.clear()
            if not latest:
                continue
            index, data, received_at = latest.pop()
            t0 = time.perf_counter()
            try:
                image = await service.run_in_pool(imaging.decode, data, s.video_max_pixels)
                h, w = image.shape[:2]
                plan = session.plan(w, h)
                pred = await service.predict_frame(image, plan.options, wait_for_room=False)
            except errors.Problem as exc:
                if exc.reason == "queue_full":
                    drop()
                    continue
                service.count_rejection(exc)
                await send({"index": index, "error": _problem_body(exc)})
                continue
            persons = session.finish(pred, plan, received_at - t_start)
            metrics.frames.labels("stream").inc()
            metrics.frame_duration.labels("stream").observe(time.perf_counter() - t0)
            reply = {"index": index, "persons": persons, "dropped": dropped}
            dropped = 0
            await send(reply)

    worker = asyncio.create_task(work())
    try:
        await receive()
    except WebSocketDisconnect:
        pass
    finally:
        worker.cancel()
        with contextlib.suppress(BaseException):
            await worker


def _parse_options(service: PoseService, text: str) -> SessionOptions:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise errors.invalid_field(f"text message: malformed JSON ({exc})") from None
    if not isinstance(value, dict) or set(value) != {"options"} or not isinstance(value["options"], dict):
        raise errors.invalid_field('text message: expected {"options": {...}}')
    try:
        o = StreamOptions(**value["options"])
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise errors.invalid_field(f"options: {detail}") from None
    return session_options(service, o.detector, o.flip_test, o.min_score, o.max_persons, o.detect_every, o.smooth)
