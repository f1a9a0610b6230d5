"""``POST /v1/predict/video`` (JSON or NDJSON) and ``POST /v1/render/video`` (an MP4 with the poses drawn)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from service import coco_format, errors, render
from service.deps import ServiceDep, VideoFields, VideoForm
from service.pose_service import PoseService
from service.schemas import PROBLEM_RESPONSES, TrackedCocoEntry, VideoFrame, VideoResponse
from service.video import (
    DEFAULT_FPS,
    Mp4Writer,
    PoseSession,
    SessionOptions,
    VideoSource,
    session_options,
    spool_upload,
    video_frames,
)

router = APIRouter()

NDJSON = "application/x-ndjson"
CLIENT_CLOSED = 499  # nginx's status for "the client left before the answer": logged and counted, never seen

VideoField = Annotated[UploadFile, File(description="a video OpenCV's FFmpeg reads: MP4/H.264, AVI/MJPEG, WebM, ...")]
FormatField = Annotated[Literal["json", "coco"], Form(
    description="json (default), or coco: COCO keypoint results, image_id = the frame's index")]  # fmt: skip
CocoEntries = TypeAdapter(list[TrackedCocoEntry])


def options_for(service: PoseService, f: VideoFields) -> SessionOptions:
    return session_options(service, f.detector, f.flip_test, f.min_score, f.max_persons, f.detect_every, f.smooth)


async def open_video(service: PoseService, video: UploadFile, every_n_frames: int, max_frames: int | None):
    suffix = Path(video.filename or "").suffix.lower()[:8] or ".bin"
    path = await service.run_in_pool(spool_upload, video.file, suffix, service.settings.video_max_bytes)
    return await service.run_in_pool(VideoSource, path, service.settings, every_n_frames, max_frames)


@router.post(
    "/v1/predict/video",
    response_model=VideoResponse | list[TrackedCocoEntry],
    summary="Keypoints with track ids for the frames of a video (JSON, or NDJSON one frame per line)",
    responses={**PROBLEM_RESPONSES, 200: {"content": {"application/json": {}, NDJSON: {}}}},
)
async def predict_video(
    request: Request,
    response: Response,
    service: ServiceDep,
    video: VideoField,
    fields: VideoForm,
    format: FormatField = "json",
) -> VideoResponse | list[TrackedCocoEntry] | Response:
    options = options_for(service, fields)
    service.check_ready()
    coco = format == "coco"
    if coco:
        coco_format.check_keypoints(service.model.meta.keypoint_names)
    source = await open_video(service, video, fields.every_n_frames, fields.max_frames)
    session = PoseSession(service, options, "video")
    frames = video_frames(service, source, session)
    fps = round(source.fps, 4)
    # On every answer: the COCO ones (a bare list) have nowhere else to say them.
    headers = {"X-Video-FPS": str(fps), "X-Video-Width": str(source.width), "X-Video-Height": str(source.height)}
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_ndjson(frames, request, service, coco), media_type=NDJSON, headers=headers)
    response.headers.update(headers)
    out: list[VideoFrame] = []
    entries: list[TrackedCocoEntry] = []
    try:
        async for frame, _ in frames:
            if coco:  # one list over the whole video, as a COCO results file is
                entries.extend(coco_format.entries(frame.persons, frame.index))  # type: ignore[arg-type]
            else:
                out.append(frame)
            if await request.is_disconnected():
                break  # nobody to answer: stop decoding and free the frames in flight
    finally:
        await frames.aclose()
    if coco:
        return entries
    return VideoResponse(fps=fps, width=source.width, height=source.height, frames=out)


async def _ndjson(
    frames: AsyncIterator[tuple[VideoFrame, np.ndarray | None]], request: Request, service: PoseService, coco: bool
) -> AsyncIterator[str]:
    """One JSON line per frame (with ``coco``, the list of that frame's entries, ``[]`` for a frame
    without persons, so that every processed frame still shows); a problem that happens after the
    answer started becomes a last line ``{"error": {problem}}`` (the status is already 200)."""
    try:
        async for frame, _ in frames:
            if coco:
                line = CocoEntries.dump_json(coco_format.entries(frame.persons, frame.index)).decode()  # type: ignore[arg-type]
            else:
                line = frame.model_dump_json()
            yield line + "\n"
    except errors.Problem as exc:
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
async def render_video(request: Request, service: ServiceDep, video: VideoField, fields: VideoForm) -> Response:
    options = options_for(service, fields)
    service.check_ready()
    source = await open_video(service, video, fields.every_n_frames, fields.max_frames)
    # The processed frames only, at the rate that keeps the video's duration.
    fps = (source.fps or DEFAULT_FPS) / fields.every_n_frames
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

    def draw_and_write(frame: VideoFrame, image: np.ndarray) -> None:
        writer.write(render.draw_persons(image, frame.persons, meta.skeleton, meta.keypoint_names, threshold))

    async for frame, image in frames:
        await service.run_in_pool(draw_and_write, frame, image)
        if await request.is_disconnected():
            return True
    return False
