"""``WS /v1/stream``: a live feed of encoded frames in, one reply per processed frame out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as PydanticField

from service import errors, imaging
from service.deps import ServiceDep, VideoDetector
from service.pose_service import PoseService
from service.schemas import StreamReply
from service.video import PoseSession, SessionOptions, session_options

router = APIRouter()


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
async def stream(websocket: WebSocket, service: ServiceDep) -> None:
    """A live feed: binary messages are encoded frames (JPEG, PNG, WebP, BMP); each processed frame
    gets one text reply ``{"index", "persons", "dropped"}``. Only the newest unanswered frame is
    kept: a frame that arrives while an older one still waits replaces it (``dropped`` counts those,
    since the previous reply)."""
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

    async def send(obj: dict | StreamReply) -> None:
        text = obj.model_dump_json() if isinstance(obj, StreamReply) else json.dumps(obj, separators=(",", ":"))
        async with send_lock:
            await websocket.send_text(text)

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
            reply = StreamReply(index=index, persons=persons, dropped=dropped)
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
