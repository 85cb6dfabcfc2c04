"""The HTTP service's endpoints, in one :class:`fastapi.APIRouter` over the app's :class:`Service`.

Handlers stay thin: they validate (pydantic), hand the work to the recommender -- recommendations through the
app's :class:`serving.batching.MicroBatcher` (off the event loop), feedback and admin calls on the thread pool --
and shape the answer.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.batching import MicroBatcher
from serving.metrics import Metrics
from serving.middleware import ACCESS_KEY
from serving.recommender import Recommendation, Recommender
from serving.schemas import FeedbackRequest, FeedbackResponse, RecommendationRequest, RecommendationResponse
from serving.schemas import responses as _responses

API_KEY_ENV = "RECFLOW_API_KEY"
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="ApiKey", description=f"The server's ${API_KEY_ENV}."
)
BEARER = HTTPBearer(
    auto_error=False, scheme_name="Bearer", description=f"Authorization: Bearer <${API_KEY_ENV}>."
)


@dataclass
class Service:
    """What the endpoints share: the live recommender (replaced by nothing: swaps happen inside it), its
    metrics, the batcher that computes recommendations and the API key (None: write endpoints answer 401)."""

    rec: Recommender
    metrics: Metrics
    batcher: MicroBatcher[Recommendation]
    api_key: str | None


def service(request: Request) -> Service:
    return request.app.state.service


#: The handlers' parameter that receives the app's :class:`Service`.
Svc = Annotated[Service, Depends(service)]


def check_key(
    request: Request,
    x_api_key: Annotated[str | None, Security(API_KEY_HEADER)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> None:
    """The API key dependency: ``X-API-Key`` or ``Authorization: Bearer``, compared in constant time."""
    key = service(request).api_key
    given = x_api_key or (bearer.credentials if bearer is not None else None)
    if key is None:
        raise HTTPException(401, f"this endpoint needs an API key and the server has none: set {API_KEY_ENV}")
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        raise HTTPException(401, "missing or wrong API key (X-API-Key header or Authorization: Bearer)")


def _slate(out: Recommendation) -> dict[str, Any]:
    result = out.to_dict()
    for item in result["items"]:
        for field in ("score", "click_probability"):
            if item[field] is not None and not math.isfinite(item[field]):
                item[field] = 0.0
    return result


def make_router(require_key_for_reads: bool = False) -> APIRouter:
    """The service's routes; ``require_key_for_reads`` puts the API key on the read endpoints too."""
    router = APIRouter()
    read_deps = [Depends(check_key)] if require_key_for_reads else []
    read_errors = (401,) if require_key_for_reads else ()

    @router.post("/v1/recommendations", response_model=RecommendationResponse, dependencies=read_deps,
                 responses=_responses(400, *read_errors, 413, 422))
    async def recommend(body: RecommendationRequest, request: Request, svc: Svc) -> dict[str, Any]:
        rec = svc.rec
        access = request.scope.get(ACCESS_KEY)
        if access is not None:
            access["user_id"] = body.user_id
        if body.k > rec.config.max_k:
            raise HTTPException(422, f"k: at most {rec.config.max_k}")
        ctx = body.context.model_dump(exclude_none=True) if body.context else None
        history = [h if isinstance(h, str) else h.model_dump(exclude_none=True) for h in body.history]
        out = await svc.batcher.submit(rec.recommend, body.user_id, ctx, body.k, history or None,
                                       body.exclude or None)
        if access is not None:
            access.update(request_id=out.request_id, variant=out.variant, model_version=out.model_version)
        return _slate(out)

    @router.post("/v1/feedback", response_model=FeedbackResponse, dependencies=[Depends(check_key)],
                 responses=_responses(400, 401, 413, 422))
    async def feedback(body: FeedbackRequest, svc: Svc) -> dict[str, int]:
        events = [e.model_dump(exclude_none=True) for e in body.events]
        rows = await run_in_threadpool(svc.rec.record_feedback, events)
        svc.metrics.count_feedback(rows)
        return {"accepted": len(rows)}

    @router.get("/v1/recommendations/{request_id}/explanation", dependencies=read_deps,
                responses=_responses(*read_errors, 404))
    def explanation(request_id: str, svc: Svc) -> dict[str, Any]:
        try:
            return svc.rec.explain(request_id)
        except KeyError:
            raise HTTPException(404, f"request {request_id!r} is unknown or too old to explain") from None

    @router.post("/v1/admin/reload", dependencies=[Depends(check_key)], responses=_responses(401))
    def reload(svc: Svc) -> dict[str, str]:
        outcome = svc.rec.check_for_new_champion()
        svc.metrics.refresh_versions(svc.rec)
        return {"outcome": outcome, "model_version": svc.rec.champion.version}

    @router.post("/v1/admin/rollback", dependencies=[Depends(check_key)], responses=_responses(401, 409))
    def rollback(svc: Svc) -> dict[str, str]:
        if svc.rec.store is None:
            raise HTTPException(409, "this service was not started from a model store")
        outcome = svc.rec.rollback()
        svc.metrics.refresh_versions(svc.rec)
        return {"outcome": outcome, "model_version": svc.rec.champion.version}

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz(svc: Svc) -> JSONResponse:
        rec = svc.rec
        return JSONResponse({"status": "ready", "model_version": rec.champion.version,
                             "variants": {n: v.bundle.version for n, v in rec.variants.items()},
                             "ranking_engine": rec.champion.ranking_engine})

    @router.get("/metrics")
    def prometheus_metrics(svc: Svc) -> Response:
        svc.metrics.refresh_versions(svc.rec)
        return Response(generate_latest(svc.metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    return router
