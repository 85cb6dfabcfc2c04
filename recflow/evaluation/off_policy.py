"""Off-policy estimators of a target policy's expected reward from logged bandit feedback (numpy only).

For logged decisions ``i`` with reward ``r_i``, logging probability ``mu_i`` of the logged action and target
probability ``pi_i`` of that same action (importance weight ``w_i = pi_i / mu_i``):

* IPS:    ``mean(w_i r_i)``                          unbiased when ``mu > 0`` wherever ``pi > 0``.
* SNIPS:  ``sum(w_i r_i) / sum(w_i)``                 self-normalised: biased, much lower variance.
* DM:     ``mean(qhat_pi_i)``                          the reward model's value of the target policy.
* DR:     ``mean(qhat_pi_i + w_i (r_i - qhat_i))``     unbiased if either the weights or the model is right.

Every estimate comes with a seeded percentile-bootstrap confidence interval (decisions resampled with
replacement; vectorised over replicates) and the effective sample size ``(sum w)^2 / sum w^2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

DEFAULT_REPLICATES = 1000
DEFAULT_CONFIDENCE = 0.95
#: Bound on index draws held in memory at once while bootstrapping (replicates x decisions).
_MAX_DRAWS = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    effective_sample_size: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": float(self.n),
                "effective_sample_size": self.effective_sample_size}


def _arrays(*arrays: Any) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    n = out[0].size
    if n == 0:
        raise ValueError("no logged decisions to estimate from")
    if any(a.size != n for a in out):
        raise ValueError(f"inputs differ in length: {[a.size for a in out]}")
    if any(not np.isfinite(a).all() for a in out):
        raise ValueError("inputs contain NaN or infinity")
    return out


def importance_weights(target_probs: Any, logging_probs: Any, clip: float | None = None) -> np.ndarray:
    """``pi / mu``, optionally clipped from above at ``clip``."""
    pi, mu = _arrays(target_probs, logging_probs)
    if (mu <= 0).any() or (mu > 1).any():
        raise ValueError("logging probabilities must be in (0, 1]")
    if (pi < 0).any() or (pi > 1 + 1e-9).any():
        raise ValueError("target probabilities must be in [0, 1]")
    w = pi / mu
    return np.minimum(w, clip) if clip is not None else w


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size of importance weights (n for equal weights, 0 when all are zero)."""
    total_sq = float(np.sum(weights**2))
    return float(np.sum(weights) ** 2 / total_sq) if total_sq > 0 else 0.0


class _BootstrapOptions(TypedDict):
    """The bootstrap's keyword arguments, shared by every estimator."""

    replicates: int
    confidence: float
    seed: int


def bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray | None = None,
    *,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(value, ci_low, ci_high)`` of ``sum(numerator) / sum(denominator)`` (denominator 1s: the mean).

    Percentile bootstrap over decisions, vectorised in blocks of replicates.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if replicates < 2:
        raise ValueError(f"need at least 2 bootstrap replicates, got {replicates}")
    num = np.asarray(numerator, dtype=np.float64)
    den = np.ones_like(num) if denominator is None else np.asarray(denominator, dtype=np.float64)
    n = num.size
    value = float(num.sum() / den.sum()) if den.sum() != 0 else 0.0
    rng = np.random.default_rng(seed)
    stats = np.empty(replicates)
    block = max(1, _MAX_DRAWS // n)
    for start in range(0, replicates, block):
        stop = min(replicates, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        d = den[idx].sum(axis=1)
        stats[start:stop] = np.divide(num[idx].sum(axis=1), d, out=np.zeros(stop - start), where=d != 0)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return value, float(low), float(high)


def _weighted_mean(rewards: Any, target_probs: Any, logging_probs: Any, clip: float | None, self_normalised: bool,
                   options: _BootstrapOptions) -> Estimate:
    """The importance-weighted mean reward: ``sum(w * r) / n`` or, self-normalised, ``sum(w * r) / sum(w)``."""
    (r,) = _arrays(rewards)
    w = importance_weights(target_probs, logging_probs, clip)
    _arrays(r, w)
    value, low, high = bootstrap_ratio(w * r, w if self_normalised else None, **options)
    return Estimate(value, low, high, r.size, effective_sample_size(w))


def ips(
    rewards: Any,
    target_probs: Any,
    logging_probs: Any,
    clip: float | None = None,
    *,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Inverse propensity scoring: ``mean(w * r)`` with ``w = pi / mu`` (clipped at ``clip`` when given)."""
    return _weighted_mean(rewards, target_probs, logging_probs, clip, False,
                          {"replicates": replicates, "confidence": confidence, "seed": seed})


def snips(
    rewards: Any,
    target_probs: Any,
    logging_probs: Any,
    clip: float | None = None,
    *,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Self-normalised IPS: ``sum(w * r) / sum(w)`` (invariant to rescaling the weights)."""
    return _weighted_mean(rewards, target_probs, logging_probs, clip, True,
                          {"replicates": replicates, "confidence": confidence, "seed": seed})


def direct_method(
    reward_model_expected_under_target: Any,
    *,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Direct method: the mean of the reward model's expected reward under the target policy per decision.

    The interval reflects only the sampling of contexts, not the reward model's own error.
    """
    (q_pi,) = _arrays(reward_model_expected_under_target)
    value, low, high = bootstrap_ratio(q_pi, replicates=replicates, confidence=confidence, seed=seed)
    return Estimate(value, low, high, q_pi.size, float(q_pi.size))


def doubly_robust(
    rewards: Any,
    target_probs: Any,
    logging_probs: Any,
    reward_model_chosen: Any,
    reward_model_expected_under_target: Any,
    clip: float | None = None,
    *,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: ``mean(qhat_pi + w * (r - qhat(logged action)))``.

    ``reward_model_chosen`` is the model's prediction for the logged action; ``reward_model_expected_under_target``
    is ``sum_a pi(a | x) qhat(x, a)``. With a zero model this is IPS; with a perfect model the correction term
    has mean zero.
    """
    r, q_chosen, q_pi = _arrays(rewards, reward_model_chosen, reward_model_expected_under_target)
    w = importance_weights(target_probs, logging_probs, clip)
    _arrays(r, w)
    terms = q_pi + w * (r - q_chosen)
    value, low, high = bootstrap_ratio(terms, replicates=replicates, confidence=confidence, seed=seed)
    return Estimate(value, low, high, r.size, effective_sample_size(w))


#: Outcomes :func:`evaluate_policy_offline` estimates, and the BanditData attribute holding each.
OUTCOMES: dict[str, str] = {"click_rate": "clicks", "conversion_rate": "purchases"}


def evaluate_policy_offline(
    bandit_data: Any,
    policy_probs: Any,
    reward_model: Mapping[str, tuple[Any, Any]] | None = None,
    *,
    clip: float | None = None,
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Off-policy estimates of the target policy's click rate and conversion rate per shown slot.

    ``bandit_data`` has ``clicks``, ``purchases`` and ``propensities`` arrays (a
    :class:`recflow.policy.logged_data.BanditData`); ``policy_probs`` is the target probability of each logged
    action (e.g. ``PolicyScorer.logged_action_probabilities``). ``reward_model`` maps an outcome name
    (``click_rate``, ``conversion_rate``) to ``(prediction for the logged action, expected prediction under the
    target)``; outcomes with a model also get ``dm`` and ``dr``. Keys: ``"<outcome>/<estimator>"`` plus
    ``"<outcome>/logged"`` (the logging policy's own rate, for reference).
    """
    mu = np.asarray(bandit_data.propensities, dtype=np.float64)
    results: dict[str, Estimate] = {}
    kw: _BootstrapOptions = {"replicates": replicates, "confidence": confidence, "seed": seed}
    for outcome, attr in OUTCOMES.items():
        r = np.asarray(getattr(bandit_data, attr), dtype=np.float64)
        value, low, high = bootstrap_ratio(r, **kw)
        results[f"{outcome}/logged"] = Estimate(value, low, high, r.size, float(r.size))
        results[f"{outcome}/ips"] = ips(r, policy_probs, mu, clip, **kw)
        results[f"{outcome}/snips"] = snips(r, policy_probs, mu, clip, **kw)
        if reward_model is not None and outcome in reward_model:
            q_chosen, q_pi = reward_model[outcome]
            results[f"{outcome}/dm"] = direct_method(q_pi, **kw)
            results[f"{outcome}/dr"] = doubly_robust(r, policy_probs, mu, q_chosen, q_pi, clip, **kw)
    return results
