"""The HTTP service's request and response bodies (pydantic models; they are the OpenAPI document's schemas)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NaiveDatetime

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


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


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "The request was well-formed but cannot be served (e.g. every item excluded).",
        401: "Missing or wrong API key, or the server has none configured.",
        404: "Unknown or expired request id.",
        409: "The operation does not apply to this service.",
        413: "The body is larger than serving.max_body_bytes.",
        422: "The body failed validation; detail lists each problem with its location.",
    }
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}

