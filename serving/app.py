"""The HTTP service: a thin FastAPI layer over :class:`serving.recommender.Recommender`.

Endpoints (:mod:`serving.routes`): ``POST /v1/recommendations``, ``POST /v1/feedback`` (API key), ``GET
/v1/recommendations/{request_id}/explanation``, ``POST /v1/admin/reload`` and ``POST /v1/admin/rollback`` (API
key), ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and ``/openapi.json``. Every error is a JSON body
with a 4xx status (``{"error": ..., "detail": ...}``); request bodies are size-limited. Every request is logged as
one JSON line (``recflow.access``; see :mod:`serving.logs`). Recommendations are computed off the event loop,
micro-batched when requests queue (:mod:`serving.batching`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recflow.errors import RecflowError
from serving.batching import MicroBatcher
from serving.logs import level_number, log_event
from serving.metrics import LATENCY_BUCKETS, Metrics  # noqa: F401  (re-exported)
from serving.middleware import ACCESS_KEY, Drain, MeasureAndLimit, error_response  # noqa: F401  (re-exported)
from serving.recommender import Recommender
from serving.routes import API_KEY_ENV, Service, make_router


def _warn_without_key() -> None:
    log_event(
        "no_api_key",
        logging.WARNING,
        detail=f"{API_KEY_ENV} is not set: POST /v1/feedback and the admin endpoints will answer 401 "
        f"to every request; export {API_KEY_ENV}=<secret> before starting the service",
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()]
        return error_response(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", exc.detail)

    @app.exception_handler(RecflowError)
    async def recflow_error(_: Request, exc: RecflowError) -> JSONResponse:
        return error_response(400, "bad_request", str(exc))


def create_app(
    recommender: Recommender,
    *,
    api_key: str | None = None,
    watch: bool = True,
    warm_explanations: bool = True,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``recommender``. ``api_key`` defaults to ``$RECFLOW_API_KEY``; without one the
    write and admin endpoints answer 401 (they are never open by accident). ``watch``: hot-swap new champions of
    the store; ``warm_explanations``: explain one slate in the background at start-up (when
    ``serving.warm_explanations``). Both start in the app's lifespan, which at shutdown stops the batcher (after
    the requests it holds) and then calls ``on_shutdown``."""
    config = recommender.config
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if key is None:
        _warn_without_key()
    metrics = Metrics(lambda: recommender)
    metrics.refresh_versions(recommender)
    recommender.on_event = metrics.count_model_event
    batcher: MicroBatcher = MicroBatcher(config.batch_max_size, config.batch_max_wait_ms / 1000.0,
                                         name="recommendation-batcher")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if watch:
            recommender.start_watcher()
        if warm_explanations and config.warm_explanations:
            recommender.start_explainer_warmup()
        try:
            yield
        finally:
            batcher.stop()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(title="recflow recommendations", version="1", description=__doc__, lifespan=lifespan)
    app.state.service = Service(recommender, metrics, batcher, key)
    app.state.recommender = recommender
    app.state.metrics = metrics
    app.state.drain = Drain()  # set before the worker is retired (serving.workers)
    _add_error_handlers(app)
    app.include_router(make_router(config.require_key_for_reads))
    app.add_middleware(
        MeasureAndLimit,
        metrics=metrics,
        max_body_bytes=config.max_body_bytes,
        access_level=level_number(config.access_log_level),
        drain=app.state.drain,
    )
    return app
