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

The parts: reading the logs and writing summary.json (:mod:`monitoring.drift_io`), the monitored impression
features (:mod:`monitoring.features`), the reference's click model (:mod:`monitoring.click_model`) and the
statistics of the target tests (:mod:`monitoring.drift_stats`); this module decides.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from monitoring import drift_stats as stats
from monitoring.click_model import ClickModel, fit_click_model, labelled_impressions
from monitoring.config import DriftConfig
from monitoring.drift_io import last_events, load_events, load_side_table, write_summary
from monitoring.features import category_of, impression_features
from recflow.io import atomic_path

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


def two_proportion_test(name: str, successes: tuple[int, int], trials: tuple[int, int], config: DriftConfig,
                        clusters: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> RateTest:
    """Two-sided two-proportion z-test of reference vs current rate, with a minimum effect.

    Without ``clusters`` the classic pooled z-test (statsmodels). With them (per window, one row per user with
    columns ``successes`` and ``trials``) the variance of each window's rate is the cluster-robust one: one
    user's clicks and purchases are not independent draws, and treating them so makes the test fire on
    no-drift traffic (the benchmark's false alarms came from the CVR test before).
    """
    (s_ref, s_cur), (n_ref, n_cur) = successes, trials
    if min(n_ref, n_cur) == 0:
        return RateTest(name, None, None, None, False, "not tested: a window has no trials")
    ref, cur = s_ref / n_ref, s_cur / n_cur
    rel = (cur - ref) / ref if ref > 0 else None
    if s_ref + s_cur == 0 or s_ref + s_cur == n_ref + n_cur:
        return RateTest(name, ref, cur, 1.0, False, f"{ref:.4f} -> {cur:.4f} (no variation)", rel)
    if clusters is None:
        _, p = stats.two_proportion_z(successes, trials)
        how = ""
    else:
        var = sum(stats.ratio_variance(c["successes"].to_numpy(float), c["trials"].to_numpy(float))
                  for c in clusters)
        p = stats.clustered_rate_p(ref, cur, var)
        how = ", users as clusters"
    drifted = bool(p < config.target_alpha and (rel is None or abs(rel) >= config.min_relative_change))
    rel_text = f"{rel:+.1%}" if rel is not None else "n/a"
    return RateTest(name, ref, cur, p, drifted, f"{ref:.4f} -> {cur:.4f} ({rel_text}, p={p:.2g}{how})", rel)


def click_mix_test(ref_clicks: pd.Series, cur_clicks: pd.Series, config: DriftConfig,
                   users: tuple[pd.Series, pd.Series] | None = None) -> RateTest:
    """Chi-square test that clicks fall on the same categories in both windows (a preference shift moves it).

    With ``users`` (the user of each click, per window) the statistic gets the first-order Rao-Scott correction
    (divided by the mean design effect of the category shares with users as clusters): a user clicks the same
    categories again and again, so clicks are not independent.
    """
    deff = 1.0
    if users is not None:
        deff = (stats.design_effect(ref_clicks, users[0]) + stats.design_effect(cur_clicks, users[1])) / 2
    test = stats.category_shift_test(ref_clicks, cur_clicks, deff)
    if test is None:
        return RateTest("click_category_mix", None, None, None, False, "not tested: too few categories clicked")
    detail = f"chi2={test.uncorrected:.1f}, dof={test.dof}"
    if users is not None:
        detail += f", Rao-Scott design effect {deff:.2f} (users as clusters): {test.statistic:.1f}"
    p = test.p_value
    return RateTest("click_category_mix", None, None, p, bool(p < config.target_alpha), f"{detail}, p={p:.2g}")


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
    path = stats.cusum_path(stats.bernoulli_cusum_increments(current["event_type"].to_numpy(), p0, p1))
    stat = float(path[-1]) if len(path) else 0.0
    drifted = stat > h
    return RateTest("ctr_cusum", None, None, None, drifted,
                    f"CUSUM for a {config.ctr_cusum_drop:.0%} drop from {p0:.4f}: {stat:.2f} (threshold {h:g}, "
                    f"peak {float(path.max()) if len(path) else 0.0:.2f})", statistic=stat, threshold=h)


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
    oe = stats.observed_vs_expected(y, p, imp["user_id"].astype(str).to_numpy())
    ratio = oe.ratio
    rel = None if ratio is None else ratio - 1.0
    drifted = bool(oe.p_value < config.target_alpha and (rel is None or abs(rel) >= config.min_relative_change))
    tests = [RateTest("ctr_vs_expected", oe.expected / len(p), oe.observed / len(p), oe.p_value, drifted,
                      f"{int(oe.observed)} clicks vs {oe.expected:.1f} expected by the reference's click model "
                      f"(observed/expected {ratio:.3f}, z={oe.z:+.2f}, p={oe.p_value:.2g})", rel, statistic=oe.z)]
    if config.ctr_cusum_drop > 0:
        d = config.ctr_cusum_drop
        path = stats.cusum_path(stats.risk_adjusted_cusum_increments(y, p, d))
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
        clusters = (_per_user(reference, "purchase", "click"), _per_user(current, "purchase", "click"))
    tests.append(two_proportion_test("cvr", (_count(reference, "purchase"), _count(current, "purchase")),
                                     (ref_clicks, cur_clicks), config, clusters))
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
