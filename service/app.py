"""HTTP routes of the pose service (FastAPI); the work itself happens in :mod:`service.pose_service`."""

from __future__ import annotations

import contextlib
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import coco_format, errors, imaging, render, video_routes
from service.middleware import (
    AccessLogMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    MultipartOnlyMiddleware,
    RequestIdMiddleware,
    RequestMetricsMiddleware,
)
from service.pose_service import PoseService
from service.schemas import (
    PROBLEM_RESPONSES,
    BatchResponse,
    ModelsResponse,
    PredictOptions,
    PredictResponse,
    boxes_from_json,
    make_options,
    parse_boxes,
)
from service.settings import DetectorMode, Settings

# Form fields shared by the three POST routes.
BoxesField = Annotated[
    str | None, Form(description="JSON list of [x1, y1, x2, y2] boxes in image pixels (implies detector=boxes)")
]
DetectorField = Annotated[
    DetectorMode | None,
    Form(description="nanodet (default), boxes (the client's), or whole_image (one person filling the picture)"),
]
FlipField = Annotated[bool | None, Form(description="average with the mirrored crop (slower, a little more accurate)")]
MinScoreField = Annotated[float, Form(ge=0, le=1, description="drop persons whose mean keypoint score is lower")]
MaxPersonsField = Annotated[int | None, Form(ge=1, description="at most this many persons per image")]


def create_app(settings: Settings | None = None, service: PoseService | None = None) -> FastAPI:
    settings = settings or Settings()
    service = service or PoseService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="HEViTPose Serve",
        version="0.1.0",
        description="2D human pose estimation: person detector -> crops -> micro-batched HEViTPose -> keypoints.",
        lifespan=lifespan,
    )
    app.state.service = service
    # The last added runs first. Outermost the request id, so that everything inside logs it and
    # every answer carries it; then the access log and the request metrics, so that the refusals of
    # the checks inside them (413, 415, 401) are logged and counted like any answer.
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, service=service)
    app.add_middleware(MultipartOnlyMiddleware, service=service)
    app.add_middleware(BodyLimitMiddleware, service=service)  # before the 415: a huge body is a 413 whatever it is
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(video_routes.router)
    errors.install_handlers(app, service.count_rejection)

    def options_for(
        boxes, detector: DetectorMode | None, flip_test, min_score: float, max_persons
    ) -> PredictOptions:
        return make_options(
            detector, boxes, flip_test, min_score, max_persons,
            settings.detector, settings.flip_test, settings.max_persons,
        )  # fmt: skip

    async def predict_one(
        image: UploadFile, boxes: str | None, detector, flip_test, min_score: float, max_persons
    ):
        parsed = parse_boxes(boxes, settings.max_persons) if boxes is not None else None
        options = options_for(parsed, detector, flip_test, min_score, max_persons)
        service.check_ready()
        data = await image.read()
        (prediction,) = await service.predict_many([data], [options])
        return prediction

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and warmed up", responses={503: PROBLEM_RESPONSES[503]})
    async def readyz(request: Request) -> Response:
        try:
            service.check_ready()
        except errors.Problem as exc:  # a probe, not a client refused: not counted as a rejection
            return errors.problem_response(exc, request.state.request_id)
        return JSONResponse({"status": "ready", "model": service.model.name, "device": str(service.model.device)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        if service.model is not None:
            service.metrics.update_gpu_memory(service.model.device)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelsResponse, summary="The loaded model", responses=PROBLEM_RESPONSES)
    async def models() -> dict:
        service.check_ready()
        return {"models": [service.model_info()]}

    @app.post("/v1/predict", response_model=PredictResponse, summary="Keypoints of every person in one image",
              responses=PROBLEM_RESPONSES)  # fmt: skip
    async def predict(
        image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")],
        boxes: BoxesField = None,
        detector: DetectorField = None,
        flip_test: FlipField = None,
        min_score: MinScoreField = 0.0,
        max_persons: MaxPersonsField = None,
        format: Annotated[
            Literal["json", "coco"], Form(description="json (default), or coco: a list of COCO keypoint results")
        ] = "json",
        image_id: Annotated[int, Form(ge=0, description="the image_id of the entries with format=coco")] = 0,
    ) -> Response:
        if format == "coco":  # refused before any work; the keypoint names are known once the model is loaded
            service.check_ready()
            coco_format.check_keypoints(service.model.meta.keypoint_names)
        prediction = await predict_one(image, boxes, detector, flip_test, min_score, max_persons)
        if format == "coco":
            return JSONResponse(coco_format.entries(service.persons_json(prediction), image_id))
        return JSONResponse(service.to_json(prediction))

    @app.post("/v1/predict/batch", response_model=BatchResponse, summary="Several images, one result each, in order",
              responses=PROBLEM_RESPONSES)  # fmt: skip
    async def predict_batch(
        images: Annotated[list[UploadFile], File(description="several image files under the same field name")],
        boxes: Annotated[
            str | None, Form(description="JSON list with one entry per image: a list of boxes, or null")
        ] = None,
        detector: DetectorField = None,
        flip_test: FlipField = None,
        min_score: MinScoreField = 0.0,
        max_persons: MaxPersonsField = None,
    ) -> Response:
        if len(images) > settings.max_batch_images:
            raise errors.invalid_field(f"images: {len(images)} images, at most {settings.max_batch_images}")
        per_image: list = [None] * len(images)
        if boxes is not None:
            per_image = _batch_boxes(boxes, len(images), settings.max_persons)
        options = [options_for(b, detector, flip_test, min_score, max_persons) for b in per_image]
        service.check_ready()
        datas = [await f.read() for f in images]
        predictions = await service.predict_many(datas, options)
        return JSONResponse({"results": [service.to_json(p) for p in predictions]})

    @app.post("/v1/render", summary="The image with boxes and skeletons drawn", responses={
        **PROBLEM_RESPONSES, 200: {"content": {"image/jpeg": {}, "image/png": {}}}})  # fmt: skip
    async def render_image(
        image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")],
        boxes: BoxesField = None,
        detector: DetectorField = None,
        flip_test: FlipField = None,
        min_score: MinScoreField = 0.0,
        max_persons: MaxPersonsField = None,
        format: Annotated[Literal["jpeg", "png"], Form(description="output format")] = "jpeg",
    ) -> Response:
        p = await predict_one(image, boxes, detector, flip_test, min_score, max_persons)
        meta = service.model.meta

        def draw() -> bytes:
            canvas = render.draw_poses(p.image, p.bboxes, p.keypoints, p.scores, meta.skeleton,
                                       meta.keypoint_names, settings.render_keypoint_threshold)  # fmt: skip
            return imaging.encode(canvas, format)

        data = await service.run_in_pool(draw)
        return Response(data, media_type="image/png" if format == "png" else "image/jpeg")

    return app


def _batch_boxes(text: str, n: int, max_persons: int) -> list:
    import json

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise errors.invalid_field(f"boxes: malformed JSON ({exc})") from None
    if not isinstance(value, list) or len(value) != n:
        raise errors.invalid_field(f"boxes: expected a JSON list with one entry per image ({n})")
    return [None if v is None else boxes_from_json(v, max_persons, f"boxes[{i}]") for i, v in enumerate(value)]
