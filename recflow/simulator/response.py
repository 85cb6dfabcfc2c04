"""How users respond to slates (sampled from the World's probabilities), how satiation evolves, and how one
batch of requests becomes rows of the recflow ``events`` table. Shared by the batch generator and the
step-by-step environment, so both produce the same behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recflow.schema import EVENT_TYPES
from recflow.simulator.world import Context, World

#: Codes of the event types, in funnel order (indices into recflow.schema.EVENT_TYPES).
IMPRESSION, VIEW, CLICK, ADD_TO_CART, REMOVE_FROM_CART, PURCHASE = range(6)


@dataclass(frozen=True)
class SlateResponse:
    """A batch of users' sampled reactions to their slates; every array is (B, K)."""

    click: np.ndarray
    click_delay_s: np.ndarray
    dwell_s: np.ndarray
    cart: np.ndarray
    purchase: np.ndarray
    remove: np.ndarray
    quantity: np.ndarray
    price: np.ndarray
    after_cart_s: np.ndarray


def sample_response(
    world: World,
    user_idx: np.ndarray,
    slates: np.ndarray,
    context: Context,
    day: int,
    satiation: np.ndarray,
    rng: np.random.Generator,
) -> SlateResponse:
    """Sample clicks, dwell, carts, removals and purchases for slates (B, K) of item indices.

    ``satiation`` holds the users' current satiation per category (B, C). The draws are made in a fixed order
    and shape, so the outcome depends only on the inputs and the generator state.
    """
    c = world.config
    b, k = slates.shape
    positions = np.broadcast_to(np.arange(k), (b, k))
    logit = world.attraction_logits(user_idx, slates, context, day, satiation)
    p_click = world.examination(positions, c.position_bias) / (1.0 + np.exp(-logit))
    p_cart, p_buy = world.funnel_probabilities(user_idx, slates, context, day)
    u = rng.random((4, b, k))
    click = u[0] < p_click
    cart = click & (u[1] < p_cart)
    purchase = cart & (u[2] < p_buy)
    remove = cart & ~purchase & (u[3] < c.remove_rate)
    # Dwell grows with interest: the attraction logit relative to the calibrated intercept.
    interest = logit - world.click_intercept - world.interest_mean
    dwell = np.exp(np.log(c.dwell_median_s) + 0.25 * interest + rng.normal(0.0, 0.6, size=(b, k)))
    dwell = np.round(np.clip(dwell, 1.0, 3600.0), 1)
    quantity = np.where(purchase, 1 + rng.poisson(c.extra_quantity_mean, size=(b, k)), 0)
    click_delay = 1.0 + rng.exponential(6.0, size=(b, k))
    after_cart = 30.0 + rng.exponential(300.0, size=(b, k))
    return SlateResponse(
        click, click_delay, dwell, cart, purchase, remove, quantity, world.prices(day)[slates], after_cart
    )


def decay_satiation(satiation: np.ndarray, elapsed_ms: np.ndarray, half_life_hours: float) -> np.ndarray:
    """Satiation (B, C) after ``elapsed_ms`` (B,) of simulated time: exponential decay with the half-life."""
    hours = np.clip(np.asarray(elapsed_ms, dtype=float), 0.0, None) / 3_600_000.0
    return satiation * (0.5 ** (hours / half_life_hours))[:, None]


def satiation_increment(world: World, slates: np.ndarray, response: SlateResponse) -> np.ndarray:
    """What one slate adds to each user's satiation per category (B, C): shown share, clicks, purchases."""
    c = world.config
    b, k = slates.shape
    n_cat = world.n_categories
    flat = (np.arange(b)[:, None] * n_cat + world.item_category[slates]).ravel()

    def per_category(weights: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=weights.ravel().astype(float), minlength=b * n_cat).reshape(b, n_cat)

    return (
        c.satiation_shown * per_category(np.full((b, k), 1.0 / k))
        + c.satiation_click * per_category(response.click)
        + c.satiation_purchase * per_category(response.purchase)
    )


def events_from_response(
    slates: np.ndarray,
    propensities: np.ndarray | None,
    response: SlateResponse,
    request_ms: np.ndarray,
    row_codes: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The event rows of a batch of requests as columns of codes and numbers (not yet strings).

    ``row_codes`` maps column names (user, session, request, hour, weekday, device, region) to per-request
    arrays (B,), repeated onto each event. Returns columns ``type, timestamp_ms, item, position, price,
    order_value, dwell_s, propensity`` plus the ``row_codes`` columns; rows are impressions, clicks, views,
    carts, removals and purchases.
    """
    b, k = slates.shape
    position = np.broadcast_to(np.arange(k, dtype=np.int32), (b, k))
    shown_ms = np.broadcast_to(np.asarray(request_ms, dtype=np.int64)[:, None], (b, k))
    click_ms = shown_ms + (response.click_delay_s * 1000).astype(np.int64)
    view_ms = click_ms + 500
    cart_ms = view_ms + (response.dwell_s * 1000).astype(np.int64)
    after_ms = cart_ms + (response.after_cart_s * 1000).astype(np.int64)
    prop = np.full((b, k), np.nan) if propensities is None else propensities
    nan = np.full((b, k), np.nan)
    parts = [
        (IMPRESSION, np.ones((b, k), dtype=bool), shown_ms, nan, nan),
        (CLICK, response.click, click_ms, nan, nan),
        (VIEW, response.click, view_ms, nan, response.dwell_s),
        (ADD_TO_CART, response.cart, cart_ms, nan, nan),
        (REMOVE_FROM_CART, response.remove, after_ms, nan, nan),
        (PURCHASE, response.purchase, after_ms, response.price * response.quantity, nan),
    ]
    rows_of_request = np.broadcast_to(np.arange(b)[:, None], (b, k))
    cols: dict[str, list[np.ndarray]] = {
        name: []
        for name in (
            "type",
            "timestamp_ms",
            "item",
            "position",
            "price",
            "order_value",
            "dwell_s",
            "propensity",
            "_row",
        )
    }
    for code, mask, ts, order_value, dwell in parts:
        n = int(mask.sum())
        cols["type"].append(np.full(n, code, dtype=np.int8))
        cols["timestamp_ms"].append(ts[mask])
        cols["item"].append(slates[mask])
        cols["position"].append(position[mask])
        cols["price"].append(response.price[mask])
        cols["order_value"].append(order_value[mask])
        cols["dwell_s"].append(dwell[mask])
        cols["propensity"].append(prop[mask])
        cols["_row"].append(rows_of_request[mask])
    out = {name: np.concatenate(parts_) for name, parts_ in cols.items()}
    row = out.pop("_row")
    for name, values in row_codes.items():
        out[name] = np.asarray(values)[row]
    return out


def events_frame(
    world: World,
    columns: dict[str, np.ndarray],
    policy_id: str | None,
    id_prefix: str = "",
    first_event: int = 0,
) -> pd.DataFrame:
    """Turn code columns (from :func:`events_from_response`, concatenated) into the recflow ``events`` table.

    Rows are sorted by timestamp (stably, so impressions keep slate order); event ids are
    ``{id_prefix}e{n:010d}`` numbered from ``first_event``, sessions ``{id_prefix}s{n:08d}`` and requests
    ``{id_prefix}r{n:09d}`` from their integer codes.
    """
    c = world.config
    order = np.argsort(columns["timestamp_ms"], kind="stable")
    col = {name: values[order] for name, values in columns.items()}
    n = len(order)

    def names(codes: np.ndarray, letter: str, width: int) -> np.ndarray:
        uniq, inverse = np.unique(codes, return_inverse=True)
        labels = np.array([f"{id_prefix}{letter}{u:0{width}d}" for u in uniq.tolist()], dtype=object)
        return labels[inverse]

    return pd.DataFrame(
        {
            "event_id": np.array(
                [f"{id_prefix}e{i:010d}" for i in range(first_event, first_event + n)], dtype=object
            ),
            "event_type": np.array(EVENT_TYPES, dtype=object)[col["type"]],
            "timestamp": pd.to_datetime(col["timestamp_ms"], unit="ms", utc=True),
            "user_id": world.user_ids[col["user"]],
            "item_id": world.item_ids[col["item"]],
            "session_id": names(col["session"], "s", 8),
            "request_id": names(col["request"], "r", 9),
            "position": col["position"].astype(np.int32),
            "price": col["price"].astype(float),
            "order_value": col["order_value"].astype(float),
            "dwell_time_s": col["dwell_s"].astype(float),
            "hour": col["hour"].astype(np.int8),
            "weekday": col["weekday"].astype(np.int8),
            "device": np.array(c.devices, dtype=object)[col["device"]],
            "region": np.array(c.regions, dtype=object)[col["region"]],
            "policy_id": np.full(n, policy_id, dtype=object),
            "propensity": col["propensity"].astype(float),
        }
    )
