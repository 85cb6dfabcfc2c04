"""The blessing: config-driven rules that decide whether a candidate model may be pushed.

Every rule is checked (no short-circuit) so the report lists *all* the reasons a candidate was refused, each
in words a person can act on, e.g. ``"ndcg@10 0.081 < floor 0.100"``. A metric that is missing or not a number
fails its rule: an evaluation that could not measure something never blesses by accident.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from recflow.evaluation.config import EvaluatorConfig
from recflow.evaluation.significance import PairedTest


@dataclass(frozen=True)
class Blessing:
    """The verdict: ``blessed`` only when ``reasons`` (the failed rules) is empty. ``checks`` lists the rules
    that passed or were skipped, for the report."""

    blessed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    try:
        value = float(metrics[key])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def best_baseline(baselines: Mapping[str, Mapping[str, Any]], key: str) -> tuple[str, float] | None:
    """The baseline with the highest measured ``key`` and its value (ties: the later label in sort order, as
    the Evaluator's paired test picks it); None when no baseline measured it."""
    measured = [(value, label) for label, m in baselines.items() if (value := _value(m, key)) is not None]
    if not measured:
        return None
    value, label = max(measured)
    return label, value


def _lift_text(cand: float, reference: float) -> str:
    lift = (cand / reference - 1.0) * 100 if reference > 0 else math.inf if cand > 0 else 0.0
    return f"lift {lift:+.1f}%"


def _floor(
    candidate: Mapping[str, Any], key: str, floor: float, reasons: list[str], checks: list[str]
) -> None:
    value = _value(candidate, key)
    if value is None:
        reasons.append(f"{key} was not measured (floor {floor:.3f})")
    elif value < floor:
        reasons.append(f"{key} {value:.3f} < floor {floor:.3f}")
    else:
        checks.append(f"{key} {value:.3f} >= floor {floor:.3f}")


def decide_blessing(
    candidate: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Any] | None,
    tests_vs_champion: PairedTest | None,
    config: EvaluatorConfig,
) -> Blessing:
    """Apply the rules of ``config.thresholds`` to a candidate's aggregate metrics.

    ``candidate``, each of ``baselines`` and ``champion`` map metric names (``ndcg@10``, ...) to values.
    Rules: absolute floors on NDCG@k and Recall@k; the primary metric must beat the ``popularity`` baseline by
    ``min_lift_over_popularity``; it must beat the best of ``baselines`` (highest primary metric) by
    ``min_lift_over_best_baseline`` (each check names the metric, both values, the margin and the baseline; a
    run without any baseline has nothing to compare with and says so as a check; a baseline list where none
    measured the metric fails); when a champion exists, the candidate must not be significantly worse than
    it (one-sided paired test at ``alpha`` on the primary metric); when ``min_index_recall`` is set, the
    retrieval index's ``index_recall@k`` must reach it; a non-zero ``exclusion_violations`` (items the
    candidate was told to exclude) always fails.
    """
    th = config.thresholds
    reasons: list[str] = []
    checks: list[str] = []
    primary = config.metric_key()

    _floor(candidate, config.metric_key("ndcg"), th.min_ndcg, reasons, checks)
    _floor(candidate, config.metric_key("recall"), th.min_recall, reasons, checks)

    if th.min_lift_over_popularity is not None:
        cand = _value(candidate, primary)
        pop = _value(baselines.get("popularity"), primary)
        needed_pct = th.min_lift_over_popularity * 100
        if "popularity" not in baselines:
            reasons.append(
                f"{primary} lift over popularity cannot be checked: the popularity baseline was not run"
            )
        elif cand is None or pop is None:
            reasons.append(f"{primary} lift over popularity cannot be checked: the metric was not measured")
        elif cand < pop * (1.0 + th.min_lift_over_popularity) or (
            pop == 0.0 and cand == 0.0 and needed_pct > 0
        ):
            reasons.append(
                f"{primary} {cand:.3f} does not beat popularity {pop:.3f} by the required {needed_pct:.1f}% "
                f"({_lift_text(cand, pop)})"
            )
        else:
            checks.append(
                f"{primary} {cand:.3f} beats popularity {pop:.3f} by at least {needed_pct:.1f}% "
                f"({_lift_text(cand, pop)})"
            )
    else:
        checks.append("lift over popularity: rule off (evaluator.thresholds.min_lift_over_popularity is null)")

    margin = th.min_lift_over_best_baseline
    if margin is None:
        checks.append(
            f"lift over the best baseline: rule off (evaluator.thresholds.min_lift_over_best_baseline is null); "
            "the candidate was not required to beat the best baseline"
        )
    else:
        needed_pct = margin * 100
        cand = _value(candidate, primary)
        best = best_baseline(baselines, primary)
        if not baselines:
            checks.append(
                f"lift over the best baseline: no baseline was run (evaluator.baselines is empty), "
                f"nothing to compare {primary} with"
            )
        elif cand is None or best is None:
            reasons.append(f"{primary} lift over the best baseline cannot be checked: the metric was not measured")
        else:
            label, value = best
            if cand < value * (1.0 + margin) or (value == 0.0 and cand == 0.0 and needed_pct > 0):
                reasons.append(
                    f"{primary} {cand:.3f} does not beat the best baseline {label} {value:.3f} by the required "
                    f"{needed_pct:.1f}% ({_lift_text(cand, value)})"
                )
            else:
                checks.append(
                    f"{primary} {cand:.3f} beats the best baseline {label} {value:.3f} by at least "
                    f"{needed_pct:.1f}% ({_lift_text(cand, value)})"
                )

    if champion is None:
        checks.append("no champion yet: nothing to compare with")
    elif th.require_not_worse_than_champion:
        if tests_vs_champion is None:
            reasons.append("a champion exists but no paired test against it was run")
        else:
            t = tests_vs_champion
            worse_by = {"ttest": ("paired t-test", t.t_p_worse), "wilcoxon": ("Wilcoxon", t.wilcoxon_p_worse)}
            used = list(worse_by) if th.significance_test == "either" else [th.significance_test]
            significant = [(worse_by[u][0], worse_by[u][1]) for u in used if worse_by[u][1] < th.alpha]
            champ = _value(champion, primary)
            champ_text = f" {champ:.3f}" if champ is not None else ""
            if t.mean_diff < 0 and significant:
                tests = ", ".join(f"{name} one-sided p={p:.3g}" for name, p in significant)
                reasons.append(
                    f"{t.metric or primary} significantly worse than the champion{champ_text}: mean per-user "
                    f"difference {t.mean_diff:+.4f} over {t.n} users ({tests} < alpha {th.alpha})"
                )
            else:
                checks.append(
                    f"{t.metric or primary} not significantly worse than the champion{champ_text} "
                    f"(mean difference {t.mean_diff:+.4f}, alpha {th.alpha})"
                )
    else:
        checks.append("comparison with the champion: rule off")

    violations = _value(candidate, "exclusion_violations")
    if violations:
        reasons.append(
            f"the candidate recommended {int(violations)} excluded (already interacted) items; "
            "the Recommender protocol forbids it"
        )

    if th.min_index_recall is not None:
        _floor(candidate, config.metric_key("index_recall"), th.min_index_recall, reasons, checks)

    return Blessing(blessed=not reasons, reasons=reasons, checks=checks)
