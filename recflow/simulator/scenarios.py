"""Named simulator scenarios that more than one place runs.

:data:`MONITORING_E2E`: the category-demand drift that the monitoring end-to-end test serves over HTTP
(tests/test_monitoring_e2e.py) and benchmarks/retraining_replay.py replays in one process to compare retraining
variants on the same drifted traffic (docs/monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CategoryDemandDrift:
    """A shop whose most-clicked categories lose preference from a given simulated day on."""

    #: simulator sizes (``SimulatorConfig`` users, items, days)
    world: dict[str, int] = field(default_factory=dict)
    #: simulated day the drift starts (day 0 is the reference)
    onset: int = 1
    #: how many of the most-clicked categories drift
    drift_categories: int = 3
    #: the preference logit they lose (``DriftConfig.category_demand_shift`` per category)
    demand_shift: float = -2.0
    #: requests served between the onset and the drift job's first run
    post_drift_requests: int = 8000


#: A shop large enough for the pipeline to train a useful model (the serving tests' small world never beats
#: popularity even on the logging policy's data); the top three categories lose 2.0 logits from day 1.
MONITORING_E2E = CategoryDemandDrift(world={"users": 2000, "items": 500, "days": 7}, onset=1, drift_categories=3,
                                     demand_shift=-2.0, post_drift_requests=8000)
