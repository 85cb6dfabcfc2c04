"""Always-valid inference for online comparisons: confidence sequences that may be checked after every request.

A fixed-sample test checked again and again ("peeking") rejects a true null far more often than its level says.
The canary guardrail (:mod:`recflow.release`) looks at its numbers after every batch of requests, so it uses the
**mixture sequential probability ratio test** (mSPRT) of Johari, Pekelis and Walsh ("Always valid inference:
bringing sequential analysis to A/B testing", 2017, Operations Research 2022) with a normal mixing distribution
``N(theta0, tau^2)`` over the difference ``theta`` between two arms' means. With the estimate ``d`` of ``theta``
and its variance ``V`` (from the two arms' sample variances, a normal approximation):

    Lambda(theta0) = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))

``P(sup_n Lambda_n(theta) >= 1/alpha) <= alpha`` under the true ``theta`` (Ville's inequality), so the set of
``theta0`` with ``Lambda < 1/alpha``,

    d +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V))),

is a ``1 - alpha`` confidence sequence: it covers ``theta`` at every sample size at once, whenever one stops.
Intersecting the intervals seen so far (:meth:`ConfidenceSequence.intersect`) keeps that guarantee and makes the
bounds monotone. ``tau`` is fixed in advance; the test is most sensitive to differences of about ``tau``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ConfidenceSequence:
    """An always-valid interval for ``theta = mean(treatment) - mean(control)`` at one moment."""

    estimate: float
    low: float
    high: float
    n_control: int
    n_treatment: int
    alpha: float
    tau: float
    p_value: float  # always-valid p-value of theta = 0 (1 / Lambda(0), capped at 1)

    def intersect(self, earlier: ConfidenceSequence | None) -> ConfidenceSequence:
        """This interval intersected with the running one (still valid; monotone bounds and p-value)."""
        if earlier is None:
            return self
        low, high = max(self.low, earlier.low), min(self.high, earlier.high)
        if low > high:  # can only happen with probability <= alpha; keep the newest interval
            return self
        return ConfidenceSequence(self.estimate, low, high, self.n_control, self.n_treatment, self.alpha,
                                  self.tau, min(self.p_value, earlier.p_value))

    def to_dict(self) -> dict[str, Any]:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in asdict(self).items()}


def msprt_half_width(variance: float, tau: float, alpha: float) -> float:
    """Half width of the mSPRT confidence sequence for an estimate with ``variance`` (see the module doc)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if tau <= 0.0:
        raise ValueError(f"tau (the mixing standard deviation) must be > 0, got {tau}")
    if variance <= 0.0:
        return 0.0
    if not math.isfinite(variance):
        return math.inf
    t2 = tau * tau
    return math.sqrt(variance * (variance + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((variance + t2)
                                                                                               / variance)))


def msprt_p_value(estimate: float, variance: float, tau: float, theta0: float = 0.0) -> float:
    """Always-valid p-value ``min(1, 1 / Lambda(theta0))`` of the mSPRT at this moment."""
    if variance <= 0.0 or not math.isfinite(variance):
        return 1.0 if estimate == theta0 or not math.isfinite(variance) else 0.0
    t2 = tau * tau
    log_lambda = 0.5 * math.log(variance / (variance + t2)) + t2 * (estimate - theta0) ** 2 / (
        2.0 * variance * (variance + t2))
    return 1.0 if log_lambda <= 0 else math.exp(-log_lambda)


def _sequence(estimate: float, variance: float, n_c: int, n_t: int, alpha: float, tau: float
              ) -> ConfidenceSequence:
    if n_c < 1 or n_t < 1:
        return ConfidenceSequence(estimate, -math.inf, math.inf, n_c, n_t, alpha, tau, 1.0)
    half = msprt_half_width(variance, tau, alpha)
    return ConfidenceSequence(estimate, estimate - half, estimate + half, n_c, n_t, alpha, tau,
                              msprt_p_value(estimate, variance, tau))


def rate_difference(
    successes_treatment: int, n_treatment: int, successes_control: int, n_control: int, *,
    alpha: float = 0.05, tau: float = 0.01,
) -> ConfidenceSequence:
    """Confidence sequence for the difference of two Bernoulli rates (treatment - control), e.g. click or
    error rates. Each arm's variance is ``p (1 - p) / n`` with ``p`` smoothed by one success and one failure
    (Agresti-Caffo style), so an arm with no successes yet does not look certain."""
    def arm(s: int, n: int) -> tuple[float, float]:
        if n <= 0:
            return 0.0, math.inf
        p = s / n
        q = (s + 1) / (n + 2)
        return p, q * (1 - q) / n

    pt, vt = arm(successes_treatment, n_treatment)
    pc, vc = arm(successes_control, n_control)
    return _sequence(pt - pc, vt + vc, n_control, n_treatment, alpha, tau)


def mean_difference(
    sum_treatment: float, sumsq_treatment: float, n_treatment: int,
    sum_control: float, sumsq_control: float, n_control: int, *,
    alpha: float = 0.05, tau: float = 1.0,
) -> ConfidenceSequence:
    """Confidence sequence for the difference of two means (treatment - control) from running sums, e.g.
    request latencies (normal approximation with each arm's sample variance)."""
    def arm(s: float, ss: float, n: int) -> tuple[float, float]:
        if n <= 0:
            return 0.0, math.inf
        mean = s / n
        var = max(ss / n - mean * mean, 0.0) * n / max(n - 1, 1)
        return mean, var / n

    mt, vt = arm(sum_treatment, sumsq_treatment, n_treatment)
    mc, vc = arm(sum_control, sumsq_control, n_control)
    return _sequence(mt - mc, vt + vc, n_control, n_treatment, alpha, tau)
