"""The HTTP service's Prometheus metrics (one registry per app; summed over workers in multiprocess mode)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from serving.recommender import Recommender

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class _ServiceCollector:
    """Counters and gauges read from the recommender at scrape time (the live one, across hot swaps)."""

    def __init__(self, recommender_ref: Callable[[], Recommender]) -> None:
        self.ref = recommender_ref

    def collect(self) -> Any:
        rec = self.ref()
        yield GaugeMetricFamily(
            "recflow_feedback_learner_lag_events",
            "Feedback events not yet learned by the online policy",
            value=rec.learner_lag(),
        )
        yield GaugeMetricFamily(
            "recflow_feedback_log_age_seconds",
            "Seconds since the last feedback append (-1: none yet)",
            value=_age(rec),
        )


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    With several workers (``PROMETHEUS_MULTIPROC_DIR`` set by ``recflow serve --workers``) the counters and the
    histogram are summed over the workers by prometheus_client's multiprocess collector; the two gauges read at
    scrape time (learner lag, log age) are the scraped worker's own.
    """

    def __init__(self, recommender_ref: Callable[[], Recommender]) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter(
            "recflow_http_requests_total",
            "HTTP requests by endpoint and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recflow_http_request_seconds",
            "HTTP request latency by endpoint and status",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model = Gauge(
            "recflow_model_version_info",
            "Model version served per variant, and its kind: model, or baseline (the run's best baseline, pushed "
            "when its candidate lost); value 1; with several workers, one series per worker pid",
            ["variant", "version", "kind"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.feedback = Counter(
            "recflow_feedback_events",
            "Feedback events appended to the log, by A/B variant and event type ('unattributed': no known request "
            "id); the click rate is rate(clicks) / rate(impressions) in PromQL",
            ["variant", "event_type"],
            registry=self.registry,
        )
        self.model_events = {
            "swap": Counter("recflow_model_swaps", "Hot swaps done", registry=self.registry),
            "rollback": Counter("recflow_model_rollbacks", "Rollbacks done", registry=self.registry),
            "swap_rejected": Counter(
                "recflow_model_rejected", "Model versions rejected at load or warm-up", registry=self.registry
            ),
        }
        self._shown: set[tuple[str, str]] = set()
        service = _ServiceCollector(recommender_ref)
        if self.multiprocess:
            from prometheus_client import multiprocess

            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition)
            self.exposition.register(service)  # type: ignore[arg-type]
        else:
            self.registry.register(service)  # type: ignore[arg-type]
            self.exposition = self.registry
        from serving.canary import register_metrics as register_canary_metrics

        register_canary_metrics(self.exposition, lambda: recommender_ref().canary)

    def count_feedback(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.feedback.labels(str(r.get("variant") or "unattributed"), str(r["event_type"])).inc()

    def count_model_event(self, event: str) -> None:
        if event in self.model_events:
            self.model_events[event].inc()

    def refresh_versions(self, rec: Recommender) -> None:
        shown = {(name, variant.bundle.version, getattr(variant.bundle, "kind", "model"))
                 for name, variant in rec.variants.items()}
        for labels in self._shown - shown:
            if self.multiprocess:
                self.model.labels(*labels).set(0)  # a multiprocess gauge's series cannot be removed
            else:
                self.model.remove(*labels)
        for labels in shown:
            self.model.labels(*labels).set(1)
        self._shown = shown


def _age(rec: Recommender) -> float:
    fb = rec.feedback_log
    return -1.0 if fb is None or not fb.last_append_unix else time.time() - fb.last_append_unix

