"""The statistics of the drift job's target tests, as plain functions of arrays (no files, no configuration).

* two rates: the pooled two-proportion z-test, and the cluster-robust variance of a ratio of sums (one user's
  events are not independent draws) with the z-test on it;
* a category mix: the chi-square test of homogeneity with the first-order Rao-Scott correction (the statistic
  divided by the mean design effect of the category shares when users are the clusters);
* a CTR drop as it happens: Page's one-sided CUSUM of Bernoulli log-likelihood ratios, against a constant
  reference CTR or against each impression's own predicted click probability (risk adjustment);
* observed vs expected clicks under a click model, with the cluster-robust variance.

:mod:`monitoring.drift` turns them into verdicts; tests/test_drift_stats.py checks them against closed forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def two_proportion_z(successes: tuple[int, int], trials: tuple[int, int]) -> tuple[float, float]:
    """``(z, two-sided p)`` of the pooled two-proportion z-test of ``successes[1] / trials[1]`` (current) against
    ``successes[0] / trials[0]`` (reference) (statsmodels' ``proportions_ztest``)."""
    from statsmodels.stats.proportion import proportions_ztest

    (s_ref, s_cur), (n_ref, n_cur) = successes, trials
    z, p = proportions_ztest([s_cur, s_ref], [n_cur, n_ref], alternative="two-sided")
    return float(z), float(p)


def ratio_variance(successes: np.ndarray, trials: np.ndarray) -> float:
    """Variance of sum(successes) / sum(trials) with clusters as units (linearisation), at least the binomial one.

    With ``r`` the ratio and ``n`` the trials: ``max(sum((s_i - r n_i)^2) / n^2, r (1 - r) / n)``.
    """
    n = float(trials.sum())
    r = float(successes.sum()) / n
    clustered = float(((successes - r * trials) ** 2).sum()) / n**2
    return max(clustered, r * (1.0 - r) / n)


def clustered_rate_p(reference: float, current: float, variance: float) -> float:
    """Two-sided p-value of ``current - reference`` under a normal with the given variance (1 when it is 0)."""
    from scipy.stats import norm

    return float(2 * norm.sf(abs(current - reference) / math.sqrt(variance))) if variance > 0 else 1.0


def design_effect(categories: pd.Series, users: pd.Series) -> float:
    """Mean design effect of the category shares of clicks when users are the clusters (>= 1).

    For each category with share ``p`` of ``n`` clicks, the clustered variance of the share over its binomial
    variance ``p (1 - p) / n``; their mean, never below 1.
    """
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


@dataclass(frozen=True)
class ChiSquare:
    """A chi-square test of homogeneity: the statistic (corrected when ``design_effect`` > 1), dof and p."""

    statistic: float
    dof: int
    p_value: float
    uncorrected: float
    design_effect: float = 1.0


def category_shift_test(reference: pd.Series, current: pd.Series, design_effect: float = 1.0) -> ChiSquare | None:
    """Chi-square test that two samples of categories come from one distribution (scipy's
    ``chi2_contingency`` on the 2 x categories table), the statistic divided by ``design_effect`` (Rao-Scott).

    None when fewer than two categories occur or a sample is empty.
    """
    from scipy.stats import chi2, chi2_contingency

    table = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0).to_numpy()
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] < 2 or (table.sum(axis=0) == 0).any():
        return None
    stat, p, dof, _ = chi2_contingency(table.T)
    if design_effect == 1.0:
        return ChiSquare(float(stat), int(dof), float(p), float(stat))
    corrected = float(stat) / design_effect
    return ChiSquare(corrected, int(dof), float(chi2.sf(corrected, dof)), float(stat), design_effect)


def cusum_path(increments: np.ndarray) -> np.ndarray:
    """Page's one-sided CUSUM, S_t = max(0, S_{t-1} + x_t) with S_0 = 0, for every t (vectorised)."""
    walk = np.cumsum(np.asarray(increments, dtype=float))
    return walk - np.minimum(np.minimum.accumulate(walk), 0.0)


def bernoulli_cusum_increments(event_types: np.ndarray, p0: float, p1: float) -> np.ndarray:
    """The log-likelihood ratio of "CTR is p1" against "CTR is p0" that each event adds.

    An impression adds log((1 - p1) / (1 - p0)), a click log(p1 / p0) - log((1 - p1) / (1 - p0)) (so a click is
    credited to the impression before it: together they add log(p1 / p0)), any other event 0.
    """
    on_impression = math.log((1.0 - p1) / (1.0 - p0))
    on_click = math.log(p1 / p0) - on_impression
    kinds = np.asarray(event_types)
    return np.where(kinds == "impression", on_impression, np.where(kinds == "click", on_click, 0.0))


def risk_adjusted_cusum_increments(clicked: np.ndarray, probabilities: np.ndarray, drop: float) -> np.ndarray:
    """Each impression's log-likelihood ratio of click probability ``(1 - drop) p_i`` against ``p_i``.

    A clicked impression adds log(1 - drop), an unclicked one log(1 - (1 - drop) p_i) - log(1 - p_i).
    """
    p = np.asarray(probabilities, dtype=float)
    return np.where(np.asarray(clicked) == 1, math.log(1.0 - drop), np.log1p(-(1.0 - drop) * p) - np.log1p(-p))


@dataclass(frozen=True)
class ObservedVsExpected:
    """Observed clicks against the clicks a click model expects, with a cluster-robust z-test."""

    observed: float
    expected: float
    z: float
    p_value: float

    @property
    def ratio(self) -> float | None:
        return self.observed / self.expected if self.expected > 0 else None


def observed_vs_expected(clicked: np.ndarray, probabilities: np.ndarray, clusters: np.ndarray) -> ObservedVsExpected:
    """Two-sided z-test of sum(clicked) - sum(p) with the variance summed per cluster (user).

    Clicks of one user are not independent (sessions, satiation, tastes the model does not see): the variance of
    observed minus expected is ``sum over users of (sum of their residuals)^2``, never below the binomial
    ``sum p (1 - p)``.
    """
    from scipy.stats import norm

    y = np.asarray(clicked, dtype=float)
    p = np.asarray(probabilities, dtype=float)
    observed, expected = float(y.sum()), float(p.sum())
    residual = pd.Series(y - p).groupby(np.asarray(clusters)).sum().to_numpy()
    variance = max(float((residual**2).sum()), float((p * (1 - p)).sum()))
    z = (observed - expected) / math.sqrt(variance)
    return ObservedVsExpected(observed, expected, z, float(2 * norm.sf(abs(z))))
