"""Point-in-time behaviour features: what a user had done strictly before each event.

Every value is computed from the user's strictly earlier events only (events at the same instant do not see
each other), so no feature of an event can leak its own outcome or the future. The same function produces the
serving-time snapshot of each user (:func:`user_state_at`), so training and serving read identical logic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Seconds after which a gap in activity starts a new session when the log has no ``session_id``.
SESSION_GAP_S = 30 * 60
#: Recency assigned to a user's first event (no earlier activity) and the cap on recency.
RECENCY_CAP_S = 30 * 24 * 3600.0

ALWAYS_PRESENT = ("recency_s", "frequency", "session_events")


def behaviour_columns(events: pd.DataFrame) -> list[str]:
    """The behaviour features that can be computed from the fields present in ``events``."""
    cols = list(ALWAYS_PRESENT)
    if spend_column(events) is not None:
        cols.append("monetary")
    if "dwell_time_s" in events.columns and events["dwell_time_s"].notna().any():
        cols.append("dwell_mean")
    return cols


def spend_column(events: pd.DataFrame) -> str | None:
    """Which field measures money spent on purchases (``order_value``, else ``price``), or None."""
    if not (events["event_type"] == "purchase").any():
        return None
    for name in ("order_value", "price"):
        if name in events.columns and events.loc[events["event_type"] == "purchase", name].notna().any():
            return name
    return None


@dataclass(frozen=True)
class BehaviourPlan:
    """The whole log's decisions behind the behaviour features: which columns, which field is the spend, and
    whether logged session ids are used. A part of the log (one shard of users) must be computed with the
    whole log's plan to get the same values."""

    columns: tuple[str, ...]
    spend_col: str | None
    session_ids: bool


def behaviour_plan(events: pd.DataFrame, columns: list[str] | None = None) -> BehaviourPlan:
    """The plan of ``events`` (``columns`` defaults to :func:`behaviour_columns`)."""
    return BehaviourPlan(columns=tuple(columns if columns is not None else behaviour_columns(events)),
                         spend_col=spend_column(events),
                         session_ids=bool("session_id" in events.columns and events["session_id"].notna().all()))


def _session_keys(events: pd.DataFrame, session_ids: bool) -> pd.Series:
    """A session key per event: the logged ``session_id`` or sessions cut at gaps over SESSION_GAP_S."""
    if session_ids:
        return events["session_id"].astype(str)
    gap = events.groupby("user_id", sort=False)["timestamp"].diff().dt.total_seconds()
    new_session = gap.isna() | (gap > SESSION_GAP_S)
    return new_session.groupby(events["user_id"], sort=False).cumsum().astype(np.int64).astype(str)


def add_behaviour_features(events: pd.DataFrame, columns: list[str] | None = None,
                           plan: BehaviourPlan | None = None) -> pd.DataFrame:
    """Return ``events`` (original order and index) with behaviour columns added.

    ``columns`` defaults to :func:`behaviour_columns` of ``events``; ``plan`` (overrides ``columns``) defaults
    to :func:`behaviour_plan` of ``events``.

    ``recency_s``: seconds since the user's previous event (RECENCY_CAP_S when none, capped there);
    ``frequency``: number of earlier events; ``session_events``: earlier events in the same session;
    ``monetary``: money spent on earlier purchases; ``dwell_mean``: mean dwell time of earlier events with one.
    """
    plan = plan or behaviour_plan(events, columns)
    cols, spend_col = list(plan.columns), plan.spend_col
    df = events[["user_id", "timestamp", "event_type"]].copy()
    df["_pos"] = np.arange(len(df))
    df["_spend"] = (events[spend_col].fillna(0.0).where(events["event_type"] == "purchase", 0.0)
                    if spend_col else 0.0)
    has_dwell = "dwell_mean" in cols and "dwell_time_s" in events.columns
    df["_dwell"] = events["dwell_time_s"].fillna(0.0) if has_dwell else 0.0
    df["_dwell_n"] = events["dwell_time_s"].notna().astype(np.int64) if has_dwell else 0
    if "session_id" in events.columns:
        df["session_id"] = events["session_id"]
    df = df.sort_values(["user_id", "timestamp", "_pos"], kind="stable")
    df["_session"] = _session_keys(df, plan.session_ids)

    # Collapse simultaneous events so that cumulative sums over earlier instants exclude ties.
    per_instant = (df.groupby(["user_id", "timestamp"], sort=True)
                   .agg(n=("_pos", "size"), spend=("_spend", "sum"), dwell=("_dwell", "sum"),
                        dwell_n=("_dwell_n", "sum"))
                   .reset_index())
    by_user = per_instant.groupby("user_id", sort=False)
    per_instant["frequency"] = by_user["n"].cumsum() - per_instant["n"]
    per_instant["monetary"] = by_user["spend"].cumsum() - per_instant["spend"]
    dwell_sum = by_user["dwell"].cumsum() - per_instant["dwell"]
    dwell_n = by_user["dwell_n"].cumsum() - per_instant["dwell_n"]
    per_instant["dwell_mean"] = np.where(dwell_n > 0, dwell_sum / dwell_n.clip(lower=1), 0.0)
    prev_ts = by_user["timestamp"].shift(1)
    recency = (per_instant["timestamp"] - prev_ts).dt.total_seconds()
    per_instant["recency_s"] = recency.fillna(RECENCY_CAP_S).clip(upper=RECENCY_CAP_S)

    per_session_instant = (df.groupby(["user_id", "_session", "timestamp"], sort=True)
                           .size().rename("n").reset_index())
    per_session_instant["session_events"] = (
        per_session_instant.groupby(["user_id", "_session"], sort=False)["n"].cumsum() - per_session_instant["n"])

    out = df.merge(per_instant[["user_id", "timestamp", "frequency", "monetary", "dwell_mean", "recency_s"]],
                   on=["user_id", "timestamp"], how="left")
    out = out.merge(per_session_instant[["user_id", "_session", "timestamp", "session_events"]],
                    on=["user_id", "_session", "timestamp"], how="left")
    out = out.sort_values("_pos").reset_index(drop=True)
    result = events.copy()
    for col in cols:
        result[col] = out[col].to_numpy(dtype=np.float64)
    return result


def user_state_at(events: pd.DataFrame, at: pd.Timestamp, columns: list[str] | None = None,
                  recent_n: int = 0, plan: BehaviourPlan | None = None) -> pd.DataFrame:
    """Each user's behaviour features for a request at instant ``at``, from their events strictly before it.

    One row per user with events before ``at``: ``user_id`` plus the columns of :func:`behaviour_columns`
    (and ``recent_items``, the last ``recent_n`` chosen items, when ``recent_n`` > 0).
    Serving looks users up here; a user missing from it is cold and gets the no-history values. ``plan``
    (overrides ``columns``) defaults to the plan of the events before ``at``; a part of the log (one shard of
    users) gives the whole log's rows with the whole log's plan.
    """
    earlier = events[events["timestamp"] < at]
    users = pd.Series(earlier["user_id"].unique(), dtype=object)
    probe = pd.DataFrame({"user_id": users, "timestamp": at, "event_type": "impression"})
    if "session_id" in earlier.columns:
        probe["session_id"] = "__serving__"
    combined = pd.concat([earlier, probe], ignore_index=True)
    cols = list(plan.columns) if plan is not None else (list(columns) if columns is not None
                                                         else behaviour_columns(events))
    feats = add_behaviour_features(combined, cols, plan=plan)
    if recent_n > 0:
        feats["recent_items"] = recent_items(combined, recent_n)
        cols = [*cols, "recent_items"]
    feats = feats.iloc[len(earlier):]
    return feats[["user_id", *cols]].sort_values("user_id").reset_index(drop=True)


def no_history_state(columns: list[str]) -> dict[str, float]:
    """The behaviour values of a user with no earlier activity (cold start)."""
    return {c: (RECENCY_CAP_S if c == "recency_s" else 0.0) for c in columns}


#: Event types that show a user's own choice of item (impressions are the shop's choice, not the user's).
CHOICE_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
#: Padding of ``recent_items`` lists shorter than N (maps to no item).
PAD_ITEM = ""


def recent_items(events: pd.DataFrame, n: int) -> pd.Series:
    """Per event, the ids of the user's last ``n`` chosen items strictly before it, most recent first.

    Chosen means a view, click, add-to-cart or purchase. Lists are padded with PAD_ITEM to length ``n``; the
    Series is aligned with ``events``' index.
    """
    out = pd.Series([None] * len(events), index=events.index, dtype=object)
    chosen = events["event_type"].isin(CHOICE_EVENT_TYPES).to_numpy()
    ts = events["timestamp"].to_numpy()
    items = events["item_id"].astype(str).to_numpy()
    pad = [PAD_ITEM] * n
    for idx in events.groupby("user_id", sort=False).indices.values():
        order = idx[np.argsort(ts[idx], kind="stable")]
        picks = order[chosen[order]]
        pick_ts, pick_items = ts[picks], items[picks]
        positions = np.searchsorted(pick_ts, ts[order], side="left")  # strictly earlier choices only
        for row, k in zip(order, positions, strict=True):
            recent = pick_items[max(0, k - n):k][::-1].tolist()
            out.iat[row] = recent + pad[: n - len(recent)]
    return out
