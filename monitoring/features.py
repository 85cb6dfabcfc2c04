"""The monitored features of a window's impressions (user, item, context and what was shown)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def impression_features(events: pd.DataFrame, items: pd.DataFrame | None = None,
                        users: pd.DataFrame | None = None, known_users: set[str] | None = None,
                        known_items: set[str] | None = None) -> pd.DataFrame:
    """One row per impression with the monitored features (columns the log lacks are left out).

    ``known_users``/``known_items`` (the reference's ids) give the ``user_known``/``item_known`` flags; the
    item's category comes from ``items`` (or a ``category`` column of the log), the segment from ``users``.
    """
    imp = events[events["event_type"] == "impression"]
    out = pd.DataFrame(index=imp.index)
    if users is not None and "segment" in users.columns:
        out["segment"] = imp["user_id"].map(users.set_index("user_id")["segment"]).fillna("unknown").astype(str)
    if known_users is not None:
        out["user_known"] = np.where(imp["user_id"].isin(known_users), "known", "new")
    if "price" in imp.columns:
        out["price"] = pd.to_numeric(imp["price"], errors="coerce")
    if known_items is not None:
        out["item_known"] = np.where(imp["item_id"].isin(known_items), "known", "new")
    for col in ("device", "region"):
        if col in imp.columns:
            out[col] = imp[col].astype("string").fillna("unknown").astype(str)
    if "hour" in imp.columns:
        out["hour"] = pd.to_numeric(imp["hour"], errors="coerce")
    if "weekday" in imp.columns:
        out["weekday"] = pd.to_numeric(imp["weekday"], errors="coerce").astype("Int64").astype(str)
    if "score" in imp.columns:
        out["score"] = pd.to_numeric(imp["score"], errors="coerce")
    category = None
    if "category" in imp.columns:
        category = imp["category"].astype("string").fillna("unknown").astype(str)
    elif items is not None and "category" in items.columns:
        category = imp["item_id"].map(items.drop_duplicates("item_id").set_index("item_id")["category"])
        category = category.fillna("unknown").astype(str)
    if category is not None:
        out["shown_category"] = category
        if "request_id" in imp.columns:
            out["slate_categories"] = category.groupby(imp["request_id"]).transform("nunique").astype(float)
    return out.reset_index(drop=True)


def category_of(events: pd.DataFrame, items: pd.DataFrame | None) -> pd.Series | None:
    """The category of each event's item (None when neither the log nor the catalog has one)."""
    if "category" in events.columns:
        return events["category"].astype("string").fillna("unknown").astype(str)
    if items is not None and "category" in items.columns:
        mapping = items.drop_duplicates("item_id").set_index("item_id")["category"]
        return events["item_id"].map(mapping).fillna("unknown").astype(str)
    return None
