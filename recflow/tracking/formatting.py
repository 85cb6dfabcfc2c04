"""Plain-text tables of tracked runs for the terminal."""

from __future__ import annotations

from recflow.tracking.comparison import RunComparison, RunSummary


def _cell(value: str | float | None, width: int = 66) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if len(value) <= width else value[: width - 3] + "..."


def format_comparison(comparison: RunComparison, *, only_differences: bool = False) -> str:
    """Plain-text tables of params and metrics; ``*`` marks a difference, metrics show delta and % change."""
    from tabulate import tabulate

    head_a = f"A {comparison.run_a[:8]} {comparison.name_a}".strip()
    head_b = f"B {comparison.run_b[:8]} {comparison.name_b}".strip()
    rows = comparison.differences if only_differences else comparison.rows
    params = [["*" if r.differs else "", r.key, _cell(r.a), _cell(r.b)] for r in rows if r.section == "param"]
    metrics = []
    for r in (r for r in rows if r.section == "metric"):
        delta, pct = r.delta, r.change_pct
        metrics.append(
            [
                "*" if r.differs else "",
                r.key,
                _cell(r.a),
                _cell(r.b),
                "" if delta is None else f"{delta:+.6g}",
                "" if pct is None else f"{pct:+.1f}%",
            ]
        )
    n_diff = len(comparison.differences)
    parts = [
        f"A: {comparison.run_a}  {comparison.name_a}",
        f"B: {comparison.run_b}  {comparison.name_b}",
        f"{n_diff} of {len(comparison.rows)} params/metrics differ (marked *)",
        "",
    ]
    parts.append("params")
    parts.append(
        tabulate(params, headers=["", "param", head_a, head_b], tablefmt="simple", disable_numparse=True)
        if params
        else "  (none)"
    )
    parts.append("")
    parts.append("metrics")
    parts.append(
        tabulate(
            metrics,
            headers=["", "metric", head_a, head_b, "delta (B-A)", "change"],
            tablefmt="simple",
            disable_numparse=True,
        )
        if metrics
        else "  (none)"
    )
    return "\n".join(parts) + "\n"


def format_runs_table(rows: list[RunSummary], *, include_steps: bool = False) -> str:
    """The ``recflow runs list`` table: full id, name, status, blessed, pushed version, data fingerprint, NDCG@10,
    lift over popularity, start, seconds, code version (and the kind of run with ``include_steps``)."""
    from tabulate import tabulate

    table = [
        [
            r.run_id,
            r.name,
            *([r.kind] if include_steps else []),
            r.status,
            "-" if r.blessed is None else ("yes" if r.blessed else "no"),
            r.pushed_version or "-",
            r.data_fingerprint,
            "-" if r.ndcg_at_10 is None else f"{r.ndcg_at_10:.4f}",
            "-" if r.lift_pct is None else f"{r.lift_pct:+.1f}%",
            r.started,
            "" if r.seconds is None else f"{r.seconds:.1f}",
            r.code_version,
        ]
        for r in rows
    ]
    headers = ["run id", "name", *(["kind"] if include_steps else []), "status", "blessed", "pushed", "data",
               "ndcg@10", "lift", "started (UTC)", "seconds", "code"]
    return str(tabulate(table, headers=headers, disable_numparse=True))
