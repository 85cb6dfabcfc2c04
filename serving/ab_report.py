"""The A/B report: per-variant outcomes from the feedback log, with confidence intervals and tests.

Per variant: click-through rate (clicks per impression) and conversion rate (purchases per impression) with
Wilson intervals, average order value (purchases' ``order_value``, else ``price``) with a t interval. Between
the first two variants: the two-proportion z-test on CTR (statsmodels), Welch's t-test and the Wilcoxon
rank-sum test (Mann-Whitney U; users are split between variants, so the paired signed-rank form does not
apply) on per-user CTR, from SciPy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.errors import DataError


@dataclass(frozen=True)
class VariantOutcome:
    variant: str
    users: int
    impressions: int
    clicks: int
    purchases: int
    ctr: float
    ctr_ci: tuple[float, float]
    conversion_rate: float
    conversion_ci: tuple[float, float]
    average_order_value: float
    aov_ci: tuple[float, float]


@dataclass(frozen=True)
class ABReport:
    variants: list[VariantOutcome]
    comparison: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"variants": [asdict(v) for v in self.variants], "comparison": self.comparison}

    def format(self) -> str:
        lines = [f"{'variant':<12}{'users':>7}{'impr':>8}{'CTR':>9}{'95% CI':>18}{'CVR':>9}{'AOV':>9}"]
        for v in self.variants:
            lines.append(
                f"{v.variant:<12}{v.users:>7}{v.impressions:>8}{v.ctr:>9.4f}"
                f"  [{v.ctr_ci[0]:.4f}, {v.ctr_ci[1]:.4f}]{v.conversion_rate:>9.4f}"
                f"{v.average_order_value:>9.2f}"
            )
        c = self.comparison
        if c:
            lines.append(
                f"{c['treatment']} vs {c['control']}: CTR lift {c['ctr_lift']:+.4f}; "
                f"z-test p={c['z_test_p']:.4g}; t-test p={c['t_test_p']:.4g}; "
                f"Wilcoxon rank-sum p={c['wilcoxon_p']:.4g}"
            )
        return "\n".join(lines)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``(nan, nan)`` for n = 0)."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return (math.nan, math.nan)
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return (float(low), float(high))


def _mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    if len(values) < 2:
        return (math.nan, math.nan)
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return (float(values.mean() - half), float(values.mean() + half))


def ab_report(events: pd.DataFrame, control: str = "champion", confidence: float = 0.95) -> ABReport:
    """Compute the report from feedback events (the events schema, with ``variant`` set by serving)."""
    from scipy import stats
    from statsmodels.stats.proportion import proportions_ztest

    if "variant" not in events.columns or events["variant"].isna().all():
        raise DataError("feedback log: no event carries a variant (was the service serving an A/B test?)")
    ev = events[events["variant"].notna()]
    outcomes: list[VariantOutcome] = []
    per_user: dict[str, pd.Series] = {}
    for name, group in ev.groupby("variant", sort=True):
        kinds = group["event_type"]
        imps, clicks, buys = (
            int((kinds == "impression").sum()),
            int((kinds == "click").sum()),
            int((kinds == "purchase").sum()),
        )
        purchases = group[kinds == "purchase"]
        nan = pd.Series(np.nan, index=purchases.index)
        order = purchases["order_value"] if "order_value" in purchases.columns else nan
        price = purchases["price"] if "price" in purchases.columns else nan
        value = order.astype(float).fillna(price.astype(float)).dropna().to_numpy(float)
        u = group.groupby("user_id")["event_type"].agg(
            impressions=lambda s: int((s == "impression").sum()), clicks=lambda s: int((s == "click").sum())
        )
        u = u[u["impressions"] > 0]
        per_user[str(name)] = u["clicks"] / u["impressions"]
        outcomes.append(
            VariantOutcome(
                str(name),
                int(group["user_id"].nunique()),
                imps,
                clicks,
                buys,
                clicks / imps if imps else math.nan,
                wilson_interval(clicks, imps, confidence),
                buys / imps if imps else math.nan,
                wilson_interval(buys, imps, confidence),
                float(value.mean()) if len(value) else math.nan,
                _mean_ci(value, confidence),
            )
        )
    comparison: dict[str, Any] = {}
    names = [o.variant for o in outcomes]
    if len(outcomes) >= 2:
        ctrl = next((o for o in outcomes if o.variant == control), outcomes[0])
        treat = next(o for o in outcomes if o.variant != ctrl.variant)
        z, zp = proportions_ztest([treat.clicks, ctrl.clicks], [treat.impressions, ctrl.impressions])
        a, b = per_user[treat.variant].to_numpy(), per_user[ctrl.variant].to_numpy()
        t = stats.ttest_ind(a, b, equal_var=False)
        w = stats.mannwhitneyu(a, b, alternative="two-sided")
        comparison = {
            "control": ctrl.variant,
            "treatment": treat.variant,
            "ctr_lift": treat.ctr - ctrl.ctr,
            "z_stat": float(z),
            "z_test_p": float(zp),
            "t_stat": float(t.statistic),
            "t_test_p": float(t.pvalue),
            "wilcoxon_stat": float(w.statistic),
            "wilcoxon_p": float(w.pvalue),
            "users": {treat.variant: len(a), ctrl.variant: len(b)},
        }
    elif not names:
        raise DataError("feedback log: no events")
    return ABReport(outcomes, comparison)


def plot_ab_report(report: ABReport, out: str | Path) -> Path:
    """A bar chart of CTR and conversion rate per variant with their confidence intervals (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recflow.io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    names = [v.variant for v in report.variants]
    for ax, (label, val, ci) in zip(
        axes,
        (("click-through rate", "ctr", "ctr_ci"), ("conversion rate", "conversion_rate", "conversion_ci")),
        strict=True,
    ):
        means = np.array([getattr(v, val) for v in report.variants])
        cis = np.array([getattr(v, ci) for v in report.variants])
        ax.bar(
            names,
            means,
            yerr=np.clip(np.nan_to_num([means - cis[:, 0], cis[:, 1] - means]), 0, None),
            capsize=6,
            color=["#4c72b0", "#dd8452"][: len(names)] * (len(names) // 2 + 1),
        )
        ax.set_title(label)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
