"""The monitoring config section (defined in the core: :mod:`recflow.monitoring_config`)."""

from __future__ import annotations

from typing import Any

from recflow.monitoring_config import DriftConfig, MonitoringConfig, WatchConfig

__all__ = ["DriftConfig", "MonitoringConfig", "WatchConfig", "monitoring_config"]


def monitoring_config(config: Any) -> MonitoringConfig:
    """The ``monitoring`` section of a RecflowConfig (the defaults for objects without one, e.g. in tests)."""
    section = getattr(config, "monitoring", None)
    return section if isinstance(section, MonitoringConfig) else MonitoringConfig()
