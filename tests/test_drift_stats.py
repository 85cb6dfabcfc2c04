"""The drift job's statistics (monitoring/drift_stats.py) against values computed by hand on small inputs.

Each expected value is a closed form written out in the test (normal tail via erfc, the chi-square tail with 2
degrees of freedom exp(-x / 2), Page's recursion step by step), not the function's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from monitoring import drift_stats as stats


def _two_sided_normal_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def test_pooled_two_proportion_z_test() -> None:
    # reference 30 / 1000, current 45 / 1000: pooled rate 75 / 2000
    pooled = 75 / 2000
    z = (0.045 - 0.030) / math.sqrt(pooled * (1 - pooled) * (1 / 1000 + 1 / 1000))
    got_z, got_p = stats.two_proportion_z((30, 45), (1000, 1000))
    assert got_z == pytest.approx(z, rel=1e-9)
    assert got_p == pytest.approx(_two_sided_normal_p(z), rel=1e-9)
    assert z == pytest.approx(1.7655, abs=1e-4)


def test_ratio_variance_is_the_clustered_one_with_the_binomial_floor() -> None:
    # ratio 4 / 8 = 0.5; residuals s_i - r n_i = (2, -1, -1): (4 + 1 + 1) / 8^2
    assert stats.ratio_variance(np.array([4.0, 0, 0]), np.array([4.0, 2, 2])) == pytest.approx(6 / 64)
    # every cluster exactly at the ratio: the clustered variance is 0, the binomial 0.5 * 0.5 / 8 remains
    assert stats.ratio_variance(np.array([1.0, 1, 1, 1]), np.array([2.0, 2, 2, 2])) == pytest.approx(0.25 / 8)


def test_clustered_rate_p_value() -> None:
    # |0.2 - 0.1| / sqrt(0.0025) = 2 standard errors
    assert stats.clustered_rate_p(0.1, 0.2, 0.0025) == pytest.approx(_two_sided_normal_p(2.0), rel=1e-9)
    assert stats.clustered_rate_p(0.1, 0.2, 0.0025) == pytest.approx(0.0455, abs=1e-4)
    assert stats.clustered_rate_p(0.1, 0.2, 0.0) == 1.0


def test_design_effect_of_independent_and_of_fully_clustered_clicks() -> None:
    # every click its own user: the clustered variance of a share is the binomial one, design effect exactly 1
    cats = pd.Series(list("aabbbcaabc"))
    assert stats.design_effect(cats, pd.Series([f"u{i}" for i in range(10)])) == pytest.approx(1.0)
    # two users with ten clicks each, each on one category only: share 0.5 of 20 clicks, clustered variance
    # ((10 - 5)^2 + (0 - 5)^2) / 20^2 = 0.125 vs binomial 0.25 / 20: design effect 10 (the cluster size)
    cats = pd.Series(["a"] * 10 + ["b"] * 10)
    users = pd.Series(["u1"] * 10 + ["u2"] * 10)
    assert stats.design_effect(cats, users) == pytest.approx(10.0)


def test_chi_square_of_homogeneity_and_its_rao_scott_correction() -> None:
    ref = pd.Series(["a"] * 30 + ["b"] * 20 + ["c"] * 10)
    cur = pd.Series(["a"] * 20 + ["b"] * 20 + ["c"] * 20)
    # expected counts per window: a 25, b 20, c 15
    by_hand = 2 * ((30 - 25) ** 2 / 25 + 0 + (10 - 15) ** 2 / 15)
    test = stats.category_shift_test(ref, cur)
    assert test is not None and test.dof == 2
    assert test.statistic == pytest.approx(by_hand) and test.statistic == pytest.approx(16 / 3)
    assert test.p_value == pytest.approx(math.exp(-by_hand / 2))  # the chi-square(2) tail
    corrected = stats.category_shift_test(ref, cur, design_effect=2.0)
    assert corrected is not None and corrected.uncorrected == pytest.approx(by_hand)
    assert corrected.statistic == pytest.approx(by_hand / 2)
    assert corrected.p_value == pytest.approx(math.exp(-by_hand / 4))
    assert stats.category_shift_test(pd.Series(["a"] * 5), pd.Series(["a"] * 7)) is None  # one category


def test_cusum_path_by_hand() -> None:
    # S_t = max(0, S_{t-1} + x_t): 1, max(0, -1) = 0, 3, 2, max(0, -3) = 0, 2
    assert stats.cusum_path(np.array([1.0, -2, 3, -1, -5, 2])).tolist() == [1, 0, 3, 2, 0, 2]
    assert stats.cusum_path(np.array([])).tolist() == []


def test_bernoulli_cusum_increments_sum_to_the_binomial_log_likelihood_ratio() -> None:
    p0, p1 = 0.10, 0.05
    on_impression = math.log(0.95 / 0.90)
    inc = stats.bernoulli_cusum_increments(np.array(["impression", "click", "purchase"]), p0, p1)
    assert inc.tolist() == pytest.approx([on_impression, math.log(0.5) - on_impression, 0.0])
    # k clicks in n impressions: k log(p1 / p0) + (n - k) log((1 - p1) / (1 - p0))
    kinds = np.array(["impression", "click", "impression", "impression", "impression", "click", "impression"])
    expected = 2 * math.log(p1 / p0) + 3 * math.log((1 - p1) / (1 - p0))
    assert stats.bernoulli_cusum_increments(kinds, p0, p1).sum() == pytest.approx(expected)


def test_risk_adjusted_increments_with_a_constant_probability_are_the_bernoulli_ones() -> None:
    p, drop = 0.08, 0.3
    clicked = np.array([1, 0, 0, 1, 0])
    inc = stats.risk_adjusted_cusum_increments(clicked, np.full(5, p), drop)
    p1 = (1 - drop) * p
    expected = [math.log(p1 / p) if c else math.log((1 - p1) / (1 - p)) for c in clicked]
    assert inc.tolist() == pytest.approx(expected)


def test_observed_vs_expected_with_user_clusters() -> None:
    # residuals y - p per user: a: 0.8 + 0.8, b: -0.2, c: -0.2 -> variance 1.6^2 + 0.04 + 0.04 = 2.64 (> the
    # binomial 4 * 0.16 = 0.64)
    got = stats.observed_vs_expected(np.array([1, 1, 0, 0]), np.full(4, 0.2), np.array(["a", "a", "b", "c"]))
    z = (2 - 0.8) / math.sqrt(2.64)
    assert (got.observed, got.expected) == pytest.approx((2.0, 0.8))
    assert got.z == pytest.approx(z) and got.p_value == pytest.approx(_two_sided_normal_p(z))
    assert got.ratio == pytest.approx(2.5)
    # independent users: the binomial variance sum p (1 - p)
    alone = stats.observed_vs_expected(np.array([1, 0, 0, 0]), np.full(4, 0.5), np.array(["a", "b", "c", "d"]))
    assert alone.z == pytest.approx((1 - 2) / math.sqrt(1.0))


def test_feature_drift_scores_are_the_normed_wasserstein_and_jensen_shannon_distances() -> None:
    """The scores the drift job reads from Evidently (monitoring.drift.evidently_drift) are the textbook
    distances: Wasserstein-1 over the reference's standard deviation, and the Jensen-Shannon distance of the
    category frequencies (both from scipy here)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    from monitoring.config import DriftConfig
    from monitoring.drift import evidently_drift

    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"price": rng.normal(10.0, 2.0, 400),
                        "device": rng.choice(["mobile", "desktop", "tablet"], 400, p=[0.5, 0.3, 0.2])})
    cur = pd.DataFrame({"price": rng.normal(11.0, 2.0, 300),
                        "device": rng.choice(["mobile", "desktop", "tablet"], 300, p=[0.3, 0.3, 0.4])})
    scores = {c.column: c for c in evidently_drift(ref, cur, DriftConfig())}
    wasserstein = wasserstein_distance(ref["price"], cur["price"]) / np.std(ref["price"])
    assert scores["price"].method.lower().startswith("wasserstein")
    assert scores["price"].score == pytest.approx(wasserstein, rel=1e-6)
    levels = ["desktop", "mobile", "tablet"]
    freq = [d["device"].value_counts(normalize=True).reindex(levels).to_numpy() for d in (ref, cur)]
    assert scores["device"].score == pytest.approx(jensenshannon(freq[0], freq[1]), rel=1e-6)
