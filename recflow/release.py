"""The online half of the release gate: a pushed champion is a *canary* first, and a guardrail decides.

A blessed bundle pushed while a champion exists becomes the store's ``canary`` alias (the champion stays); the
serving process (:mod:`serving.canary`) sends a stable share of users (by a hash of the user id) to it and the
rest to the champion, counts each arm's requests, errors, latency, impressions and clicks
(:class:`ArmStats`), and after every batch asks :func:`canary_decision`:

* **rollback** as soon as the canary is shown worse on any guardrail, by an always-valid confidence sequence
  (:mod:`recflow.sequential`, so looking after every request keeps the error rate at ``alpha``): click rate
  lower (the interval for canary - champion lies below 0), error rate higher (above 0), mean latency higher by
  more than ``latency_margin_ms`` or above ``latency_budget_ms`` outright;
* **promote** once the canary has served ``min_requests`` and is shown non-inferior on all three: click rate not
  lower by more than ``ctr_margin`` (relative), error rate not higher by more than ``error_margin``, latency not
  higher by more than ``latency_margin_ms``;
* **rollback** when ``max_requests`` canary requests have not settled it (inconclusive: keep what was proven);
* otherwise **continue**.

Everything here is plain typed functions and data; serving, the CLI and the benchmark call them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recflow.sequential import ConfidenceSequence, mean_difference, rate_difference

Action = Literal["continue", "promote", "rollback"]


class CanaryConfig(BaseModel):
    """The canary release of a pushed champion and its online guardrail (recflow/release.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True,
        description="Push a blessed model as the canary when a champion exists (the first model becomes "
        "champion directly); false = a push replaces the champion at once (reported as a gate override).",
    )
    share: float = Field(
        0.1, gt=0.0, lt=1.0, description="Share of users (stable by a hash of the user id) the canary serves."
    )
    salt: str = Field("canary", description="Salt of the user hash that assigns the canary's users.")
    alpha: float = Field(
        0.05, gt=0.0, lt=1.0, description="Level of the always-valid confidence sequences (each guardrail)."
    )
    ctr_margin: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Promotion needs the canary's click rate shown no lower than the champion's by more than "
        "this share of the champion's click rate (0.1: at most 10% lower).",
    )
    ctr_tau: float = Field(
        0.01,
        gt=0.0,
        description="Mixing standard deviation of the click-rate test (absolute click-rate difference it is "
        "most sensitive to).",
    )
    error_margin: float = Field(
        0.005, ge=0.0, description="Promotion needs the error-rate increase shown below this (absolute)."
    )
    error_tau: float = Field(0.01, gt=0.0, description="Mixing standard deviation of the error-rate test.")
    latency_margin_ms: float = Field(
        5.0, ge=0.0, description="Promotion needs the mean-latency increase shown below this (ms); a canary "
        "shown slower by more is rolled back."
    )
    latency_budget_ms: float = Field(
        100.0, gt=0.0, description="A canary whose mean request latency is shown above this (ms) is rolled back."
    )
    latency_tau_ms: float = Field(5.0, gt=0.0, description="Mixing standard deviation of the latency test (ms).")
    min_requests: int = Field(
        500, ge=1, description="Canary requests before a promotion may happen (a rollback may happen any time)."
    )
    max_requests: int = Field(
        20000, ge=1, description="Canary requests after which an undecided canary is rolled back."
    )
    min_impressions: int = Field(
        1000, ge=0, description="Canary impressions (fed back) before a promotion may happen."
    )
    decide_every: int = Field(
        50, ge=1, description="Serving evaluates the guardrail after every this many canary requests."
    )


class ReleaseConfig(BaseModel):
    """How a blessed model reaches production (the ``release`` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary: CanaryConfig = Field(CanaryConfig(), description="Canary release and online guardrail.")
    baseline_fallback: Literal["no_champion", "never"] = Field(
        "no_champion",
        description="When the candidate is not blessed: 'no_champion' pushes the run's best servable baseline "
        "(recflow/servable_baseline.py) as a bundle of kind 'baseline' if the store has no champion yet, so a "
        "shop always serves the best recommender its run found; it never replaces a champion. 'never': an "
        "unblessed run pushes nothing (reported as a gate override).",
    )


@dataclass
class ArmStats:
    """What one arm (champion or canary) served: requests, failed requests, latency sums, impressions, clicks."""

    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency_sumsq_ms: float = 0.0
    impressions: int = 0
    clicks: int = 0

    def add_request(self, latency_ms: float, error: bool = False) -> None:
        self.requests += 1
        self.errors += int(bool(error))
        if math.isfinite(latency_ms):
            self.latency_sum_ms += latency_ms
            self.latency_sumsq_ms += latency_ms * latency_ms

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else math.nan

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_sum_ms / self.requests if self.requests else math.nan

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        out.update(ctr=None if math.isnan(self.ctr) else self.ctr,
                   mean_latency_ms=None if math.isnan(self.mean_latency_ms) else self.mean_latency_ms)
        return out


@dataclass
class GuardrailState:
    """The running (intersected) confidence sequences of one canary; start a fresh one per canary."""

    ctr: ConfidenceSequence | None = None
    errors: ConfidenceSequence | None = None
    latency: ConfidenceSequence | None = None
    latency_canary: ConfidenceSequence | None = None


@dataclass(frozen=True)
class CanaryDecision:
    """What the guardrail decided, why, and the numbers behind it."""

    action: Action
    reasons: list[str]
    canary_requests: int
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canary_decision(
    champion: ArmStats, canary: ArmStats, config: CanaryConfig, state: GuardrailState | None = None
) -> CanaryDecision:
    """Decide on a canary from both arms' counts (see the module docstring). ``state`` carries the running
    intersections of the confidence sequences between calls and is updated in place."""
    state = state if state is not None else GuardrailState()
    a = config.alpha
    state.ctr = rate_difference(canary.clicks, canary.impressions, champion.clicks, champion.impressions,
                                alpha=a, tau=config.ctr_tau).intersect(state.ctr)
    state.errors = rate_difference(canary.errors, canary.requests, champion.errors, champion.requests,
                                   alpha=a, tau=config.error_tau).intersect(state.errors)
    state.latency = mean_difference(canary.latency_sum_ms, canary.latency_sumsq_ms, canary.requests,
                                    champion.latency_sum_ms, champion.latency_sumsq_ms, champion.requests,
                                    alpha=a, tau=config.latency_tau_ms).intersect(state.latency)
    # the canary's own mean latency against the budget: a one-arm sequence (control = the budget, no variance)
    budget = mean_difference(canary.latency_sum_ms, canary.latency_sumsq_ms, canary.requests,
                             config.latency_budget_ms, config.latency_budget_ms ** 2, 1,
                             alpha=a, tau=config.latency_tau_ms)
    state.latency_canary = budget.intersect(state.latency_canary)
    ctr, err, lat, over = state.ctr, state.errors, state.latency, state.latency_canary
    intervals = {"ctr": ctr.to_dict(), "error_rate": err.to_dict(), "latency_ms": lat.to_dict(),
                 "latency_over_budget_ms": over.to_dict()}
    n = canary.requests

    worse = []
    if ctr.high < 0:
        worse.append(f"click rate lower: canary {canary.ctr:.4f} vs champion {champion.ctr:.4f} "
                     f"(difference in [{ctr.low:+.4f}, {ctr.high:+.4f}], always-valid {1 - a:.0%})")
    if err.low > 0:
        worse.append(f"error rate higher: canary {canary.errors}/{canary.requests} vs champion "
                     f"{champion.errors}/{champion.requests} (difference in [{err.low:+.4f}, {err.high:+.4f}])")
    if lat.low > config.latency_margin_ms:
        worse.append(f"slower: mean latency {canary.mean_latency_ms:.1f} ms vs {champion.mean_latency_ms:.1f} ms "
                     f"(difference in [{lat.low:+.1f}, {lat.high:+.1f}] ms > margin {config.latency_margin_ms} ms)")
    if over.low > 0:
        worse.append(f"over the latency budget: mean {canary.mean_latency_ms:.1f} ms > "
                     f"{config.latency_budget_ms:.0f} ms (shown: at least {over.low:+.1f} ms over)")
    if worse:
        return CanaryDecision("rollback", worse, n, intervals)

    ctr_floor = -config.ctr_margin * (champion.ctr if champion.impressions else 0.0)
    pending = []
    if n < config.min_requests:
        pending.append(f"{n} of {config.min_requests} canary requests")
    if canary.impressions < config.min_impressions:
        pending.append(f"{canary.impressions} of {config.min_impressions} canary impressions")
    if not ctr.low > ctr_floor:
        pending.append(f"click rate not yet shown within {config.ctr_margin:.0%} of the champion's "
                       f"(lower bound {ctr.low:+.4f} <= {ctr_floor:+.4f})")
    if not err.high < config.error_margin:
        pending.append(f"error rate not yet shown within +{config.error_margin} (upper bound {err.high:+.4f})")
    if not lat.high < config.latency_margin_ms:
        pending.append(f"latency not yet shown within +{config.latency_margin_ms} ms (upper bound "
                       f"{lat.high:+.1f} ms)")
    if not pending:
        return CanaryDecision("promote", [
            f"non-inferior after {n} canary requests: click rate {canary.ctr:.4f} vs {champion.ctr:.4f} "
            f"(difference >= {ctr.low:+.4f} > {ctr_floor:+.4f}), error rate difference <= {err.high:+.4f}, "
            f"latency difference <= {lat.high:+.1f} ms"], n, intervals)
    if n >= config.max_requests:
        return CanaryDecision("rollback", [f"inconclusive after {n} canary requests (max_requests "
                                           f"{config.max_requests}): " + "; ".join(pending)], n, intervals)
    return CanaryDecision("continue", pending, n, intervals)
