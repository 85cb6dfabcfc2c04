"""The HTTP service: a thin FastAPI layer over :class:`serving.recommender.Recommender`.

Endpoints: ``POST /v1/recommendations``, ``POST /v1/feedback`` (API key), ``GET
/v1/recommendations/{request_id}/explanation``, ``POST /v1/admin/reload`` and ``POST /v1/admin/rollback`` (API
key), ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and ``/openapi.json``. Every error is a JSON body
with a 4xx status (``{"error": ..., "detail": ...}``); request bodies are size-limited. Every request is logged as
one JSON line (``recflow.access``; see :mod:`serving.logs`).
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NaiveDatetime
from starlette.exceptions import HTTPException as StarletteHTTPException

from recflow.errors import RecflowError
from serving.logs import ACCESS_LOGGER, level_number, log_event
from serving.recommender import Recommender

API_KEY_ENV = "RECFLOW_API_KEY"
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class Context(BaseModel):
    """What the shop knows about the request; absent fields come from the user's latest context."""

    model_config = ConfigDict(extra="forbid")
    hour: int | None = Field(None, ge=0, le=23, description="Local hour of day.")
    weekday: int | None = Field(None, ge=0, le=6, description="0 = Monday.")
    device: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[\x21-\x7e]+$")
    region: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")


class HistoryEvent(BaseModel):
    """One event of the user's recent history, as the shop logged it."""

    model_config = ConfigDict(extra="forbid")
    item_id: Id
    event_type: Literal["view", "click", "add_to_cart", "purchase"] | None = Field(
        None, description="What the user did with the item (default: unknown, as for a plain item id)."
    )
    timestamp: AwareDatetime | NaiveDatetime | None = Field(
        None, description="ISO 8601 (UTC when no offset is given); default: the order of the list."
    )


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    context: Context | None = None
    k: int = Field(10, ge=1, le=100, description="Slate size.")
    exclude: list[Id] = Field(default_factory=list, max_length=1000, description="Item ids never to show.")
    history: list[Id | HistoryEvent] = Field(
        default_factory=list,
        max_length=100,
        description="The user's recent history, oldest first: plain item ids (type and time unknown) or "
        "objects {item_id, event_type, timestamp}. A sequence model serves every user from it (for a known "
        "user it replaces the stored history); a two-tower model uses it for users it has not seen.",
    )


class SlateItem(BaseModel):
    item_id: str
    position: int
    score: float
    click_probability: float | None = Field(
        None, description="The ranking model's click estimate; null when a baseline bundle (no click model) served"
    )
    propensity: float


class RecommendationResponse(BaseModel):
    request_id: str
    user_id: str
    items: list[SlateItem]
    model_version: str
    policy_id: str
    variant: str
    cold_start: bool


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_type: Literal["impression", "view", "click", "add_to_cart", "remove_from_cart", "purchase"]
    item_id: Id
    request_id: Id | None = None
    user_id: Id | None = None
    event_id: Id | None = None
    session_id: Id | None = None
    timestamp: str | None = Field(None, max_length=40, description="ISO 8601; default: when received.")
    price: float | None = Field(None, ge=0, le=1e9)
    order_value: float | None = Field(None, ge=0, le=1e12)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[FeedbackEvent] = Field(min_length=1, max_length=500)


class FeedbackResponse(BaseModel):
    accepted: int


class ErrorBody(BaseModel):
    """Every error response: a short machine-readable kind and a human-readable detail."""

    error: str = Field(description="invalid_request, http_error, bad_request or payload_too_large.")
    detail: Any = Field(description="What was wrong (for invalid_request: a list of {loc, msg}).")


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "The request was well-formed but cannot be served (e.g. every item excluded).",
        401: "Missing or wrong API key, or the server has none configured.",
        404: "Unknown or expired request id.",
        409: "The operation does not apply to this service.",
        413: "The body is larger than serving.max_body_bytes.",
        422: "The body failed validation; detail lists each problem with its location.",
    }
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}


API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="ApiKey", description=f"The server's ${API_KEY_ENV}."
)
BEARER = HTTPBearer(
    auto_error=False, scheme_name="Bearer", description=f"Authorization: Bearer <${API_KEY_ENV}>."
)


class _ServiceCollector:
    """Counters and gauges read from the recommender at scrape time (the live one, across hot swaps)."""

    def __init__(self, recommender_ref: Callable[[], Recommender]) -> None:
        self.ref = recommender_ref

    def collect(self) -> Any:
        rec = self.ref()
        yield GaugeMetricFamily(
            "recflow_feedback_learner_lag_events",
            "Feedback events not yet learned by the online policy",
            value=rec.learner_lag(),
        )
        yield GaugeMetricFamily(
            "recflow_feedback_log_age_seconds",
            "Seconds since the last feedback append (-1: none yet)",
            value=_age(rec),
        )


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    With several workers (``PROMETHEUS_MULTIPROC_DIR`` set by ``recflow serve --workers``) the counters and the
    histogram are summed over the workers by prometheus_client's multiprocess collector; the two gauges read at
    scrape time (learner lag, log age) are the scraped worker's own.
    """

    def __init__(self, recommender_ref: Callable[[], Recommender]) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter(
            "recflow_http_requests_total",
            "HTTP requests by endpoint and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recflow_http_request_seconds",
            "HTTP request latency by endpoint and status",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model = Gauge(
            "recflow_model_version_info",
            "Model version served per variant, and its kind: model, or baseline (the run's best baseline, pushed "
            "when its candidate lost); value 1; with several workers, one series per worker pid",
            ["variant", "version", "kind"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.feedback = Counter(
            "recflow_feedback_events",
            "Feedback events appended to the log, by A/B variant and event type ('unattributed': no known request "
            "id); the click rate is rate(clicks) / rate(impressions) in PromQL",
            ["variant", "event_type"],
            registry=self.registry,
        )
        self.model_events = {
            "swap": Counter("recflow_model_swaps", "Hot swaps done", registry=self.registry),
            "rollback": Counter("recflow_model_rollbacks", "Rollbacks done", registry=self.registry),
            "swap_rejected": Counter(
                "recflow_model_rejected", "Model versions rejected at load or warm-up", registry=self.registry
            ),
        }
        self._shown: set[tuple[str, str]] = set()
        service = _ServiceCollector(recommender_ref)
        if self.multiprocess:
            from prometheus_client import multiprocess

            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition)
            self.exposition.register(service)  # type: ignore[arg-type]
        else:
            self.registry.register(service)  # type: ignore[arg-type]
            self.exposition = self.registry
        from serving.canary import register_metrics as register_canary_metrics

        register_canary_metrics(self.exposition, lambda: recommender_ref().canary)

    def count_feedback(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.feedback.labels(str(r.get("variant") or "unattributed"), str(r["event_type"])).inc()

    def count_model_event(self, event: str) -> None:
        if event in self.model_events:
            self.model_events[event].inc()

    def refresh_versions(self, rec: Recommender) -> None:
        shown = {(name, variant.bundle.version, getattr(variant.bundle, "kind", "model"))
                 for name, variant in rec.variants.items()}
        for labels in self._shown - shown:
            if self.multiprocess:
                self.model.labels(*labels).set(0)  # a multiprocess gauge's series cannot be removed
            else:
                self.model.remove(*labels)
        for labels in shown:
            self.model.labels(*labels).set(1)
        self._shown = shown


def _age(rec: Recommender) -> float:
    fb = rec.feedback_log
    return -1.0 if fb is None or not fb.last_append_unix else time.time() - fb.last_append_unix


def _error(status: int, error: str, detail: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail})


def create_app(
    recommender: Recommender, *, api_key: str | None = None, watch: bool = True, warm_explanations: bool = True
) -> FastAPI:
    """The FastAPI app serving ``recommender``. ``api_key`` defaults to ``$RECFLOW_API_KEY``; without one the
    write and admin endpoints answer 401 (they are never open by accident). ``watch``: hot-swap new champions of
    the store; ``warm_explanations``: explain one slate in the background at start-up (when
    ``serving.warm_explanations``)."""
    config = recommender.config
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if key is None:
        log_event(
            "no_api_key",
            logging.WARNING,
            detail=f"{API_KEY_ENV} is not set: POST /v1/feedback and the admin endpoints will answer 401 "
            f"to every request; export {API_KEY_ENV}=<secret> before starting the service",
        )
    state = {"rec": recommender}
    metrics = Metrics(lambda: state["rec"])
    metrics.refresh_versions(recommender)
    recommender.on_event = metrics.count_model_event
    app = FastAPI(title="recflow recommendations", version="1", description=__doc__)
    app.state.recommender = recommender
    app.state.metrics = metrics

    def check_key(
        x_api_key: Annotated[str | None, Security(API_KEY_HEADER)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    ) -> None:
        given = x_api_key or (bearer.credentials if bearer is not None else None)
        if key is None:
            raise HTTPException(
                401, f"this endpoint needs an API key and the server has none: set {API_KEY_ENV}"
            )
        if given is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(401, "missing or wrong API key (X-API-Key header or Authorization: Bearer)")

    read_deps = [Depends(check_key)] if config.require_key_for_reads else []
    read_errors = (401,) if config.require_key_for_reads else ()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        return _error(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", exc.detail)

    @app.exception_handler(RecflowError)
    async def recflow_error(_: Request, exc: RecflowError) -> JSONResponse:
        return _error(400, "bad_request", str(exc))

    @app.post(
        "/v1/recommendations",
        response_model=RecommendationResponse,
        dependencies=read_deps,
        responses=_responses(400, *read_errors, 413, 422),
    )
    async def recommend(body: RecommendationRequest, request: Request) -> dict[str, Any]:
        # A few milliseconds of CPU: run it on the event loop rather than pay a thread hop per request.
        rec = state["rec"]
        access = request.scope.get(ACCESS_KEY)
        if access is not None:
            access["user_id"] = body.user_id
        if body.k > config.max_k:
            raise HTTPException(422, f"k: at most {config.max_k}")
        ctx = body.context.model_dump(exclude_none=True) if body.context else None
        history = [h if isinstance(h, str) else h.model_dump(exclude_none=True) for h in body.history]
        out = rec.recommend(body.user_id, ctx, body.k, history or None, body.exclude or None)
        if access is not None:
            access.update(request_id=out.request_id, variant=out.variant, model_version=out.model_version)
        result = out.to_dict()
        for item in result["items"]:
            for field in ("score", "click_probability"):
                if item[field] is not None and not math.isfinite(item[field]):
                    item[field] = 0.0
        return result

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        dependencies=[Depends(check_key)],
        responses=_responses(400, 401, 413, 422),
    )
    async def feedback(body: FeedbackRequest) -> dict[str, int]:
        events = [e.model_dump(exclude_none=True) for e in body.events]
        rows = await run_in_threadpool(state["rec"].record_feedback, events)
        metrics.count_feedback(rows)
        return {"accepted": len(rows)}

    @app.get(
        "/v1/recommendations/{request_id}/explanation",
        dependencies=read_deps,
        responses=_responses(*read_errors, 404),
    )
    def explanation(request_id: str) -> dict[str, Any]:
        try:
            return state["rec"].explain(request_id)
        except KeyError:
            raise HTTPException(404, f"request {request_id!r} is unknown or too old to explain") from None

    @app.post("/v1/admin/reload", dependencies=[Depends(check_key)], responses=_responses(401))
    def reload() -> dict[str, str]:
        outcome = state["rec"].check_for_new_champion()
        metrics.refresh_versions(state["rec"])
        return {"outcome": outcome, "model_version": state["rec"].champion.version}

    @app.post("/v1/admin/rollback", dependencies=[Depends(check_key)], responses=_responses(401, 409))
    def rollback() -> dict[str, str]:
        rec = state["rec"]
        if rec.store is None:
            raise HTTPException(409, "this service was not started from a model store")
        outcome = rec.rollback()
        metrics.refresh_versions(rec)
        return {"outcome": outcome, "model_version": rec.champion.version}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        rec = state["rec"]
        return JSONResponse(
            {
                "status": "ready",
                "model_version": rec.champion.version,
                "variants": {n: v.bundle.version for n, v in rec.variants.items()},
            }
        )

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        metrics.refresh_versions(state["rec"])
        return Response(generate_latest(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    @app.on_event("startup")
    def start_background() -> None:
        if watch:
            recommender.start_watcher()
        if warm_explanations and config.warm_explanations:
            recommender.start_explainer_warmup()

    app.add_middleware(
        MeasureAndLimit,
        metrics=metrics,
        max_body_bytes=config.max_body_bytes,
        access_level=level_number(config.access_log_level),
    )
    return app


ACCESS_KEY = "recflow.access"  # the scope entry the handler fills with what the access log line reports


class MeasureAndLimit:
    """Pure ASGI middleware: rejects bodies over the limit (413) and records request counts and latency.

    (Starlette's ``BaseHTTPMiddleware`` costs about a millisecond per request; this costs microseconds.)
    """

    def __init__(
        self, app: Any, metrics: Metrics, max_body_bytes: int, access_level: int = logging.INFO
    ) -> None:
        self.app = app
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
            response = _error(413, "payload_too_large", f"bodies are limited to {limit} bytes")
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
