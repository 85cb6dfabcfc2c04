"""Monitoring: drift detection on live traffic, alert rules for on-call, and the guarded retraining trigger.

* :mod:`monitoring.drift` -- the drift job (Evidently feature/prediction drift, CTR/CVR target tests).
* :mod:`monitoring.drift_metrics`, :mod:`monitoring.charts` -- its Prometheus metrics and PNG charts.
* :mod:`monitoring.watcher` -- ``recflow monitor watch``: confirmed drift or alerts start one retraining.
* ``monitoring/prometheus``, ``monitoring/alertmanager``, ``monitoring/grafana`` -- rules, routing, dashboard.
"""
