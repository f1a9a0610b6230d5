"""The FastAPI app of the pose service: settings, lifespan, middlewares, routers, error handlers.

The routes live in :mod:`service.routes`, the work in :mod:`service.pose_service`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service import errors
from service.middleware import (
    AccessLogMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    MultipartOnlyMiddleware,
    RequestIdMiddleware,
    RequestMetricsMiddleware,
)
from service.pose_service import PoseService
from service.routes import images, stream, system, videos
from service.settings import Settings


def create_app(settings: Settings | None = None, service: PoseService | None = None) -> FastAPI:
    settings = settings or Settings()
    service = service or PoseService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    for module in (system, images, videos, stream):
        app.include_router(module.router)
    errors.install_handlers(app, service.count_rejection)
    return app
