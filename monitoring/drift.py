"""The drift job: compare recent traffic with a reference window and say whether the world moved.

``recflow monitor drift --reference REF --current CUR --out DIR`` calls :func:`run_drift_job`. Both windows are
event-schema logs (a dataset directory, a Parquet or JSON-lines file, or a directory of such files: the
simulator's output, the serving feedback log). Three kinds of drift are checked:

* **feature drift** (Evidently ``DataDriftPreset``) over user (segment, known/new user), item (price, known/new
  item) and context (device, region; hour and weekday reported but not counted) features of every impression;
  declared when the share of drifted columns reaches ``drift_share``;
* **prediction drift** (Evidently) over what was shown: the score (when the log has one), the category of the
  shown item and the number of categories in its slate; declared by the same share rule;
* **target drift**: click-through rate (clicks / impressions) and conversion rate (purchases / clicks) with a
  two-proportion z-test (statsmodels), a sequential test of a CTR drop (a Bernoulli CUSUM over the current
  window, which reacts within a few thousand events), plus the category mix of the clicks (chi-square, scipy).

No verdict is given from too few events: below ``min_events`` in either window the verdict is
``insufficient_data``. Numerical and categorical columns use effect sizes (Wasserstein, Jensen-Shannon) with
explicit thresholds rather than p-values, so a large window does not alarm on trivial shifts, and identical
windows never drift (see docs/monitoring.md for the measured false-alarm rate).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from monitoring.config import DriftConfig
from recflow.errors import DataError
from recflow.io import atomic_path
from recflow.schema import FILE_NAMES

Verdict = Literal["drift", "no_drift", "insufficient_data"]
#: Exit codes of ``recflow monitor drift`` (2 and 3 are taken by user errors and unreachable services).
EXIT_CODES: dict[str, int] = {"no_drift": 0, "drift": 1, "insufficient_data": 4}

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "user": ("segment", "user_known"),
    "item": ("price", "item_known"),
    "context": ("device", "region", "hour", "weekday"),
    "prediction": ("score", "shown_category", "slate_categories"),
}
NUMERICAL = {"price", "score", "hour", "slate_categories"}
_REQUIRED = ("event_type", "user_id", "item_id")


# ---------------------------------------------------------------------------------------------- loading
def _read_json_lines(path: Path) -> pd.DataFrame:
    """A JSON-lines file; a torn final line (a crash mid-append) is skipped, a bad line elsewhere is an error."""
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines) - 1:  # only the last, unterminated line can be torn by a crash
                raise DataError(f"{path}: line {number} is not valid JSON") from None
    return pd.DataFrame(rows)


def _read_one(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".jsonl", ".ndjson"):
            return _read_json_lines(path)
        if path.suffix == ".json":
            return pd.read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from None
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .parquet, .jsonl or .json)")


def _read_feedback_segments(directory: Path) -> pd.DataFrame | None:
    """The serving feedback log in ``directory`` (its own reader, which skips a torn last line), else None.

    Rows keep every logged field (``score`` too), not only the events schema's columns.
    """
    try:
        from serving.feedback_log import iter_feedback, segment_paths
    except ImportError:  # monitoring installed without serving: the generic JSON-lines reader does the same
        return None
    if not segment_paths(directory):
        return None
    return pd.DataFrame(list(iter_feedback(directory)))


def load_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an events log: a dataset directory (events.parquet), a .parquet/.jsonl file, or a directory of them.

    A serving feedback log (``feedback-*.jsonl`` segments) is read with serving's own reader when serving is
    installed; either way a line torn by a crash at the end of a segment is skipped. Raises :class:`DataError`
    naming the file when it is missing, unreadable or lacks a required column.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: events log does not exist")
    if p.is_dir():
        if (p / FILE_NAMES["events"]).is_file():
            files = [p / FILE_NAMES["events"]]
        else:
            files = sorted(f for f in p.iterdir() if f.suffix in (".parquet", ".jsonl", ".ndjson")
                           and f.name not in (FILE_NAMES["items"], FILE_NAMES["users"]) and not f.name.startswith("."))
        if not files:
            raise DataError(f"{p}: no events.parquet and no .parquet/.jsonl event files in this directory")
        feedback = _read_feedback_segments(p)
        if feedback is not None:
            files = [f for f in files if not f.name.startswith("feedback-")]
        frames = [_read_one(f) for f in files] + ([feedback] if feedback is not None else [])
        frames = [f for f in frames if len(f)]
        events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(_REQUIRED))
    else:
        events = _read_one(p)
    missing = [c for c in _REQUIRED if c not in events.columns]
    if missing:
        raise DataError(f"{p}: missing required field(s) {missing} of the events schema (see docs/schema.md)")
    if "timestamp" in events.columns:
        events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True, errors="coerce", format="ISO8601")
        events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return events


def load_side_table(path: str | os.PathLike[str] | None, events_path: str | os.PathLike[str], kind: str
                    ) -> pd.DataFrame | None:
    """The items or users table: ``path`` when given, else ``{kind}.parquet`` beside the events, else None."""
    if path is None:
        base = Path(events_path)
        candidate = (base if base.is_dir() else base.parent) / f"{kind}.parquet"
        if not candidate.is_file():
            return None
        path = candidate
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {kind} table does not exist")
    return _read_one(p)


def last_events(events: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The most recent ``n`` events (all when ``n`` is None)."""
    return events if n is None or len(events) <= n else events.iloc[-n:].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- features
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


# ---------------------------------------------------------------------------------------------- results
@dataclass
class ColumnDrift:
    """Evidently's verdict on one column."""

    column: str
    group: str
    method: str
    score: float
    threshold: float
    drifted: bool
    counted: bool  # whether the column takes part in the verdict (hour/weekday do not)


@dataclass
class RateTest:
    """A target-drift test (a rate or a mix) between reference and current."""

    name: str
    reference: float | None
    current: float | None
    p_value: float | None
    drifted: bool
    detail: str
    relative_change: float | None = None
    statistic: float | None = None  # the sequential test's statistic (CUSUM), when there is one
    threshold: float | None = None
    counted: bool = True  # whether the test takes part in the verdict (the raw CTR test does not when risk-adjusted)


@dataclass
class DriftSummary:
    """Everything the drift job decided; ``to_dict()`` is summary.json."""

    verdict: Verdict
    reasons: list[str]
    reference_events: int
    current_events: int
    min_events: int
    feature_drift: bool = False
    prediction_drift: bool = False
    target_drift: bool = False
    drift_share: float = 0.0
    drifted_features: list[str] = field(default_factory=list)
    columns: list[ColumnDrift] = field(default_factory=list)
    target: list[RateTest] = field(default_factory=list)
    created: str = ""
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 no drift, 1 drift, 4 insufficient data."""
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """The human summary printed by the CLI."""
        lines = [f"drift verdict: {self.verdict.upper()} (reference {self.reference_events} events, current "
                 f"{self.current_events} events, minimum {self.min_events})"]
        lines += [f"  - {r}" for r in self.reasons]
        if self.columns:
            lines.append(f"feature drift share {self.drift_share:.2f}; columns (score / threshold):")
            for c in self.columns:
                mark = "DRIFT" if c.drifted else "ok"
                note = "" if c.counted else "  (informational)"
                lines.append(f"  {c.group:<10} {c.column:<17} {c.score:8.4f} / {c.threshold:<6g} {mark}{note}")
        for t in self.target:
            lines.append(f"target {t.name}: {t.detail}{'  DRIFT' if t.drifted and t.counted else ''}")
        for name, path in self.files.items():
            lines.append(f"{name}: {path}")
        return "\n".join(lines)


def _group_of(column: str) -> str:
    return next((g for g, cols in FEATURE_GROUPS.items() if column in cols), "other")


def evidently_drift(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig,
                    html_path: Path | None = None) -> list[ColumnDrift]:
    """Run Evidently's DataDriftPreset over the columns both frames have; save its HTML report to ``html_path``."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [c for c in reference.columns if c in current.columns
               and reference[c].notna().any() and current[c].notna().any()]
    numerical = [c for c in columns if c in NUMERICAL]
    categorical = [c for c in columns if c not in NUMERICAL]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    preset = DataDriftPreset(columns=columns, drift_share=config.drift_share,
                             num_method=config.numerical_method, num_threshold=config.numerical_threshold,
                             cat_method=config.categorical_method, cat_threshold=config.categorical_threshold,
                             per_column_threshold={c: config.prediction_numerical_threshold for c in numerical
                                                   if c in FEATURE_GROUPS["prediction"]} or None)
    snapshot = Report([preset]).run(
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
        current_data=Dataset.from_pandas(current[columns], data_definition=definition))
    if html_path is not None:
        with atomic_path(html_path) as tmp:
            snapshot.save_html(str(tmp))
    results = []
    for metric in snapshot.dict()["metrics"]:
        cfg = metric["config"]
        if not cfg.get("type", "").endswith(":ValueDrift"):
            continue
        method, threshold, score = str(cfg["method"]), float(cfg["threshold"]), float(metric["value"])
        drifted = score < threshold if "p_value" in method else score >= threshold
        column = str(cfg["column"])
        results.append(ColumnDrift(column, _group_of(column), method, score, threshold, bool(drifted),
                                   column not in config.informational_columns))
    return results


def _count(events: pd.DataFrame, event_type: str) -> int:
    return int((events["event_type"] == event_type).sum())


def _ratio_variance(successes: np.ndarray, trials: np.ndarray) -> float:
    """Variance of sum(successes) / sum(trials) with clusters as units (linearisation), at least the binomial one."""
    n = float(trials.sum())
    r = float(successes.sum()) / n
    clustered = float(((successes - r * trials) ** 2).sum()) / n**2
    return max(clustered, r * (1.0 - r) / n)


def two_proportion_test(name: str, successes: tuple[int, int], trials: tuple[int, int], config: DriftConfig,
                        clusters: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> RateTest:
    """Two-sided two-proportion z-test of reference vs current rate, with a minimum effect.

    Without ``clusters`` the classic pooled z-test (statsmodels). With them (per window, one row per user with
    columns ``successes`` and ``trials``) the variance of each window's rate is the cluster-robust one: one
    user's clicks and purchases are not independent draws, and treating them so makes the test fire on
    no-drift traffic (the benchmark's false alarms came from the CVR test before).
    """
    from statsmodels.stats.proportion import proportions_ztest

    (s_ref, s_cur), (n_ref, n_cur) = successes, trials
    if min(n_ref, n_cur) == 0:
        return RateTest(name, None, None, None, False, "not tested: a window has no trials")
    ref, cur = s_ref / n_ref, s_cur / n_cur
    rel = (cur - ref) / ref if ref > 0 else None
    if s_ref + s_cur == 0 or s_ref + s_cur == n_ref + n_cur:
        return RateTest(name, ref, cur, 1.0, False, f"{ref:.4f} -> {cur:.4f} (no variation)", rel)
    if clusters is None:
        _, p = proportions_ztest([s_cur, s_ref], [n_cur, n_ref], alternative="two-sided")
        how = ""
    else:
        from scipy.stats import norm

        var = sum(_ratio_variance(c["successes"].to_numpy(float), c["trials"].to_numpy(float)) for c in clusters)
        p = 2 * norm.sf(abs(cur - ref) / math.sqrt(var)) if var > 0 else 1.0
        how = ", users as clusters"
    p = float(p)
    drifted = bool(p < config.target_alpha and (rel is None or abs(rel) >= config.min_relative_change))
    rel_text = f"{rel:+.1%}" if rel is not None else "n/a"
    return RateTest(name, ref, cur, p, drifted, f"{ref:.4f} -> {cur:.4f} ({rel_text}, p={p:.2g}{how})", rel)


def _design_effect(categories: pd.Series, users: pd.Series) -> float:
    """Mean design effect of the category shares of clicks when users are the clusters (>= 1)."""
    table = pd.crosstab(users.to_numpy(), categories.to_numpy())
    m = table.sum(axis=1).to_numpy(float)
    total = m.sum()
    effects = []
    for col in table.columns:
        x = table[col].to_numpy(float)
        share = x.sum() / total
        if 0 < share < 1:
            clustered = float(((x - share * m) ** 2).sum()) / total**2
            effects.append(clustered / (share * (1 - share) / total))
    return max(1.0, float(np.mean(effects))) if effects else 1.0


def click_mix_test(ref_clicks: pd.Series, cur_clicks: pd.Series, config: DriftConfig,
                   users: tuple[pd.Series, pd.Series] | None = None) -> RateTest:
    """Chi-square test that clicks fall on the same categories in both windows (a preference shift moves it).

    With ``users`` (the user of each click, per window) the statistic gets the first-order Rao-Scott correction
    (divided by the mean design effect of the category shares with users as clusters): a user clicks the same
    categories again and again, so clicks are not independent.
    """
    from scipy.stats import chi2, chi2_contingency

    table = pd.concat([ref_clicks.value_counts(), cur_clicks.value_counts()], axis=1).fillna(0).to_numpy()
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2 or (table.sum(axis=0) == 0).any():
        return RateTest("click_category_mix", None, None, None, False, "not tested: too few categories clicked")
    stat, p, dof, _ = chi2_contingency(table.T)
    detail = f"chi2={stat:.1f}, dof={dof}"
    if users is not None:
        deff = (_design_effect(ref_clicks, users[0]) + _design_effect(cur_clicks, users[1])) / 2
        stat = stat / deff
        p = chi2.sf(stat, dof)
        detail += f", Rao-Scott design effect {deff:.2f} (users as clusters): {stat:.1f}"
    p = float(p)
    return RateTest("click_category_mix", None, None, p, bool(p < config.target_alpha), f"{detail}, p={p:.2g}")


def cusum_path(increments: np.ndarray) -> np.ndarray:
    """Page's one-sided CUSUM, S_t = max(0, S_{t-1} + x_t) with S_0 = 0, for every t (vectorised)."""
    walk = np.cumsum(np.asarray(increments, dtype=float))
    return walk - np.minimum(np.minimum.accumulate(walk), 0.0)


def ctr_cusum_test(current: pd.DataFrame, reference_ctr: float, config: DriftConfig) -> RateTest:
    """Sequential test of a CTR drop: a one-sided Bernoulli CUSUM over the current window, in time order.

    Each impression adds log((1 - p1) / (1 - p0)) and each click log(p1 / p0) - log((1 - p1) / (1 - p0)) (the
    log-likelihood ratio of "CTR is p1 = (1 - ctr_cusum_drop) p0" against "CTR is p0 = the reference CTR"),
    so a click is credited to the impression before it. Drift when the statistic at the end of the window is
    above ``ctr_cusum_threshold``: the CUSUM is the quickest detector of a change of a known size for a given
    false-alarm rate, where a window z-test must wait for a whole window of drifted traffic.
    """
    p0 = float(reference_ctr)
    p1 = (1.0 - config.ctr_cusum_drop) * p0
    h = config.ctr_cusum_threshold
    if not 0.0 < p1 < p0 < 1.0:
        return RateTest("ctr_cusum", None, None, None, False, f"not tested: reference CTR {p0:.4f}")
    kinds = current["event_type"].to_numpy()
    on_impression = math.log((1.0 - p1) / (1.0 - p0))
    on_click = math.log(p1 / p0) - on_impression
    increments = np.where(kinds == "impression", on_impression, np.where(kinds == "click", on_click, 0.0))
    path = cusum_path(increments)
    stat = float(path[-1]) if len(path) else 0.0
    drifted = stat > h
    return RateTest("ctr_cusum", None, None, None, drifted,
                    f"CUSUM for a {config.ctr_cusum_drop:.0%} drop from {p0:.4f}: {stat:.2f} (threshold {h:g}, "
                    f"peak {float(path.max()) if len(path) else 0.0:.2f})", statistic=stat, threshold=h)


# ---------------------------------------------------------------------------------------------- click model
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


def expected_ctr_test(current: pd.DataFrame, model: ClickModel, config: DriftConfig) -> list[RateTest]:
    """Observed vs expected clicks of the current window under the reference's click model.

    Two tests: a two-sided z-test of observed minus expected clicks (a cluster-robust variance over users), and the
    risk-adjusted Bernoulli CUSUM of a drop of ``ctr_cusum_drop`` (impression i adds the log-likelihood ratio of
    click probability (1 - drop) p_i against p_i, in log order).
    """
    imp = labelled_impressions(current)
    if imp is None or imp.empty:
        return [RateTest("ctr_vs_expected", None, None, None, False, "not tested: no labelled impressions")]
    p = np.clip(model.predict(imp), 1e-6, 1 - 1e-6)
    y = imp["clicked"].to_numpy()
    observed, expected = float(y.sum()), float(p.sum())
    ratio = observed / expected if expected > 0 else None
    # clicks of one user are not independent (sessions, satiation, tastes the model does not see): the variance
    # of observed minus expected is the cluster-robust one, summed per user, never below the binomial one
    residual = pd.Series(y - p).groupby(imp["user_id"].astype(str).to_numpy()).sum().to_numpy()
    variance = max(float((residual**2).sum()), float((p * (1 - p)).sum()))
    z = (observed - expected) / math.sqrt(variance)
    from scipy.stats import norm

    p_value = float(2 * norm.sf(abs(z)))
    rel = None if ratio is None else ratio - 1.0
    drifted = bool(p_value < config.target_alpha and (rel is None or abs(rel) >= config.min_relative_change))
    tests = [RateTest("ctr_vs_expected", expected / len(p), observed / len(p), p_value, drifted,
                      f"{int(observed)} clicks vs {expected:.1f} expected by the reference's click model "
                      f"(observed/expected {ratio:.3f}, z={z:+.2f}, p={p_value:.2g})", rel, statistic=z)]
    if config.ctr_cusum_drop > 0:
        d = config.ctr_cusum_drop
        increments = np.where(y == 1, math.log(1.0 - d), np.log1p(-(1.0 - d) * p) - np.log1p(-p))
        path = cusum_path(increments)
        stat, h = float(path[-1]), config.ctr_cusum_threshold
        tests.append(RateTest("ctr_cusum", None, None, None, stat > h,
                              f"risk-adjusted CUSUM for a {d:.0%} drop against the reference's click model: "
                              f"{stat:.2f} (threshold {h:g}, peak {float(path.max()):.2f})",
                              statistic=stat, threshold=h))
    return tests


def target_tests(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig,
                 items: pd.DataFrame | None = None, users: pd.DataFrame | None = None) -> list[RateTest]:
    """CTR and CVR two-proportion tests, the click-model tests (or the plain CUSUM) and the click category mix.

    With request ids in both logs (clicks matched to their impressions) a click model fitted on the reference
    gives the risk-adjusted tests (:func:`expected_ctr_test`); without them the CUSUM runs against the
    reference's overall CTR (:func:`ctr_cusum_test`).
    """
    ref_clicks, cur_clicks = _count(reference, "click"), _count(current, "click")
    if ref_clicks < config.min_clicks:
        return [RateTest("ctr", None, None, None, False,
                         f"not tested: the reference has {ref_clicks} clicks (< {config.min_clicks})")]
    tests = [two_proportion_test("ctr", (ref_clicks, cur_clicks),
                                 (_count(reference, "impression"), _count(current, "impression")), config)]
    model = fit_click_model(reference, config, items, users) if config.click_model else None
    if model is not None:
        # the raw CTR moves with the mix of users, hours and slates (and its clicks cluster by session), so
        # with a click model it is reported for on-call but the risk-adjusted tests decide
        tests[0].counted = False
        tests[0].detail += " (informational: the risk-adjusted tests decide)"
        tests += expected_ctr_test(current, model, config)
    elif config.ctr_cusum_drop > 0:
        tests.append(ctr_cusum_test(current, ref_clicks / max(_count(reference, "impression"), 1), config))
    clusters = None
    if reference["user_id"].notna().all() and current["user_id"].notna().all():
        clusters = tuple(_per_user(w, "purchase", "click") for w in (reference, current))
    tests.append(two_proportion_test("cvr", (_count(reference, "purchase"), _count(current, "purchase")),
                                     (ref_clicks, cur_clicks), config, clusters))  # type: ignore[arg-type]
    ref_cat, cur_cat = category_of(reference, items), category_of(current, items)
    if ref_cat is not None and cur_cat is not None:
        ref_is, cur_is = reference["event_type"] == "click", current["event_type"] == "click"
        clickers = None if clusters is None else (reference.loc[ref_is, "user_id"].astype(str),
                                                  current.loc[cur_is, "user_id"].astype(str))
        tests.append(click_mix_test(ref_cat[ref_is], cur_cat[cur_is], config, clickers))
    return tests


def _per_user(events: pd.DataFrame, success: str, trial: str) -> pd.DataFrame:
    """Per user: how many ``success`` and ``trial`` events (the clusters of a clustered rate test)."""
    kinds = events["event_type"]
    users = events["user_id"].astype(str)
    return pd.DataFrame({"successes": (kinds == success).groupby(users).sum(),
                         "trials": (kinds == trial).groupby(users).sum()})


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= n else frame.sample(n=n, random_state=seed).reset_index(drop=True)


def compare_windows(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig, *,
                    items: pd.DataFrame | None = None, users: pd.DataFrame | None = None,
                    html_path: Path | None = None) -> DriftSummary:
    """Compare two event windows and decide: drift, no drift, or insufficient data (no files besides the HTML)."""
    started = datetime.now(UTC)
    summary = DriftSummary("no_drift", [], len(reference), len(current), config.min_events,
                           created=started.isoformat(timespec="seconds"))
    short = [f"{name} window has {len(w)} events (< {config.min_events})"
             for name, w in (("reference", reference), ("current", current)) if len(w) < config.min_events]
    if short:
        summary.verdict, summary.reasons = "insufficient_data", short + ["no verdict below the minimum"]
        return summary
    known_users, known_items = set(reference["user_id"].astype(str)), set(reference["item_id"].astype(str))
    ref_features = impression_features(reference, items, users, known_users, known_items)
    cur_features = impression_features(current, items, users, known_users, known_items)
    if len(ref_features) and len(cur_features):
        summary.columns = evidently_drift(_sample(ref_features, config.max_rows, config.seed),
                                          _sample(cur_features, config.max_rows, config.seed), config, html_path)
    counted = [c for c in summary.columns if c.counted and c.group != "prediction"]
    if counted:
        drifted = [c for c in counted if c.drifted]
        summary.drift_share = len(drifted) / len(counted)
        summary.drifted_features = [c.column for c in drifted]
        summary.feature_drift = summary.drift_share >= config.drift_share
        if summary.feature_drift:
            summary.reasons.append(f"feature drift: {len(drifted)} of {len(counted)} columns drifted "
                                   f"(share {summary.drift_share:.2f} >= {config.drift_share}): "
                                   + ", ".join(summary.drifted_features))
    predictions = [c for c in summary.columns if c.group == "prediction" and c.counted]
    prediction = [c for c in predictions if c.drifted]
    # like features, by share: slates are clustered by user and request, so one column alone is too noisy
    if predictions and len(prediction) / len(predictions) >= config.drift_share:
        summary.prediction_drift = True
        summary.reasons.append(f"prediction drift: {len(prediction)} of {len(predictions)} columns: " + ", ".join(
            f"{c.column} ({c.method} {c.score:.3f} vs {c.threshold:g})" for c in prediction))
    summary.target = target_tests(reference, current, config, items, users)
    moved = [t for t in summary.target if t.drifted and t.counted]
    if moved:
        summary.target_drift = True
        summary.reasons.append("target drift: " + "; ".join(f"{t.name} {t.detail}" for t in moved))
    if summary.feature_drift or summary.prediction_drift or summary.target_drift:
        summary.verdict = "drift"
    else:
        summary.reasons.append(f"no drift: feature drift share {summary.drift_share:.2f} < {config.drift_share}, "
                               f"prediction drift share below it, no target test below alpha {config.target_alpha}")
    summary.seconds = round((datetime.now(UTC) - started).total_seconds(), 3)
    return summary


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_summary(summary: DriftSummary, path: Path) -> Path:
    """Write summary.json atomically (non-finite numbers become null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(summary.to_dict()), indent=2) + "\n", encoding="utf-8")
    return path


def run_drift_job(reference_path: str | os.PathLike[str], current_path: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], config: DriftConfig, *,
                  items_path: str | os.PathLike[str] | None = None,
                  users_path: str | os.PathLike[str] | None = None,
                  reference_last: int | None = None, current_last: int | None = None,
                  pushgateway: str | None = None, job: str = "recflow_drift",
                  expected_ctr: float | None = None) -> DriftSummary:
    """The whole drift job: load both windows, compare, write report.html, summary.json, charts and metrics.

    Metrics go to the Pushgateway at ``pushgateway`` when given, else to ``metrics.prom`` in ``out_dir``
    (node-exporter textfile format). ``expected_ctr`` (the champion's evaluated click rate) is exported as
    ``recflow_champion_expected_ctr`` for the CTR-drop alert. Returns the summary; its ``exit_code`` is the CLI's.
    """
    from monitoring.charts import write_charts
    from monitoring.drift_metrics import export_metrics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = last_events(load_events(reference_path), reference_last)
    current = last_events(load_events(current_path), current_last)
    items = load_side_table(items_path, current_path, "items")
    if items is None:
        items = load_side_table(None, reference_path, "items")
    users = load_side_table(users_path, reference_path, "users")
    html = out / "report.html"
    summary = compare_windows(reference, current, config, items=items, users=users, html_path=html)
    if html.is_file():
        summary.files["report"] = str(html)
    if summary.verdict != "insufficient_data":
        summary.files.update(write_charts(summary, reference, current, items, out))
    summary.files["summary"] = str(out / "summary.json")
    write_summary(summary, out / "summary.json")  # first, so an unreachable Pushgateway still leaves it
    summary.files["metrics"] = export_metrics(summary, out / "metrics.prom", pushgateway=pushgateway, job=job,
                                              expected_ctr=expected_ctr)
    write_summary(summary, out / "summary.json")
    return summary
