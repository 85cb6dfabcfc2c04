"""Non-inferiority of a candidate against the champion, per metric, with a power check.

The question the release gate asks is not "is the candidate significantly worse?" (a small or noisy evaluation
never is, so a worse model slips through) but "is there evidence that the candidate is *not worse than the
champion by more than a margin*?" -- the burden of proof is on the candidate.

For one metric with per-user values ``a`` (candidate) and ``b`` (champion) on the same users, ``d = a - b`` and
the margin ``delta = margin * mean(b)`` (relative to the champion's value, so ``0.02`` means "at most 2% worse"):

* **Non-inferiority test** (one-sided, at ``alpha``): H0 ``mean(d) <= -delta`` against H1 ``mean(d) > -delta``,
  by the paired t-test of ``d + delta`` (:func:`scipy.stats.ttest_1samp`, ``alternative="greater"``), the
  Wilcoxon signed-rank test of ``d + delta`` (:func:`scipy.stats.wilcoxon`), or both (``either``: both must
  reject, the strictest).
* **Superiority** (one-sided, at ``alpha``): the same t-test with ``delta = 0``.
* **Power**: the probability that this test, with these ``n`` users and the observed standard deviation of
  ``d``, shows non-inferiority when the two models are truly equal (``mean(d) = 0``), from
  :class:`statsmodels.stats.power.TTestPower`; when it is below ``min_power`` the comparison cannot tell a
  difference of the margin, and :attr:`NonInferiority.required_users` says how many users would reach it.

Testing several metrics and requiring every one to pass is an intersection-union test: the whole decision keeps
the level ``alpha`` without a multiplicity correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

TestKind = Literal["ttest", "wilcoxon", "either"]


@dataclass(frozen=True)
class NonInferiority:
    """The non-inferiority comparison of one metric (candidate vs reference on the same users).

    ``p_value`` is the one-sided p-value of "the candidate is worse by more than the margin" being false
    (small: non-inferior); ``p_superior`` the one-sided p-value of "the candidate is better". ``power`` is the
    chance of showing non-inferiority at ``alpha`` when the models are equal; ``required_users`` the number
    of paired users at which it would reach ``min_power`` (None when it cannot be computed).
    """

    metric: str
    n: int
    candidate_mean: float
    reference_mean: float
    mean_diff: float
    sd_diff: float
    margin: float  # relative
    margin_abs: float
    alpha: float
    test: str
    p_value: float
    p_superior: float
    power: float
    min_power: float
    required_users: int | None
    note: str = ""

    @property
    def non_inferior(self) -> bool:
        """The candidate is shown not worse than the reference by more than the margin (p < alpha)."""
        return self.p_value < self.alpha

    @property
    def superior(self) -> bool:
        """The candidate is shown better than the reference (one-sided t-test, p < alpha)."""
        return self.p_superior < self.alpha

    @property
    def powered(self) -> bool:
        """The comparison can tell a difference of the margin (power >= min_power)."""
        return self.power >= self.min_power

    @property
    def passed(self) -> bool:
        """Non-inferior, and either powered or shown superior (a detected improvement needs no more data)."""
        return self.non_inferior and (self.powered or self.superior)

    @property
    def more_users(self) -> int | None:
        """How many more paired users the comparison needs to be powered (0 when it is)."""
        if self.required_users is None:
            return None
        return max(0, self.required_users - self.n)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN/inf become None) with the derived verdicts."""
        out = asdict(self)
        for key, value in list(out.items()):
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        out.update(non_inferior=self.non_inferior, superior=self.superior, powered=self.powered,
                   passed=self.passed, more_users=self.more_users)
        return out


def _pairs(a: pd.Series | Sequence[float] | np.ndarray, b: pd.Series | Sequence[float] | np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    from recflow.evaluation.significance import _as_pairs

    return _as_pairs(a, b)


def power_at_margin(n: int, sd: float, margin_abs: float, alpha: float) -> float:
    """Power of the one-sided paired t-test of non-inferiority at ``margin_abs`` with ``n`` users whose
    differences have standard deviation ``sd``, when the true mean difference is 0."""
    if n < 2:
        return 0.0
    if sd <= 0.0:
        return 1.0 if margin_abs > 0 else 0.0
    if margin_abs <= 0.0:
        return 0.0
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().power(effect_size=margin_abs / sd, nobs=n, alpha=alpha, alternative="larger"))


def required_users(sd: float, margin_abs: float, alpha: float, power: float) -> int | None:
    """Paired users at which the non-inferiority t-test reaches ``power`` (None when the margin is 0)."""
    if sd <= 0.0:
        return 2
    if margin_abs <= 0.0:
        return None
    import warnings

    from scipy.stats import norm
    from statsmodels.stats.power import TTestPower

    approx = ((norm.ppf(1 - alpha) + norm.ppf(power)) * sd / margin_abs) ** 2  # the normal approximation
    if approx < 4:  # the t-test's root finder fails below a handful of users; the t correction is then moot
        return max(2, int(math.ceil(approx)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            n = TTestPower().solve_power(effect_size=margin_abs / sd, alpha=alpha, power=power,
                                         alternative="larger")
        except Exception:  # noqa: BLE001 - fall back to the normal approximation
            n = approx
    n = float(np.asarray(n).item())
    if not math.isfinite(n):
        n = approx
    return int(math.ceil(n)) if math.isfinite(n) else None


def _one_sided_greater(x: np.ndarray, kind: str) -> float:
    """One-sided p-value of "the values are centred above 0" (t-test of the mean or Wilcoxon of the median)."""
    from scipy import stats

    if x.size < 2:
        return 1.0
    if not np.any(x):
        return 1.0
    if kind == "ttest":
        if np.ptp(x) == 0.0:  # a constant shift: certain evidence either way
            return 0.0 if x[0] > 0 else 1.0
        return float(stats.ttest_1samp(x, 0.0, alternative="greater").pvalue)
    return float(stats.wilcoxon(x, zero_method="wilcox", alternative="greater").pvalue)


def non_inferiority_test(
    a: pd.Series | Sequence[float] | np.ndarray,
    b: pd.Series | Sequence[float] | np.ndarray,
    margin: float,
    *,
    alpha: float = 0.05,
    min_power: float = 0.8,
    test: TestKind = "ttest",
    metric: str = "",
) -> NonInferiority:
    """Test that per-user ``a`` (candidate) is not worse than ``b`` (reference) by more than
    ``margin * mean(b)``; see the module docstring. Series are aligned on their index (user id)."""
    if margin < 0:
        raise ValueError(f"non-inferiority margin must be >= 0, got {margin}")
    x, y = _pairs(a, b)
    d = x - y
    n = int(d.size)
    ref_mean = float(y.mean()) if n else 0.0
    cand_mean = float(x.mean()) if n else 0.0
    mean_diff = float(d.mean()) if n else 0.0
    sd = float(d.std(ddof=1)) if n >= 2 else 0.0
    margin_abs = margin * abs(ref_mean)
    notes: list[str] = []
    if n < 2:
        notes.append(f"too few paired users ({n}) for a test")
    if margin_abs == 0.0 and n >= 2:
        notes.append("the margin is 0 (margin 0 or the reference scored 0): non-inferiority means better")
    if n >= 2 and not np.any(d):
        # Identical per-user values: the candidate is exactly as good, which is within any margin >= 0.
        p_value = 0.0 if margin_abs > 0 else 1.0
        p_sup = 1.0
        notes.append("every paired difference is zero")
    else:
        shifted = d + margin_abs
        kinds = ["ttest", "wilcoxon"] if test == "either" else [test]
        p_value = max(_one_sided_greater(shifted, k) for k in kinds)
        p_sup = _one_sided_greater(d, "ttest")
    power = power_at_margin(n, sd, margin_abs, alpha)
    needed = required_users(sd, margin_abs, alpha, min_power)
    return NonInferiority(
        metric=metric, n=n, candidate_mean=cand_mean, reference_mean=ref_mean, mean_diff=mean_diff,
        sd_diff=sd, margin=float(margin), margin_abs=float(margin_abs), alpha=float(alpha), test=test,
        p_value=float(p_value), p_superior=float(p_sup), power=float(power), min_power=float(min_power),
        required_users=needed, note="; ".join(notes),
    )
