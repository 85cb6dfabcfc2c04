"""Prometheus metrics of a drift run: pushed to a Pushgateway, or written as a node-exporter textfile.

The alert rules in ``monitoring/prometheus/alerts.yml`` read these names; docs/monitoring.md lists them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from recflow.errors import ServiceUnavailable

if TYPE_CHECKING:
    from monitoring.drift import DriftSummary

VERDICTS = ("drift", "no_drift", "insufficient_data")


def drift_registry(summary: DriftSummary, expected_ctr: float | None = None) -> CollectorRegistry:
    """A fresh registry holding the gauges of one drift run (and the champion's expected CTR when given)."""
    registry = CollectorRegistry()
    if expected_ctr is not None:
        Gauge("recflow_champion_expected_ctr", "Click-through rate the champion's evaluation promised.",
              registry=registry).set(expected_ctr)
    verdict = Gauge("recflow_drift_verdict", "1 for the verdict of the last drift run, 0 for the others.",
                    ["verdict"], registry=registry)
    for name in VERDICTS:
        verdict.labels(name).set(1.0 if summary.verdict == name else 0.0)
    Gauge("recflow_drift_detected", "1 when the last drift run found drift (any kind), else 0.",
          registry=registry).set(1.0 if summary.verdict == "drift" else 0.0)
    kinds = Gauge("recflow_drift_kind_detected", "1 when the last run found this kind of drift.", ["kind"],
                  registry=registry)
    kinds.labels("feature").set(float(summary.feature_drift))
    kinds.labels("prediction").set(float(summary.prediction_drift))
    kinds.labels("target").set(float(summary.target_drift))
    Gauge("recflow_drift_share", "Share of the verdict's feature columns that drifted.",
          registry=registry).set(summary.drift_share)
    column = Gauge("recflow_drift_column_score", "Evidently drift score of a column (distance or p-value).",
                   ["column", "group", "method"], registry=registry)
    flagged = Gauge("recflow_drift_column_drifted", "1 when Evidently flagged the column as drifted.",
                    ["column", "group"], registry=registry)
    for c in summary.columns:
        column.labels(c.column, c.group, c.method).set(c.score)
        flagged.labels(c.column, c.group).set(float(c.drifted))
    rates = Gauge("recflow_drift_target_rate", "Rate of a target metric in a window.", ["metric", "window"],
                  registry=registry)
    pvalues = Gauge("recflow_drift_target_p_value", "p-value of a target drift test.", ["metric"],
                    registry=registry)
    for t in summary.target:
        if t.reference is not None:
            rates.labels(t.name, "reference").set(t.reference)
        if t.current is not None:
            rates.labels(t.name, "current").set(t.current)
        if t.p_value is not None:
            pvalues.labels(t.name).set(t.p_value)
    cusum = Gauge("recflow_drift_target_statistic", "Statistic of a sequential target test (CUSUM) and its "
                  "threshold.", ["metric", "kind"], registry=registry)
    for t in summary.target:
        if t.statistic is not None:
            cusum.labels(t.name, "statistic").set(t.statistic)
            cusum.labels(t.name, "threshold").set(t.threshold if t.threshold is not None else float("nan"))
    events = Gauge("recflow_drift_window_events", "Events in a window of the last drift run.", ["window"],
                   registry=registry)
    events.labels("reference").set(summary.reference_events)
    events.labels("current").set(summary.current_events)
    Gauge("recflow_drift_min_events", "Fewest events a window needs for a verdict.",
          registry=registry).set(summary.min_events)
    Gauge("recflow_drift_last_run_timestamp_seconds", "Unix time of the last drift run.",
          registry=registry).set(time.time())
    return registry


def export_metrics(summary: DriftSummary, textfile: Path, *, pushgateway: str | None = None,
                   job: str = "recflow_drift", expected_ctr: float | None = None) -> str:
    """Push the run's gauges to ``pushgateway`` (replacing the job's group), else write ``textfile``.

    Returns where the metrics went. An unreachable Pushgateway raises :class:`ServiceUnavailable`.
    """
    registry = drift_registry(summary, expected_ctr)
    if pushgateway:
        try:
            push_to_gateway(pushgateway, job=job, registry=registry, timeout=10)
        except OSError as exc:
            raise ServiceUnavailable(f"Pushgateway {pushgateway} cannot be reached: {exc}",
                                     hint="check --pushgateway, or leave it out to write metrics.prom") from None
        return f"{pushgateway.rstrip('/')}/metrics/job/{job}"
    textfile.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(textfile), registry)  # writes a temporary file and renames it (atomic)
    return str(textfile)
