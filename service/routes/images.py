"""``POST /v1/predict``, ``/v1/predict/batch`` and ``/v1/render``: one or several images in, persons out."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from service import coco_format, errors, imaging, render
from service.deps import ImageFields, ImageForm, ServiceDep
from service.pose_service import PoseService, Prediction
from service.schemas import (
    PROBLEM_RESPONSES,
    BatchResponse,
    CocoEntry,
    PredictResponse,
    boxes_from_json,
    parse_boxes,
)

router = APIRouter()

ImageField = Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")]


async def predict_one(service: PoseService, image: UploadFile, fields: ImageFields) -> Prediction:
    # The fields are checked (422) before readiness (503), and both before the upload is read.
    boxes = parse_boxes(fields.boxes, service.settings.max_persons) if fields.boxes is not None else None
    options = fields.options(service, boxes)
    service.check_ready()
    data = await image.read()
    (prediction,) = await service.predict_many([data], [options])
    return prediction


@router.post("/v1/predict", response_model=PredictResponse | list[CocoEntry],
             summary="Keypoints of every person in one image", responses=PROBLEM_RESPONSES)  # fmt: skip
async def predict(
    service: ServiceDep,
    image: ImageField,
    fields: ImageForm,
    format: Annotated[
        Literal["json", "coco"], Form(description="json (default), or coco: a list of COCO keypoint results")
    ] = "json",
    image_id: Annotated[int, Form(ge=0, description="the image_id of the entries with format=coco")] = 0,
) -> PredictResponse | list[CocoEntry]:
    if format == "coco":  # refused before any work; the keypoint names are known once the model is loaded
        service.check_ready()
        coco_format.check_keypoints(service.model.meta.keypoint_names)
    prediction = await predict_one(service, image, fields)
    if format == "coco":
        return coco_format.entries(service.persons(prediction), image_id)
    return service.response(prediction)


@router.post("/v1/predict/batch", response_model=BatchResponse,
             summary="Several images, one result each, in order", responses=PROBLEM_RESPONSES)  # fmt: skip
async def predict_batch(
    service: ServiceDep,
    images: Annotated[list[UploadFile], File(description="several image files under the same field name")],
    fields: ImageForm,
) -> BatchResponse:
    s = service.settings
    if len(images) > s.max_batch_images:
        raise errors.invalid_field(f"images: {len(images)} images, at most {s.max_batch_images}")
    per_image: list = [None] * len(images)
    if fields.boxes is not None:
        per_image = batch_boxes(fields.boxes, len(images), s.max_persons)
    options = [fields.options(service, b) for b in per_image]
    service.check_ready()
    datas = [await f.read() for f in images]
    predictions = await service.predict_many(datas, options)
    return BatchResponse(results=[service.response(p) for p in predictions])


def batch_boxes(text: str, n: int, max_persons: int) -> list:
    """The batch's ``boxes``: one entry per image, a list of boxes or ``null`` (use the detector)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise errors.invalid_field(f"boxes: malformed JSON ({exc})") from None
    if not isinstance(value, list) or len(value) != n:
        raise errors.invalid_field(f"boxes: expected a JSON list with one entry per image ({n})")
    return [None if v is None else boxes_from_json(v, max_persons, f"boxes[{i}]") for i, v in enumerate(value)]


@router.post("/v1/render", summary="The image with boxes and skeletons drawn", responses={
    **PROBLEM_RESPONSES, 200: {"content": {"image/jpeg": {}, "image/png": {}}}})  # fmt: skip
async def render_image(
    service: ServiceDep,
    image: ImageField,
    fields: ImageForm,
    format: Annotated[Literal["jpeg", "png"], Form(description="output format")] = "jpeg",
) -> Response:
    p = await predict_one(service, image, fields)
    meta = service.model.meta
    threshold = service.settings.render_keypoint_threshold

    def draw() -> bytes:
        canvas = render.draw_poses(p.image, p.bboxes, p.keypoints, p.scores, meta.skeleton, meta.keypoint_names,
                                   threshold)  # fmt: skip
        return imaging.encode(canvas, format)

    data = await service.run_in_pool(draw)
    return Response(data, media_type="image/png" if format == "png" else "image/jpeg")
