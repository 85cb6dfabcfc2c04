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

from recflow.evaluation.config import BlessingThresholds, EvaluatorConfig
from recflow.evaluation.noninferiority import NonInferiority


@dataclass(frozen=True)
class Check:
    """One rule of the blessing as the run summary and the report show it: ``value`` against ``threshold``,
    ``status`` ``pass``, ``fail`` or ``off`` (the rule is switched off or had nothing to compare with)."""

    rule: str  # the config key that sets it, e.g. "evaluator.thresholds.min_ndcg"
    name: str  # short label, e.g. "ndcg@10 floor"
    value: str
    threshold: str
    status: str
    detail: str

    @property
    def passed(self) -> bool:
        return self.status != "fail"


@dataclass(frozen=True)
class Blessing:
    """The verdict: ``blessed`` only when ``reasons`` (the failed rules) is empty. ``checks`` lists the rules
    that passed or were skipped, in words; ``table`` every rule as a :class:`Check`; ``overrides`` every gate
    setting that differs from its default (a gate switched off or loosened is never silent);
    ``non_inferiority`` the per-metric comparisons with the champion."""

    blessed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    table: list[Check] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    non_inferiority: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_overrides(config: EvaluatorConfig) -> list[str]:
    """Every blessing rule (``evaluator.thresholds.*``) whose value differs from its default, in words, e.g.
    ``evaluator.thresholds.min_lift_over_popularity = null (default 0.0)``."""
    defaults = BlessingThresholds()
    out = []
    for name in BlessingThresholds.model_fields:
        value, default = getattr(config.thresholds, name), getattr(defaults, name)
        if value != default:
            out.append(f"evaluator.thresholds.{name} = {_show(value)} (default {_show(default)})")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


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


class _Rules:
    """Collects :class:`Check` records; ``reasons`` are the failed ones' words, ``checks`` the others'."""

    def __init__(self) -> None:
        self.table: list[Check] = []

    def add(self, rule: str, name: str, value: Any, threshold: Any, status: str, detail: str) -> None:
        self.table.append(Check(rule, name, _fmt(value), _fmt(threshold), status, detail))

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.table if c.status == "fail"]

    @property
    def checks(self) -> list[str]:
        return [c.detail for c in self.table if c.status != "fail"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _floor(rules: _Rules, candidate: Mapping[str, Any], key: str, floor: float, rule: str) -> None:
    value = _value(candidate, key)
    if value is None:
        rules.add(rule, f"{key} floor", None, f">= {floor:.3f}", "fail",
                  f"{key} was not measured (floor {floor:.3f})")
    elif value < floor:
        rules.add(rule, f"{key} floor", value, f">= {floor:.3f}", "fail", f"{key} {value:.3f} < floor {floor:.3f}")
    else:
        rules.add(rule, f"{key} floor", value, f">= {floor:.3f}", "pass", f"{key} {value:.3f} >= floor {floor:.3f}")


def _champion_rules(
    rules: _Rules,
    champion: Mapping[str, Any],
    vs_champion: Mapping[str, NonInferiority] | None,
    config: EvaluatorConfig,
) -> None:
    """Non-inferiority with a power check, one check per metric of ``thresholds.non_inferiority_margins``."""
    rule = "evaluator.thresholds.non_inferiority_margins"
    if not vs_champion:
        rules.add(rule, "not worse than the champion", None, None, "fail",
                  "a champion exists but no non-inferiority test against it was run")
        return
    for metric, t in vs_champion.items():
        champ = _value(champion, metric)
        champ_text = f" {champ:.3f}" if champ is not None else ""
        value = f"{t.mean_diff:+.4f} (p={t.p_value:.3g}, power {t.power:.2f})"
        threshold = f"> -{t.margin_abs:.4f} ({t.margin:.1%} of the champion), alpha {t.alpha}, power >= {t.min_power}"
        base = (f"{metric}: candidate {t.candidate_mean:.4f} vs champion{champ_text} over {t.n} users, mean per-user "
                f"difference {t.mean_diff:+.4f}, margin {t.margin:.1%} ({t.margin_abs:.4f})")
        name = f"{metric} not worse than the champion"
        if not t.non_inferior:
            more = t.more_users
            need = (f"; the comparison has power {t.power:.2f} at the margin and needs about {t.required_users} "
                    f"paired users ({more} more) to reach {t.min_power:.0%}") if not t.powered and more else ""
            rules.add(rule, name, value, threshold, "fail",
                      f"{base}: not shown non-inferior (one-sided {t.test} p={t.p_value:.3g} >= alpha {t.alpha})"
                      + need)
        elif not t.powered and not t.superior:
            rules.add(rule, name, value, threshold, "fail",
                      f"{base}: the comparison cannot tell a difference of the margin (power {t.power:.2f} < "
                      f"{t.min_power:.2f}); about {t.required_users} paired users are needed ({t.more_users} "
                      "more): evaluate on more users (evaluator.max_users, a longer test split) or widen the "
                      "margin")
        else:
            why = (f"shown better (p={t.p_superior:.3g})" if t.superior and not t.powered
                   else f"power {t.power:.2f} >= {t.min_power:.2f}")
            rules.add(rule, name, value, threshold, "pass",
                      f"{base}: non-inferior (one-sided {t.test} p={t.p_value:.3g} < alpha {t.alpha}; {why})")


def _popularity_rule(rules: _Rules, candidate: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]],
                     config: EvaluatorConfig) -> None:
    """The primary metric must beat the popularity baseline by ``min_lift_over_popularity`` (off when null)."""
    th, primary = config.thresholds, config.metric_key()
    rule = "evaluator.thresholds.min_lift_over_popularity"
    if th.min_lift_over_popularity is None:
        rules.add(rule, "lift over popularity", None, None, "off",
                  "lift over popularity: rule off (evaluator.thresholds.min_lift_over_popularity is null)")
        return
    cand = _value(candidate, primary)
    pop = _value(baselines.get("popularity"), primary)
    needed_pct = th.min_lift_over_popularity * 100
    name, threshold = "lift over popularity", f">= popularity x {1 + th.min_lift_over_popularity:.3f}"
    if "popularity" not in baselines:
        rules.add(rule, name, None, threshold, "fail",
                  f"{primary} lift over popularity cannot be checked: the popularity baseline was not run")
    elif cand is None or pop is None:
        rules.add(rule, name, cand, threshold, "fail",
                  f"{primary} lift over popularity cannot be checked: the metric was not measured")
    elif cand < pop * (1.0 + th.min_lift_over_popularity) or (pop == 0.0 and cand == 0.0 and needed_pct > 0):
        rules.add(rule, name, cand, f">= {pop * (1 + th.min_lift_over_popularity):.4f}", "fail",
                  f"{primary} {cand:.3f} does not beat popularity {pop:.3f} by the required {needed_pct:.1f}% "
                  f"({_lift_text(cand, pop)})")
    else:
        rules.add(rule, name, cand, f">= {pop * (1 + th.min_lift_over_popularity):.4f}", "pass",
                  f"{primary} {cand:.3f} beats popularity {pop:.3f} by at least {needed_pct:.1f}% "
                  f"({_lift_text(cand, pop)})")


def _skipped_rule(rules: _Rules, skipped: Mapping[str, str], config: EvaluatorConfig) -> None:
    """A row naming the baselines that were configured but not run (never silent), and why."""
    if not skipped:
        return
    remaining = [b for b in config.baselines if b not in skipped]
    bar = (f"the best of the remaining baselines ({', '.join(remaining)}) is the bar" if remaining
           else "no baseline remains to compare with")
    limit = f"max_dense_items {config.max_dense_items}"
    rules.add("evaluator.max_dense_items", "baselines skipped", ", ".join(skipped), limit, "off",
              "; ".join(skipped.values()) + f"; {bar}")


def _best_baseline_rule(rules: _Rules, candidate: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]],
                        config: EvaluatorConfig, skipped: Mapping[str, str] | None = None) -> None:
    """The primary metric must beat the best baseline by ``min_lift_over_best_baseline`` (off when null or
    when no baseline ran). Skipped baselines (``skipped``: name -> reason) are not in ``baselines``: the best
    of the others is the bar, and the check says so."""
    margin, primary = config.thresholds.min_lift_over_best_baseline, config.metric_key()
    rule, name = "evaluator.thresholds.min_lift_over_best_baseline", "lift over the best baseline"
    note = f" ({', '.join(skipped)} skipped: the best remaining baseline is the bar)" if skipped else ""
    if margin is None:
        rules.add(rule, name, None, None, "off",
                  "lift over the best baseline: rule off (evaluator.thresholds.min_lift_over_best_baseline is "
                  "null); the candidate was not required to beat the best baseline")
        return
    needed_pct = margin * 100
    cand = _value(candidate, primary)
    best = best_baseline(baselines, primary)
    if not baselines:
        why = (f"every configured baseline was skipped ({'; '.join((skipped or {}).values())})" if skipped
               else "evaluator.baselines is empty")
        rules.add(rule, name, cand, None, "off",
                  f"lift over the best baseline: no baseline was run ({why}), nothing to compare {primary} with")
    elif cand is None or best is None:
        rules.add(rule, name, cand, None, "fail",
                  f"{primary} lift over the best baseline cannot be checked: the metric was not measured")
    else:
        label, value = best
        threshold = f">= {label} x {1 + margin:.3f} = {value * (1 + margin):.4f}"
        if cand < value * (1.0 + margin) or (value == 0.0 and cand == 0.0 and needed_pct > 0):
            rules.add(rule, name, cand, threshold, "fail",
                      f"{primary} {cand:.3f} does not beat the best baseline {label} {value:.3f} by the "
                      f"required {needed_pct:.1f}% ({_lift_text(cand, value)}){note}")
        else:
            rules.add(rule, name, cand, threshold, "pass",
                      f"{primary} {cand:.3f} beats the best baseline {label} {value:.3f} by at least "
                      f"{needed_pct:.1f}% ({_lift_text(cand, value)}){note}")


def decide_blessing(
    candidate: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Any] | None,
    vs_champion: Mapping[str, NonInferiority] | None,
    config: EvaluatorConfig,
    skipped: Mapping[str, str] | None = None,
) -> Blessing:
    """Apply the rules of ``config.thresholds`` to a candidate's aggregate metrics.

    ``candidate``, each of ``baselines`` and ``champion`` map metric names (``ndcg@10``, ...) to values;
    ``vs_champion`` maps metric names to the candidate's non-inferiority tests against the champion
    (:func:`recflow.evaluation.noninferiority.non_inferiority_test`, one per metric of
    ``thresholds.non_inferiority_margins``).
    Rules: absolute floors on NDCG@k and Recall@k; the primary metric must beat the ``popularity`` baseline by
    ``min_lift_over_popularity``; it must beat the best of ``baselines`` (highest primary metric) by
    ``min_lift_over_best_baseline`` (each check names the metric, both values, the margin and the baseline; a
    run without any baseline has nothing to compare with and says so as a check; a baseline list where none
    measured the metric fails); when a champion exists, every margin metric must be shown non-inferior (one-sided
    test at ``alpha``) by a comparison powered to tell a difference of the margin (or shown better); when
    ``min_index_recall`` is set, the retrieval index's ``index_recall@k`` must reach it; a non-zero
    ``exclusion_violations`` (items the candidate was told to exclude) always fails. Every rule becomes a
    :class:`Check` of ``Blessing.table``; settings differing from the defaults are listed as ``overrides``.
    ``skipped`` (baseline -> reason, e.g. ``ease`` above ``evaluator.max_dense_items``) adds an ``off`` row
    naming them, and the best-baseline check says the best remaining baseline was the bar.
    """
    th = config.thresholds
    rules = _Rules()
    prefix = "evaluator.thresholds."
    _floor(rules, candidate, config.metric_key("ndcg"), th.min_ndcg, prefix + "min_ndcg")
    _floor(rules, candidate, config.metric_key("recall"), th.min_recall, prefix + "min_recall")
    _popularity_rule(rules, candidate, baselines, config)
    _best_baseline_rule(rules, candidate, baselines, config, skipped)
    _skipped_rule(rules, skipped or {}, config)
    rule = prefix + "require_not_worse_than_champion"
    if champion is None:
        rules.add(rule, "not worse than the champion", None, None, "off",
                  "no champion yet: nothing to compare with")
    elif th.require_not_worse_than_champion:
        _champion_rules(rules, champion, vs_champion, config)
    else:
        rules.add(rule, "not worse than the champion", None, None, "off",
                  "comparison with the champion: rule off")
    violations = _value(candidate, "exclusion_violations")
    rules.add("(always on)", "exclusion violations", violations if violations is not None else 0.0, "0",
              "fail" if violations else "pass",
              f"the candidate recommended {int(violations)} excluded (already interacted) items; "
              "the Recommender protocol forbids it" if violations
              else "the candidate recommended no excluded (already interacted) item")
    if th.min_index_recall is not None:
        _floor(rules, candidate, config.metric_key("index_recall"), th.min_index_recall,
               prefix + "min_index_recall")

    return Blessing(
        blessed=not rules.reasons,
        reasons=rules.reasons,
        checks=rules.checks,
        table=rules.table,
        overrides=gate_overrides(config),
        non_inferiority={m: t.to_dict() for m, t in (vs_champion or {}).items()},
    )
