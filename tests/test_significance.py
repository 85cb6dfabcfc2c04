"""Paired significance tests: agreement with SciPy, alignment by user, and the degenerate cases."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recflow.evaluation.significance import paired_tests


def test_matches_scipy_on_a_real_difference():
    rng = np.random.default_rng(3)
    b = rng.random(400)
    a = b + 0.03 + rng.normal(0, 0.1, 400)
    result = paired_tests(a, b, confidence=0.9, metric="ndcg@10", reference="champion")
    ref_t = stats.ttest_rel(a, b)
    ref_w = stats.wilcoxon(a, b)
    assert result.n == 400
    assert result.mean_diff == pytest.approx(float(np.mean(a - b)))
    assert result.t_stat == pytest.approx(ref_t.statistic)
    assert result.t_p == pytest.approx(ref_t.pvalue)
    assert result.wilcoxon_stat == pytest.approx(ref_w.statistic)
    assert result.wilcoxon_p == pytest.approx(ref_w.pvalue)
    ci = ref_t.confidence_interval(0.9)
    assert result.ci == pytest.approx((ci.low, ci.high))
    assert result.t_p < 0.01 and result.t_p_worse > 0.99  # a is better, so "a worse" is not supported
    assert result.metric == "ndcg@10" and result.reference == "champion"


def test_one_sided_worse_detects_a_regression():
    rng = np.random.default_rng(4)
    b = rng.random(300)
    a = b - 0.05 + rng.normal(0, 0.05, 300)
    result = paired_tests(a, b)
    assert result.mean_diff < 0
    assert result.t_p_worse < 1e-6
    assert result.wilcoxon_p_worse < 1e-6


def test_series_are_aligned_on_user_ids():
    a = pd.Series([1.0, 0.0, 0.5, 0.2], index=["u1", "u2", "u3", "u4"])
    b = pd.Series([0.2, 0.4, 0.0, 0.9], index=["u4", "u3", "u2", "u1"])  # same users, another order
    result = paired_tests(a, b)
    assert result.mean_diff == pytest.approx(np.mean([1.0 - 0.9, 0.0 - 0.0, 0.5 - 0.4, 0.2 - 0.2]))
    with pytest.raises(ValueError, match="same users"):
        paired_tests(a, b.rename(index={"u4": "u9"}))


def test_all_zero_differences_give_p_one_with_a_note():
    x = np.array([0.0, 0.5, 1.0, 0.0])
    result = paired_tests(x, x.copy())
    assert (result.t_p, result.wilcoxon_p, result.t_p_worse, result.wilcoxon_p_worse) == (1.0, 1.0, 1.0, 1.0)
    assert result.mean_diff == 0.0 and "zero" in result.note


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_samples_do_not_crash(n):
    result = paired_tests(np.ones(n), np.zeros(n))
    assert result.n == n and result.t_p == 1.0 and result.wilcoxon_p == 1.0
    assert "too few" in result.note


def test_nan_pairs_are_dropped_and_constant_difference_is_handled():
    a = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.0, 6.0, 7.0])
    b = a - 0.5
    b[0] = np.nan
    result = paired_tests(a, b)
    assert result.n == 6
    assert result.mean_diff == pytest.approx(0.5)
    assert math.isinf(result.t_stat) and result.t_p == 0.0 and result.t_p_worse == 1.0
    assert "constant" in result.note
    assert result.to_dict()["t_stat"] is None  # JSON-safe


def test_few_nonzero_differences_are_noted():
    result = paired_tests([0, 0, 0, 0, 1.0, 0.5], [0, 0, 0, 0, 0, 0])
    assert "non-zero differences" in result.note
    assert result.wilcoxon_p > 0.05
