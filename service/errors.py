"""Client-facing errors as RFC 9457 problem details (``application/problem+json``).

Every refusal is a :class:`Problem` with a ``reason``; the reason names the problem type
and labels ``hevitpose_rejections_total``. Nothing the client sends should reach a 500:
the handlers installed by :func:`install_handlers` turn validation and HTTP errors into
problems too, and an unexpected failure becomes a bare 500 without a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:hevitpose:problem:"

log = logging.getLogger("service.errors")

TITLES = {
    "invalid_image": "Image could not be decoded",
    "invalid_video": "Video could not be decoded",
    "too_many_streams": "Too many streams",
    "idle_timeout": "Stream idle too long",
    "too_large": "Content too large",
    "unsupported_media_type": "Unsupported media type",
    "invalid_field": "Invalid request field",
    "queue_full": "Service overloaded",
    "not_ready": "Service not ready",
    "deadline": "Deadline exceeded",
    "unauthorized": "Unauthorized",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "internal": "Internal server error",
}


class Problem(Exception):
    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}


def invalid_image(detail: str) -> Problem:
    return Problem(400, "invalid_image", detail)


def invalid_video(detail: str) -> Problem:
    return Problem(400, "invalid_video", detail)


def too_many_streams(limit: int) -> Problem:
    return Problem(503, "too_many_streams", f"{limit} streams are open, the most this server takes; retry later",
                   {"Retry-After": "5"})  # fmt: skip


def too_large(detail: str) -> Problem:
    return Problem(413, "too_large", detail)


def unsupported_media_type(detail: str) -> Problem:
    return Problem(415, "unsupported_media_type", detail)


def invalid_field(detail: str) -> Problem:
    return Problem(422, "invalid_field", detail)


def queue_full(retry_after_s: int) -> Problem:
    return Problem(503, "queue_full", "the pose queue is full; retry later", {"Retry-After": str(retry_after_s)})


def not_ready(detail: str = "the model is still loading") -> Problem:
    return Problem(503, "not_ready", detail, {"Retry-After": "1"})


def deadline(timeout_s: float) -> Problem:
    return Problem(504, "deadline", f"the request did not finish within its {timeout_s:g} s deadline")


def problem_response(problem: Problem, request_id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + problem.reason,
        "title": TITLES.get(problem.reason, problem.reason),
        "status": problem.status,
        "detail": problem.detail,
    }
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_MEDIA_TYPE)


def _validation_detail(exc: RequestValidationError) -> str:
    # Never echo the input back: it may be megabytes of image bytes.
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI, on_problem) -> None:
    """Register the handlers; ``on_problem(problem)`` is called for each refusal (metrics)."""

    def respond(request: Request, problem: Problem) -> JSONResponse:
        on_problem(problem)
        return problem_response(problem, getattr(request.state, "request_id", None))

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, invalid_field(_validation_detail(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {400: "invalid_field", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                  415: "unsupported_media_type"}.get(exc.status_code, "invalid_field")  # fmt: skip
        if exc.status_code == 400:
            # Starlette's multipart parser: a body that is not well-formed multipart.
            return respond(request, Problem(400, "invalid_field", f"malformed request body: {exc.detail}"))
        return respond(request, Problem(exc.status_code, reason, str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
        return respond(request, Problem(500, "internal", "internal error; see the server log"))
