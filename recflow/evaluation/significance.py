"""Paired significance tests of per-user metrics: is a candidate better or worse than a reference?

Both tests come from SciPy: the paired t-test (:func:`scipy.stats.ttest_rel`) on the mean difference and the
Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, zero differences dropped) on its median. Degenerate
inputs (fewer than two pairs, all differences zero, a constant non-zero difference) give defined answers
with a ``note`` instead of NaN or an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd


class _TestContext(TypedDict):
    """The fields of :class:`PairedTest` that every outcome of :func:`paired_tests` shares."""

    n: int
    confidence: float
    metric: str
    reference: str


@dataclass(frozen=True)
class PairedTest:
    """Result of comparing per-user metric ``a`` (candidate) with ``b`` (reference) on the same users.

    ``mean_diff`` is mean(a - b) with its ``ci`` (confidence ``confidence``). ``t_p``/``wilcoxon_p`` are
    two-sided; ``t_p_worse``/``wilcoxon_p_worse`` are one-sided p-values of "a is worse than b" (small means
    significantly worse), which is what the blessing uses.
    """

    mean_diff: float
    ci: tuple[float, float]
    t_stat: float
    t_p: float
    wilcoxon_stat: float
    wilcoxon_p: float
    n: int
    t_p_worse: float = 1.0
    wilcoxon_p_worse: float = 1.0
    confidence: float = 0.95
    metric: str = ""
    reference: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN/inf become None)."""
        out = asdict(self)
        out["ci"] = list(self.ci)
        for key, value in list(out.items()):
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        out["ci"] = [v if math.isfinite(v) else None for v in self.ci]
        return out


def _as_pairs(
    a: pd.Series | Sequence[float] | np.ndarray, b: pd.Series | Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        if not a.index.is_unique or not b.index.is_unique:
            raise ValueError("per-user series must have unique user ids as index")
        common = a.index.intersection(b.index, sort=False)
        if len(common) != len(a) or len(common) != len(b):
            raise ValueError(
                f"paired tests need the same users on both sides: {len(a)} vs {len(b)} users, "
                f"{len(common)} shared"
            )
        a, b = a.loc[common], b.loc[common]
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"paired tests need two 1-d arrays of equal length, got shapes {x.shape} and {y.shape}"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def paired_tests(
    a: pd.Series | Sequence[float] | np.ndarray,
    b: pd.Series | Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    metric: str = "",
    reference: str = "",
) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` vs ``b`` (per-user values of one metric).

    Series are aligned on their index (user id) and must hold the same users; arrays are paired by position.
    Pairs where either value is NaN are dropped. With fewer than two pairs, or when every difference is zero,
    both p-values are 1.0 and ``note`` says why.
    """
    from scipy import stats  # imported here: scipy.stats costs seconds, and PairedTest alone needs none of it

    x, y = _as_pairs(a, b)
    d = x - y
    n = int(d.size)
    mean_diff = float(d.mean()) if n else 0.0
    common: _TestContext = {"n": n, "confidence": confidence, "metric": metric, "reference": reference}
    if n < 2:
        return PairedTest(
            mean_diff,
            (mean_diff, mean_diff),
            0.0,
            1.0,
            0.0,
            1.0,
            note=f"too few paired users ({n}) for a test; p = 1.0",
            **common,
        )
    if not np.any(d):
        return PairedTest(
            0.0, (0.0, 0.0), 0.0, 1.0, 0.0, 1.0, note="all paired differences are zero; p = 1.0", **common
        )
    notes = []
    if np.ptp(d) == 0.0:
        # Every user moved by exactly the same amount: the t statistic is infinite; the evidence is as strong
        # as the sign test's (every pair agrees), so p is 0.
        t_stat = math.copysign(math.inf, mean_diff)
        t_p, t_p_worse = 0.0, (0.0 if mean_diff < 0 else 1.0)
        ci = (mean_diff, mean_diff)
        notes.append("constant difference: t statistic infinite")
    else:
        two = stats.ttest_rel(x, y)
        t_stat, t_p = float(two.statistic), float(two.pvalue)
        t_p_worse = float(stats.ttest_rel(x, y, alternative="less").pvalue)
        interval = two.confidence_interval(confidence_level=confidence)
        ci = (float(interval.low), float(interval.high))
    w = stats.wilcoxon(x, y, zero_method="wilcox")  # at least one non-zero difference (checked above)
    w_stat, w_p = float(w.statistic), float(w.pvalue)
    w_p_worse = float(stats.wilcoxon(x, y, zero_method="wilcox", alternative="less").pvalue)
    nonzero = int(np.count_nonzero(d))
    if nonzero < 6:
        notes.append(
            f"only {nonzero} non-zero differences: the two-sided Wilcoxon test cannot reach p < 0.05"
        )
    return PairedTest(
        mean_diff,
        ci,
        t_stat,
        t_p,
        w_stat,
        w_p,
        t_p_worse=t_p_worse,
        wilcoxon_p_worse=w_p_worse,
        note="; ".join(notes),
        **common,
    )
