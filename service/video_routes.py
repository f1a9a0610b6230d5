"""Routes for videos and live streams: ``POST /v1/predict/video`` (JSON or NDJSON), ``WS /v1/stream``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as PydanticField
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service import errors, imaging
from service.engine import PoseService
from service.schemas import PROBLEM_RESPONSES, make_options
from service.video import PoseSession, SessionOptions, VideoSource, spool_upload, video_frames

router = APIRouter()

NDJSON = "application/x-ndjson"

VideoDetector = Literal["nanodet", "whole_image"]


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
    video: Annotated[UploadFile, File(description="a video OpenCV's FFmpeg reads: MP4/H.264, AVI/MJPEG, WebM, ...")],
    every_n_frames: Annotated[int, Form(ge=1, le=10_000, description="process every N-th frame")] = 1,
    max_frames: Annotated[int | None, Form(ge=1, description="process at most this many frames")] = None,
    detect_every: Annotated[
        int, Form(ge=1, le=10_000, description="run the detector on every N-th processed frame, track in between")
    ] = 1,
    smooth: Annotated[bool, Form(description="One Euro smoothing of each track's keypoints")] = False,
    detector: Annotated[VideoDetector | None, Form(description="nanodet (default) or whole_image")] = None,
    flip_test: Annotated[bool | None, Form(description="average with the mirrored crops")] = None,
    min_score: Annotated[float, Form(ge=0, le=1, description="drop persons whose score is lower")] = 0.0,
    max_persons: Annotated[int | None, Form(ge=1, description="at most this many persons per frame")] = None,
) -> Response:
    service = _service(request)
    options = session_options(service, detector, flip_test, min_score, max_persons, detect_every, smooth)
    service.check_ready()
    source = await open_video(service, video, every_n_frames, max_frames)
    session = PoseSession(service, options, "video")
    frames = video_frames(service, source, session)
    head = {"fps": round(source.fps, 4), "width": source.width, "height": source.height}
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_ndjson(frames, request), media_type=NDJSON, headers={
            "X-Video-FPS": str(head["fps"]), "X-Video-Width": str(source.width),
            "X-Video-Height": str(source.height)})  # fmt: skip
    out = []
    try:
        async for frame in frames:
            out.append(frame)
            if await request.is_disconnected():
                break  # nobody to answer: stop decoding and free the frames in flight
    finally:
        await frames.aclose()
    return JSONResponse({**head, "frames": out})


async def _ndjson(frames, request: Request):
    """One JSON line per frame; a problem that happens after the answer started becomes a last
    line ``{"error": {problem}}`` (the status is already 200)."""
    try:
        async for frame in frames:
            yield json.dumps(frame, separators=(",", ":")) + "\n"
    except errors.Problem as exc:
        service = _service(request)
        service.count_rejection(exc)
        body = json.loads(errors.problem_response(exc, getattr(request.state, "request_id", None)).body)
        yield json.dumps({"error": body}) + "\n"
    finally:
        await frames.aclose()


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
