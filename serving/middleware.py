"""Pure ASGI middleware of the HTTP service: body-size limit, request metrics and the access log line."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse

from serving.logs import ACCESS_LOGGER, log_event
from serving.metrics import Metrics


def error_response(status: int, error: str, detail: Any) -> JSONResponse:
    """Every error's body: ``{"error": ..., "detail": ...}``."""
    return JSONResponse(status_code=status, content={"error": error, "detail": detail})


ACCESS_KEY = "recflow.access"  # the scope entry the handler fills with what the access log line reports
CLOSE = (b"connection", b"close")


class Drain:
    """Set when the worker is about to be retired (a model swap rolls the workers): every response then asks the
    client to close its connection (``Connection: close``), so that clients move to the other workers on their
    own before this one stops and closes the connections that are still open, and no request is sent on a
    connection at the moment it closes."""

    def __init__(self) -> None:
        self.on = False  # a plain flag: set from a signal handler, read per response


class MeasureAndLimit:
    """Pure ASGI middleware: rejects bodies over the limit (413) and records request counts and latency.

    (Starlette's ``BaseHTTPMiddleware`` costs about a millisecond per request; this costs microseconds.)
    """

    def __init__(
        self, app: Any, metrics: Metrics, max_body_bytes: int, access_level: int = logging.INFO,
        drain: Drain | None = None,
    ) -> None:
        self.app = app
        self.drain = drain or Drain()
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.access_level = access_level
        self.access_log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        access: dict[str, Any] = {}
        scope[ACCESS_KEY] = access
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        limit = self.max_body_bytes

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                if self.drain.on:
                    message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        try:
            too_big = length is not None and int(length) > limit
        except ValueError:
            too_big = True
        received = 0

        async def receive_limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        try:
            if too_big:
                raise _BodyTooLarge
            await self.app(scope, receive_limited, send_wrapper)
        except _BodyTooLarge:
            response = error_response(413, "payload_too_large", f"bodies are limited to {limit} bytes")
            await response(scope, receive, send_wrapper)
        route = scope.get("route")
        labels = (getattr(route, "path", "unmatched"), scope.get("method", ""), str(status["code"]))
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(*labels).inc()
        self.metrics.latency.labels(*labels).observe(elapsed)
        if self.access_log.isEnabledFor(self.access_level):
            log_event(
                "request",
                self.access_level,
                ACCESS_LOGGER,
                request_id=access.pop("request_id", None) or uuid.uuid4().hex,
                method=labels[1],
                endpoint=labels[0],
                status=status["code"],
                latency_ms=round(elapsed * 1000.0, 3),
                **access,
            )


class _BodyTooLarge(Exception):
    pass
