"""The service's ASGI middlewares, one job each.

Plain ASGI rather than ``BaseHTTPMiddleware``: the body limit must count bytes as they arrive,
before the multipart parser has buffered a too-large upload, and streamed answers (NDJSON, MP4
files) and WebSockets must pass through untouched. :func:`service.app.create_app` stacks them,
outermost first: :class:`RequestIdMiddleware`, :class:`AccessLogMiddleware`,
:class:`RequestMetricsMiddleware`, :class:`BodyLimitMiddleware`, :class:`MultipartOnlyMiddleware`,
:class:`ApiKeyMiddleware`; so every refusal of an inner one still carries a request id and is
counted and logged.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.logs import request_id_var
from service.metrics import ENDPOINTS, ServiceMetrics
from service.pose_service import PoseService

access_log = logging.getLogger("service.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
VIDEO_PATHS = ("/v1/predict/video", "/v1/render/video")  # their body limit is HEVITPOSE_VIDEO_MAX_BYTES
# Open with HEVITPOSE_API_KEY set: probes and Prometheus carry no key, and these leak nothing a client sends.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def header(scope: Scope, name: bytes) -> str | None:
    """The last ``name`` header (ASGI lower-cases names), as the service always read them."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return None if found is None else found.decode("latin-1")


def request_id(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


class RequestIdMiddleware:
    """The request id: the client's ``X-Request-ID`` when well-formed, else a new one; kept in
    ``scope["state"]`` (``request.state.request_id``) and the logs' context, and sent back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id") or ""
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", rid.encode())]
            await send(message)

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class StatusRecorder:
    """A ``send`` that remembers the response status; 500 until one is sent, which is what the
    client gets when nothing inside answered (an unhandled error)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class AccessLogMiddleware:
    """One JSON access line per request: method, path, status, duration, body bytes received."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sent = StatusRecorder(send)
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, receive_counted, sent)
        finally:
            access_log.info(
                "request",
                extra={"method": scope["method"], "path": scope["path"], "status": sent.status,
                       "duration_ms": round((time.perf_counter() - start) * 1e3, 2), "bytes_in": received},
            )  # fmt: skip


class RequestMetricsMiddleware:
    """``hevitpose_requests_total`` and ``hevitpose_request_duration_seconds`` by route template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sent = StatusRecorder(send)
        try:
            await self.app(scope, receive, sent)
        finally:
            # The router puts the matched route into the scope. Refusals sent before routing (413,
            # 415, 401) still count under their endpoint; unknown paths under "other", so that
            # scanners cannot grow the label set.
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or (scope["path"] if scope["path"] in ENDPOINTS else "other")
            self.metrics.requests.labels(endpoint, str(sent.status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - start)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


class BodyLimitMiddleware:
    """413 for a body over ``HEVITPOSE_MAX_BODY_BYTES`` (``HEVITPOSE_VIDEO_MAX_BYTES`` on the video
    routes): at once when ``Content-Length`` says so, else as soon as the bytes received pass it
    (a chunked upload), raised from ``receive`` into whatever is reading the body."""

    def __init__(self, app: ASGIApp, service: PoseService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.service.settings
        limit = settings.video_max_bytes if scope["path"] in VIDEO_PATHS else settings.max_body_bytes
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            problem = errors.too_large(f"the request body ({length} bytes) exceeds {limit} bytes")
            self.service.count_rejection(problem)
            await errors.problem_response(problem, request_id(scope))(scope, receive, send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_limited, send)


class MultipartOnlyMiddleware:
    """415 for a POST to ``/v1/...`` that is not ``multipart/form-data``, before anything parses it."""

    def __init__(self, app: ASGIApp, service: PoseService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        content_type = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            await self.app(scope, receive, send)
            return
        field = "video" if scope["path"] in VIDEO_PATHS else "image"
        problem = errors.unsupported_media_type(
            f"send multipart/form-data with a '{field}' file field, not {content_type or 'no content type'}"
        )
        self.service.count_rejection(problem)
        await errors.problem_response(problem, request_id(scope))(scope, receive, send)


class ApiKeyMiddleware:
    """With ``HEVITPOSE_API_KEY`` set: every HTTP and WebSocket route but :data:`OPEN_PATHS` needs
    ``Authorization: Bearer <key>``; otherwise a 401 problem with ``WWW-Authenticate: Bearer``.

    ASGI rather than a dependency, so that unknown paths, ``/docs`` and the WebSocket handshake are
    covered by the same check. Installed innermost, so a refusal still gets its request id,
    metrics and access line.
    """

    def __init__(self, app: ASGIApp, service: PoseService) -> None:
        self.app = app
        self.service = service
        self.key = service.settings.api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        problem = errors.Problem(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'",
                                 {"WWW-Authenticate": 'Bearer realm="hevitpose"'})  # fmt: skip
        self.service.count_rejection(problem)
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            # A server without WebSocket denial responses: closing before accept refuses the
            # handshake (uvicorn answers 403); 1008 is "policy violation".
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        await errors.problem_response(problem, request_id(scope))(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":  # ASGI lower-cases header names
                scheme, _, token = value.partition(b" ")
                # compare_digest: the time taken must not tell how much of a guessed key was right
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False
