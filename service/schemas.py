"""Request options and response bodies (the response models document the API at /docs)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from service import errors
from service.settings import DetectorMode

# ---------------------------------------------------------------------------- responses


class Keypoint(BaseModel):
    name: str
    x: float
    y: float
    score: float


class Person(BaseModel):
    bbox: list[float] = Field(description="[x1, y1, x2, y2] in image pixels")
    bbox_score: float = Field(description="NanoDet's person probability; 1 for client boxes and the whole image")
    score: float = Field(
        description="bbox_score x mean of the keypoint scores above HEVITPOSE_PERSON_KEYPOINT_THRESHOLD "
        "(MMPose's rescoring; 0 when none is above it): what min_score filters on"
    )
    keypoints: list[Keypoint]


class TrackedPerson(Person):
    track_id: int = Field(description="the same person in later frames has the same id")


class ImageSize(BaseModel):
    width: int
    height: int


class ModelRef(BaseModel):
    name: str
    version: str


class Timings(BaseModel):
    decode: float
    detect: float
    crop: float
    queue: float
    pose: float
    postprocess: float
    total: float


class PredictResponse(BaseModel):
    image: ImageSize
    persons: list[Person]
    model: ModelRef
    timings_ms: Timings


class BatchResponse(BaseModel):
    results: list[PredictResponse]


class CocoEntry(BaseModel):
    """One COCO keypoint results entry (``format=coco``), what pycocotools' ``COCO.loadRes`` reads."""

    image_id: int
    category_id: int
    keypoints: list[float] = Field(description="[x, y, score] x 17, in COCO's keypoint order")
    score: float
    bbox: list[float] = Field(description="[x, y, w, h] in image pixels")


class TrackedCocoEntry(CocoEntry):
    track_id: int = Field(description="PoseTrack's name for it; COCO's tools ignore it")


class VideoFrame(BaseModel):
    index: int = Field(description="the frame's index in the video")
    time_s: float
    persons: list[TrackedPerson]


class VideoResponse(BaseModel):
    fps: float
    width: int
    height: int
    frames: list[VideoFrame]


class StreamReply(BaseModel):
    index: int
    persons: list[TrackedPerson]
    dropped: int = Field(description="frames dropped since the previous reply")


class ModelInfo(BaseModel):
    name: str
    version: str
    params: int
    input_size: list[int] = Field(description="[width, height] of the crops")
    keypoint_names: list[str]
    skeleton: list[list[int]]
    weights_sha256: str
    device: str
    backend: str
    dtype: str
    runtime: dict = Field(
        description="how the backend was chosen: 'how' (measured, cached, forced, default, fallback), threads, "
        "and per candidate its agreement with float32 (mean OKS) and crops/s at batch 1 and 8"
    )
    codec: dict = Field(
        description="the codec the service crops and decodes with: the bundle's (what its training used), "
        "with any HEVITPOSE_BBOX_PADDING / HEVITPOSE_DECODE_METHOD override applied"
    )
    description: str
    metrics: dict


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ProblemBody(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None


PROBLEM_RESPONSES = {
    code: {"model": ProblemBody, "content": {errors.PROBLEM_MEDIA_TYPE: {}}, "description": desc}
    for code, desc in [
        (400, "undecodable image"),
        (413, "body or pixel count over the limit"),
        (415, "not JPEG, PNG, WebP or BMP; or not multipart/form-data"),
        (422, "bad fields"),
        (503, "overloaded (Retry-After) or not ready"),
        (504, "deadline passed"),
    ]
}

# ---------------------------------------------------------------------------- request options


@dataclass(frozen=True)
class PredictOptions:
    detector: DetectorMode
    boxes: np.ndarray | None  # (N, 4) client boxes, checked against the image later
    flip_test: bool
    min_score: float
    max_persons: int


def parse_boxes(text: str, max_persons: int, field: str = "boxes") -> np.ndarray:
    """A JSON list of [x1, y1, x2, y2] -> (N, 4) float array; 422 for anything else."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise errors.invalid_field(f"{field}: malformed JSON ({exc})") from None
    return boxes_from_json(value, max_persons, field)


def boxes_from_json(value: object, max_persons: int, field: str = "boxes") -> np.ndarray:
    if not isinstance(value, list):
        raise errors.invalid_field(f"{field}: expected a JSON list of [x1, y1, x2, y2]")
    if len(value) > max_persons:
        raise errors.invalid_field(f"{field}: {len(value)} boxes, at most {max_persons} allowed")
    rows = []
    for i, box in enumerate(value):
        if not (isinstance(box, list) and len(box) == 4):
            raise errors.invalid_field(f"{field}[{i}]: expected [x1, y1, x2, y2]")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            raise errors.invalid_field(f"{field}[{i}]: coordinates must be numbers")
        if not all(math.isfinite(v) for v in box):
            raise errors.invalid_field(f"{field}[{i}]: coordinates must be finite (no NaN or Infinity)")
        x1, y1, x2, y2 = box
        if not (x2 > x1 and y2 > y1):
            raise errors.invalid_field(f"{field}[{i}]: needs x2 > x1 and y2 > y1")
        rows.append(box)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def check_boxes_inside(boxes: np.ndarray, width: int, height: int, field: str = "boxes") -> None:
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise errors.invalid_field(
                f"{field}[{i}] = [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {width}x{height} image"
            )


def make_options(
    detector: str | None,
    boxes: np.ndarray | None,
    flip_test: bool | None,
    min_score: float,
    max_persons: int | None,
    default_detector: DetectorMode,
    default_flip: bool,
    limit_persons: int,
) -> PredictOptions:
    if detector is None:
        detector = "boxes" if boxes is not None else default_detector
    if detector == "boxes" and boxes is None:
        raise errors.invalid_field("detector=boxes needs the boxes field")
    if detector != "boxes" and boxes is not None:
        raise errors.invalid_field(f"boxes were sent but detector={detector}; send detector=boxes or no detector")
    if max_persons is not None and max_persons > limit_persons:
        raise errors.invalid_field(f"max_persons: at most {limit_persons}")
    return PredictOptions(
        detector=detector,  # type: ignore[arg-type]
        boxes=boxes,
        flip_test=default_flip if flip_test is None else flip_test,
        min_score=min_score,
        max_persons=max_persons or limit_persons,
    )
