"""Routes for videos: ``POST /v1/predict/video`` (JSON or NDJSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service import errors
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
