"""What the route handlers are given: the service, and the form fields that several routes share.

The dependencies are ``async def`` although they never wait: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop per dependency and request (measured: about 0.5 ms
of CPU per ``/v1/predict``) for what is an attribute lookup or a dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, Form
from starlette.requests import HTTPConnection

from service.pose_service import PoseService
from service.schemas import PredictOptions, make_options
from service.settings import DetectorMode

VideoDetector = Literal["nanodet", "whole_image"]


async def get_service(connection: HTTPConnection) -> PoseService:
    """The app's one :class:`PoseService` (HTTP and WebSocket routes alike)."""
    return connection.app.state.service


ServiceDep = Annotated[PoseService, Depends(get_service)]


# ---------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageFields:
    """The fields of ``/v1/predict``, ``/v1/predict/batch`` and ``/v1/render`` besides the images."""

    boxes: str | None  # JSON text; parsed by the route (one list, or one per image for a batch)
    detector: DetectorMode | None
    flip_test: bool | None
    min_score: float
    max_persons: int | None

    def options(self, service: PoseService, boxes: np.ndarray | None) -> PredictOptions:
        """The options of one image, with its parsed ``boxes`` (or ``None``); 422 when they clash."""
        s = service.settings
        return make_options(self.detector, boxes, self.flip_test, self.min_score, self.max_persons,
                            s.detector, s.flip_test, s.max_persons)  # fmt: skip


async def image_fields(
    boxes: Annotated[str | None, Form(
        description="JSON list of [x1, y1, x2, y2] boxes in image pixels (implies detector=boxes); on "
                    "/v1/predict/batch a JSON list with one entry per image: a list of boxes, or null")] = None,
    detector: Annotated[DetectorMode | None, Form(
        description="nanodet (default), boxes (the client's), or whole_image (one person filling the picture)")] = None,
    flip_test: Annotated[bool | None, Form(
        description="average with the mirrored crop (slower, a little more accurate)")] = None,
    min_score: Annotated[float, Form(ge=0, le=1, description="drop persons whose score is lower")] = 0.0,
    max_persons: Annotated[int | None, Form(ge=1, description="at most this many persons per image")] = None,
) -> ImageFields:  # fmt: skip
    return ImageFields(boxes, detector, flip_test, min_score, max_persons)


ImageForm = Annotated[ImageFields, Depends(image_fields)]


# ---------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class VideoFields:
    """The fields of ``/v1/predict/video`` and ``/v1/render/video`` besides the video."""

    every_n_frames: int
    max_frames: int | None
    detect_every: int
    smooth: bool
    detector: VideoDetector | None
    flip_test: bool | None
    min_score: float
    max_persons: int | None


async def video_fields(
    every_n_frames: Annotated[int, Form(ge=1, le=10_000, description="process every N-th frame")] = 1,
    max_frames: Annotated[int | None, Form(ge=1, description="process at most this many frames")] = None,
    detect_every: Annotated[int, Form(
        ge=1, le=10_000, description="run the detector on every N-th processed frame, track in between")] = 1,
    smooth: Annotated[bool, Form(description="One Euro smoothing of each track's keypoints")] = False,
    detector: Annotated[VideoDetector | None, Form(description="nanodet (default) or whole_image")] = None,
    flip_test: Annotated[bool | None, Form(description="average with the mirrored crops")] = None,
    min_score: Annotated[float, Form(ge=0, le=1, description="drop persons whose score is lower")] = 0.0,
    max_persons: Annotated[int | None, Form(ge=1, description="at most this many persons per frame")] = None,
) -> VideoFields:  # fmt: skip
    return VideoFields(every_n_frames, max_frames, detect_every, smooth, detector, flip_test, min_score, max_persons)


VideoForm = Annotated[VideoFields, Depends(video_fields)]
