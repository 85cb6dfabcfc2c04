"""The Evaluator's outputs: a self-contained ``report.html``, ``metrics.json`` and ``blessing.json``.

``blessing.json`` (``{"blessed": bool, "reasons": [...], "checks": [...], "table": [every check], "overrides":
[...], "non_inferiority": {...}, "candidate": name, "metrics":
{...}}``) is what the Pusher reads. It is removed first and written last, so an evaluation that fails half-way
leaves no blessing behind and pushes nothing. Every file is written atomically. Plots are rendered with
matplotlib's object API (no pyplot, no display) and embedded as base64 PNG, so the HTML has no external
references.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recflow.evaluation.beyond_accuracy import BEYOND_ACCURACY_METRICS, BOOTSTRAP_REPLICATES
from recflow.evaluation.metrics import CI_LEVEL, METRIC_NAMES
from recflow.io import atomic_path

if TYPE_CHECKING:
    from recflow.evaluation.evaluator import EvaluationResult

REPORT_NAME = "report.html"
METRICS_NAME = "metrics.json"
BLESSING_NAME = "blessing.json"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em
auto;max-width:1100px;color:#222} h1{margin-bottom:.2em} h2{border-bottom:1px solid
#ddd;padding-bottom:.2em;margin-top:1.6em} table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
# th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3} td{text-align:right} td:first-child,th:first-child{text-align:left}
.verdict{display:inline-block;padding:.35em .9em;border-radius:4px;font-weight:bold;color:#fff}
.blessed{background:#2e7d32} .refused{background:#c62828} .muted{color:#777} img{max-width:100%}
"""


def json_safe(value: Any) -> Any:
    """Convert results to plain JSON types: NaN/inf -> None, numpy scalars -> Python, DataFrames -> records,
    dataclasses/objects with ``to_dict`` -> dicts."""
    if hasattr(value, "to_dict") and not isinstance(value, pd.DataFrame | pd.Series):
        return json_safe(value.to_dict())
    if isinstance(value, pd.DataFrame):
        return [json_safe(r) for r in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return json_safe(value.to_dict())
    if is_dataclass(value) and not isinstance(value, type):
        return json_safe(vars(value))
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def metric_bars_png(table: pd.DataFrame, metrics: list[str]) -> str:
    """Grouped bar chart (one group per metric, one bar per method) as base64 PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    methods = table["method"].tolist()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(metrics))
    for i, method in enumerate(methods):
        values = [float(table.loc[table["method"] == method, m].iloc[0]) for m in metrics]
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(values), width, label=method)
    ax.set_xticks(x, metrics)
    ax.set_ylabel("mean over users")
    ax.set_title("Ranking metrics by method")
    ax.legend(fontsize="small", ncols=min(len(methods), 4))
    return _png(fig)


def tradeoff_png(table: pd.DataFrame, accuracy: str, exposure: str) -> str:
    """Scatter of each method's ``accuracy`` metric against its ``exposure`` metric (e.g. long-tail share)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for _, row in table.iterrows():
        x, y = float(row[exposure]), float(row[accuracy])
        if np.isfinite(x) and np.isfinite(y):
            ax.scatter([x], [y])
            ax.annotate(str(row["method"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(exposure)
    ax.set_ylabel(accuracy)
    ax.set_title(f"Accuracy vs {exposure.split('@')[0].replace('_', ' ')} by method")
    ax.grid(alpha=0.3)
    return _png(fig)


def _metric_base(column: str) -> str:
    return column.split("@", 1)[0]


def per_user_distribution_png(per_user: Mapping[str, pd.Series], metric: str) -> str:
    """Box plot of a per-user metric for each method (mean marked) as base64 PNG."""
    from matplotlib.figure import Figure

    labels = list(per_user)
    values = [per_user[label].dropna().to_numpy() for label in labels]
    fig = Figure(figsize=(10, 0.45 * len(labels) + 1.5))
    ax = fig.subplots()
    ax.boxplot(
        values[::-1],
        tick_labels=labels[::-1],
        orientation="horizontal",
        showmeans=True,
        meanprops={"marker": "D", "markerfacecolor": "black", "markeredgecolor": "black"},
    )
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"per-user {metric} (box: quartiles, diamond: mean)")
    ax.set_title(f"Distribution of per-user {metric}")
    return _png(fig)


def slice_auc_png(slices: pd.DataFrame) -> str:
    """Horizontal bars of AUC per slice (TFMA output) as base64 PNG."""
    from matplotlib.figure import Figure

    labels = [f"{s}={v}" if v else s for s, v in zip(slices["slice"], slices["value"], strict=True)]
    fig = Figure(figsize=(8, 0.35 * len(labels) + 1.2))
    ax = fig.subplots()
    ax.barh(labels[::-1], np.nan_to_num(slices["auc"].to_numpy(dtype=float))[::-1])
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUC")
    ax.set_title("Ranking model AUC by slice (TFMA)")
    return _png(fig)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0)


def _list(items: list[str], empty: str) -> str:
    if not items:
        return f'<p class="muted">{html.escape(empty)}</p>'
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _significance_table(result: EvaluationResult) -> pd.DataFrame:
    rows = []
    for key, t in result.significance.items():
        rows.append(
            {
                "comparison": f"candidate vs {t.reference or key}",
                "metric": t.metric,
                "users": t.n,
                "mean diff": t.mean_diff,
                "ci low": t.ci[0],
                "ci high": t.ci[1],
                "t": t.t_stat,
                "t p": t.t_p,
                "t p (worse)": t.t_p_worse,
                "Wilcoxon W": t.wilcoxon_stat,
                "Wilcoxon p": t.wilcoxon_p,
                "Wilcoxon p (worse)": t.wilcoxon_p_worse,
                "note": t.note,
            }
        )
    return pd.DataFrame(rows)


def _skipped_html(result: EvaluationResult) -> str:
    if not result.skipped_baselines:
        return ""
    reasons = "".join(f"<li>{html.escape(why)}</li>" for why in result.skipped_baselines.values())
    return (f"<p>Baselines not run:</p><ul>{reasons}</ul><p>The best of the baselines that ran is the bar the "
            "candidate must beat.</p>")


def _best_baseline_html(result: EvaluationResult) -> str:
    best = result.best_baseline
    if not best:
        return '<p class="muted">best baseline: none (no baseline measured the primary metric)</p>' + (
            _skipped_html(result))
    cand = result.candidate.metrics.get(result.primary_metric)
    measured = isinstance(cand, int | float) and math.isfinite(cand)
    cand_text = f"; the candidate {cand:.4f}" if measured else ""
    return (
        f"<p>Best baseline of this run: <b>{html.escape(str(best['label']))}</b> "
        f"({html.escape(str(best['name']))}), {html.escape(str(best['metric']))} {float(best['value']):.4f}"
        f"{cand_text}.</p>" + _skipped_html(result)
    )


def intervals_table(result: EvaluationResult) -> pd.DataFrame:
    """One row per method: each metric's point estimate with its 95% confidence interval, as text
    ``0.3640 [0.3512, 0.3768]`` (ranking metrics: the mean over the evaluated users, metrics.confidence_intervals;
    coverage and the beyond-accuracy metrics: a seeded bootstrap over them,
    beyond_accuracy.list_metric_intervals)."""
    rows = []
    for m in result.methods.values():
        row: dict[str, Any] = {"method": m.label}
        for metric, (low, high) in m.intervals.items():
            value = m.metrics.get(metric, float("nan"))
            row[metric] = f"{value:.4f} [{low:.4f}, {high:.4f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def _intervals_html(result: EvaluationResult) -> str:
    table = intervals_table(result)
    if table.empty or len(table.columns) < 2:
        return ""
    return (f"<h3>Point estimates with 95% confidence intervals ({result.n_users} users)</h3>"
            '<p class="muted">Ranking metrics: mean over the evaluated users [95% CI: Student t approximation of '
            "the mean of the per-user values, clipped to [0, 1]]. Coverage and the beyond-accuracy metrics [95% "
            f"CI: bootstrap, {BOOTSTRAP_REPLICATES} seeded resamples of the users, centred on the point "
            "estimate]. Differences between methods are tested paired, below.</p>"
            + _table(table))


def tuning_table(result: EvaluationResult) -> pd.DataFrame:
    """One row per tuned baseline: the metric on the eval split, the chosen hyper-parameters, the trials."""
    rows = []
    for name, t in result.baseline_tuning.items():
        trials = t.get("trials", [])
        rows.append(
            {
                "baseline": name,
                "trials": len(trials),
                f"eval {t.get('metric', '')} (best)": t.get("best_score"),
                f"eval {t.get('metric', '')} (trial 0: configured)": trials[0]["score"] if trials else None,
                "chosen hyper-parameters": json.dumps(json_safe(t.get("best_params", {})), sort_keys=True),
                "seconds": round(float(t.get("seconds", 0.0)), 2),
            }
        )
    return pd.DataFrame(rows)


def _tuning_html(result: EvaluationResult) -> str:
    parts = ["<h2>Baseline tuning (fit on train, scored on eval)</h2>"]
    if result.baseline_tuning:
        parts.append(
            '<p class="muted">Each tuned baseline got the same number of trials (Optuna TPE, seeded; trial 0 = '
            "the configured values); the chosen configuration was then fitted on train and compared on the "
            f"{html.escape(result.split)} split above.</p>"
        )
        parts.append(_table(tuning_table(result)))
    if result.baseline_tuning_note:
        parts.append(f"<p>{html.escape(result.baseline_tuning_note)}</p>")
    return "".join(parts) if len(parts) > 1 else ""


def _extra_sections(extra: Mapping[str, Any]) -> list[str]:
    parts = []
    for key, value in extra.items():
        if key == "slices":
            continue
        title = html.escape(str(key).replace("_", " "))
        if isinstance(value, pd.DataFrame):
            parts.append(f"<h2>{title}</h2>{_table(value)}")
        elif isinstance(value, Mapping):
            frame = pd.DataFrame(
                {
                    "name": [str(k) for k in value],
                    "value": [
                        json.dumps(json_safe(v)) if not isinstance(v, int | float | str) else v
                        for v in value.values()
                    ],
                }
            )
            parts.append(f"<h2>{title}</h2>{_table(frame)}")
        else:
            parts.append(f"<h2>{title}</h2><p>{html.escape(str(value))}</p>")
    return parts


def _beyond_accuracy_sections(result: EvaluationResult, table: pd.DataFrame, beyond_cols: list[str]) -> list[str]:
    if not beyond_cols:
        return []
    coverage = [c for c in table.columns if c.startswith("coverage@")]
    intro = (
        "<h2>Beyond accuracy: diversity, novelty, exposure</h2>"
        '<p class="muted">diversity = share of item pairs in a list from different categories; novelty = mean '
        "-log2 of the item's smoothed share of training interactions (bits); long-tail share = share of slots "
        f"on items outside the head ({int(result.long_tail.get('head_items', 0))} "
        f"items holding {result.long_tail.get('head_share', 0.8):.0%} of training interactions); exposure Gini "
        "over the whole catalog (0 = even).</p>"
    )
    parts = [
        intro,
        _table(table[["method", result.primary_metric, *coverage, *beyond_cols]]),
    ]
    tail = f"long_tail_share@{result.k}"
    if tail in table.columns:
        parts.append(_img(tradeoff_png(table, result.primary_metric, tail), "accuracy vs long-tail share"))
    if result.reranking:
        r = result.reranking
        parts.append(
            f"<p>Candidate re-ranked with <b>{html.escape(str(r.get('method')))}</b>, strength "
            f"{float(r.get('strength', 0.0)):g}, from the top {r.get('candidates')} items of the model; "
            "<code>candidate_unreranked</code> is the model's own ranking.</p>"
        )
    exposure = result.exposure_table()
    if not exposure.empty:
        parts.append(
            "<h3>Exposure by category (share of recommended slots)</h3>"
            '<p class="muted">train = the category\'s share of training interactions; catalog = its share of '
            "catalog items.</p>" + _table(exposure)
        )
    return parts


def checks_frame(blessing: Any) -> pd.DataFrame:
    """Every rule of the blessing as one row: check, value, threshold, status (pass / fail / off), config key."""
    rows = [{"check": c.name, "value": c.value, "threshold": c.threshold, "status": c.status, "rule": c.rule}
            for c in blessing.table]
    return pd.DataFrame(rows, columns=["check", "value", "threshold", "status", "rule"])


def _checks_html(blessing: Any) -> str:
    return "<h3>Every check</h3>" + (_table(checks_frame(blessing)) if blessing.table else "<p>none</p>")


def _non_inferiority_html(blessing: Any) -> str:
    if not blessing.non_inferiority:
        return ""
    cols = ["metric", "n", "candidate_mean", "reference_mean", "mean_diff", "margin", "margin_abs", "p_value",
            "p_superior", "power", "required_users", "more_users", "non_inferior", "powered", "passed"]
    frame = pd.DataFrame([{c: t.get(c) for c in cols} for t in blessing.non_inferiority.values()])
    return "<h3>Non-inferiority against the champion (one-sided, with power)</h3>" + _table(frame)


def render_html(result: EvaluationResult) -> str:
    """The report as one self-contained HTML string."""
    blessing = result.blessing
    cand = result.candidate
    full_table = result.metrics_table()
    beyond_cols = [c for c in full_table.columns if _metric_base(c) in BEYOND_ACCURACY_METRICS]
    table = full_table.drop(columns=beyond_cols)
    metrics = [c for c in table.columns if _metric_base(c) in METRIC_NAMES]
    verdict = (
        '<span class="verdict blessed">BLESSED</span>'
        if blessing.blessed
        else '<span class="verdict refused">NOT BLESSED</span>'
    )
    primary = result.primary_metric
    sections = [
        f"<h1>Evaluation of {html.escape(cand.name)}</h1>",
        (
            f"<p>{verdict} &nbsp; split <b>{html.escape(result.split)}</b>, {result.n_users} users, "
            f"k = {result.k}, "
            f"catalog {result.catalog_size} items, primary metric <b>{html.escape(primary)}</b></p>"
        ),
        *([f"<p>{html.escape(result.user_sample_note)}</p>"] if result.user_sample_note else []),
        "<h2>Blessing</h2>" + _checks_html(blessing),
        "<h3>Failed rules</h3>" + _list(blessing.reasons, "none: every rule passed"),
        "<h3>Passed or skipped rules</h3>" + _list(blessing.checks, "none"),
        "<h3>Gate settings changed from the defaults</h3>" + _list(blessing.overrides, "none"),
        _non_inferiority_html(blessing),
        _best_baseline_html(result),
        "<h2>Metrics: candidate vs champion vs baselines</h2>" + _table(table),
        _intervals_html(result),
        _img(metric_bars_png(table, metrics), "metric bars by method"),
        "<h2>Significance (paired, per user)</h2>"
        + (
            _table(_significance_table(result))
            if result.significance
            else '<p class="muted">no comparison</p>'
        ),
        _img(
            per_user_distribution_png(
                {m.label: m.per_user[primary] for m in result.methods.values()}, primary
            ),
            f"per-user {primary} distribution",
        ),
    ]
    tuning = _tuning_html(result)
    if tuning:
        sections.append(tuning)
    if not result.segments.empty:
        sections.append("<h2>By user type (new vs returning)</h2>" + _table(result.segments))
    sections.extend(_beyond_accuracy_sections(result, full_table, beyond_cols))
    slices = result.extra.get("slices")
    if isinstance(slices, pd.DataFrame) and not slices.empty:
        sections.append("<h2>Ranking model per slice (TFMA)</h2>" + _table(slices))
        if "auc" in slices.columns:
            sections.append(_img(slice_auc_png(slices), "AUC by slice"))
    sections.extend(_extra_sections(result.extra))
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>recflow evaluation: {html.escape(cand.name)}</title><style>{_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def metrics_document(result: EvaluationResult) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    return json_safe(
        {
            "k": result.k,
            "split": result.split,
            "n_users": result.n_users,
            "eligible_users": result.eligible_users,
            "user_sample": result.user_sample_note,
            "catalog_size": result.catalog_size,
            "primary_metric": result.primary_metric,
            "candidate": result.candidate.name,
            "methods": {
                m.label: {"name": m.name, "role": m.role, "seconds": m.seconds, **m.metrics}
                for m in result.methods.values()
            },
            "significance": {k: t.to_dict() for k, t in result.significance.items()},
            "segments": result.segments,
            "long_tail": result.long_tail,
            "exposure_by_group": {
                **result.exposure_reference,
                **{m.label: m.exposure for m in result.methods.values() if m.exposure},
            },
            "reranking": result.reranking,
            "best_baseline": result.best_baseline,
            "skipped_baselines": result.skipped_baselines,
            "confidence_intervals": {
                "level": CI_LEVEL,
                "method": "Student t approximation of the mean over users, clipped to [0, 1]",
                "methods": {m.label: {k: list(v) for k, v in m.intervals.items()} for m in result.methods.values()},
            },
            "baseline_tuning": result.baseline_tuning,
            "baseline_tuning_note": result.baseline_tuning_note,
            "extra": result.extra,
        }
    )


def blessing_document(result: EvaluationResult) -> dict[str, Any]:
    """The content of ``blessing.json`` (read by the Pusher)."""
    return json_safe(
        {
            "blessed": result.blessing.blessed,
            "reasons": result.blessing.reasons,
            "checks": result.blessing.checks,
            "table": [asdict(c) for c in result.blessing.table],
            "overrides": result.blessing.overrides,
            "non_inferiority": result.blessing.non_inferiority,
            "candidate": result.candidate.name,
            "metrics": result.candidate.metrics,
            "best_baseline": result.best_baseline,
            "skipped_baselines": result.skipped_baselines,
        }
    )


def write_report(out_dir: str | Path, result: EvaluationResult) -> Path:
    """Write ``report.html``, ``metrics.json`` and (last) ``blessing.json`` into ``out_dir``; return the
    report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BLESSING_NAME).unlink(missing_ok=True)  # a stale verdict must not survive a failed write below
    report = out / REPORT_NAME
    _write_text(report, render_html(result))
    _write_text(out / METRICS_NAME, json.dumps(metrics_document(result), indent=2, allow_nan=False) + "\n")
    _write_text(out / BLESSING_NAME, json.dumps(blessing_document(result), indent=2, allow_nan=False) + "\n")
    return report
