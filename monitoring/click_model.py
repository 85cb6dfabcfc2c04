"""The reference window's click model: which impressions would have been clicked under the old behaviour.

The drift job (:mod:`monitoring.drift`) compares a window's clicks with the clicks this model expects, so the
CTR tests see a change of the click behaviour itself rather than of the mix of users, hours and slates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from monitoring.config import DriftConfig
from monitoring.features import impression_features


def labelled_impressions(events: pd.DataFrame) -> pd.DataFrame | None:
    """The impressions, in log order, with ``clicked`` (1 when a click has the same request and item), else None.

    None when the log has no ``request_id`` (clicks cannot be matched to the impression they came from).
    """
    if "request_id" not in events.columns:
        return None
    kinds = events["event_type"]
    imp = events[kinds == "impression"]
    if imp["request_id"].isna().all():
        return None
    clicks = events.loc[kinds == "click", ["request_id", "item_id"]].astype(str).drop_duplicates()
    key = imp["request_id"].astype(str) + "\x1f" + imp["item_id"].astype(str)
    clicked = set(clicks["request_id"] + "\x1f" + clicks["item_id"])
    out = imp.copy()
    out["clicked"] = key.isin(clicked).astype(np.int8).to_numpy()
    return out


def _click_features(imp: pd.DataFrame, items: pd.DataFrame | None, users: pd.DataFrame | None) -> pd.DataFrame:
    """What the click model conditions on: the monitored impression features (:func:`impression_features`),
    with the slot position added and the hour and weekday recoded (a cycle, a weekend flag)."""
    monitored = impression_features(imp, items, users).set_axis(imp.index)
    out = pd.DataFrame(index=imp.index)
    if "score" in monitored.columns:
        out["score"] = monitored["score"]
    if "position" in imp.columns:
        out["log_position"] = np.log1p(pd.to_numeric(imp["position"], errors="coerce"))
    if "hour" in monitored.columns:
        hour = monitored["hour"]
        out["hour_sin"], out["hour_cos"] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
    if "weekday" in monitored.columns:
        out["weekend"] = (pd.to_numeric(monitored["weekday"], errors="coerce") >= 5).astype(str)
    for col in ("device", "region", "segment"):
        if col in monitored.columns:
            out[col] = monitored[col]
    if "shown_category" in monitored.columns:
        out["category"] = monitored["shown_category"]
    return out


@dataclass
class ClickModel:
    """The reference's click probability of an impression given what the champion scored and the context.

    A logistic regression (scikit-learn) on the score, slot position, hour, weekend, device, region, user
    segment and item category, fitted on the reference window's labelled impressions. Comparing a window's
    clicks with its predicted clicks removes what the mix of users, hours and slates explains, so the CTR tests
    see the change of the click behaviour itself (risk adjustment, as in Steiner et al.'s risk-adjusted CUSUM).
    """

    pipeline: Any
    columns: list[str]
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    #: the reference's levels of each categorical column and the most frequent one (which unseen levels get)
    levels: dict[str, tuple[set[str], str]] = field(default_factory=dict)

    def predict(self, impressions: pd.DataFrame) -> np.ndarray:
        """Click probability of each impression (rows in the given order).

        A level the reference never had (a weekend after a weekday reference, a new region) counts as the
        reference's most frequent level: a one-hot encoder would give it no column at all, which shifts the
        prediction by the dropped columns' weights instead of leaving it at a typical value.
        """
        features = _click_features(impressions, self.items, self.users)
        for col in self.columns:
            if col not in features.columns:
                features[col] = np.nan
        for col, (known, mode) in self.levels.items():
            features[col] = features[col].where(features[col].isin(known), mode)
        return np.asarray(self.pipeline.predict_proba(features[self.columns])[:, 1], dtype=float)


def fit_click_model(reference: pd.DataFrame, config: DriftConfig, items: pd.DataFrame | None = None,
                    users: pd.DataFrame | None = None) -> ClickModel | None:
    """Fit :class:`ClickModel` on the reference, or None (no request ids, too few clicks, nothing to condition on)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    imp = labelled_impressions(reference)
    if imp is None or int(imp["clicked"].sum()) < config.min_clicks:
        return None
    features = _click_features(imp, items, users)
    features = features.loc[:, features.nunique(dropna=True) > 1]  # a constant column says nothing
    if features.empty:
        return None
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    transform = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", OneHotEncoder(handle_unknown="ignore", min_frequency=20), categorical)])
    model = make_pipeline(transform, LogisticRegression(C=1.0, max_iter=1000))
    model.fit(features, imp["clicked"].to_numpy())
    levels = {c: (set(features[c].unique()), str(features[c].mode().iloc[0])) for c in categorical}
    return ClickModel(model, list(features.columns), items, users, levels)
