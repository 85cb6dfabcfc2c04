"""A simulated shop front end talking to the recommendation service: what it sends for a ShopEnv observation.

Used wherever simulated users drive the service: over HTTP in the monitoring end-to-end test
(tests/test_monitoring_e2e.py), in process in benchmarks/retraining_replay.py.
"""

from __future__ import annotations

from typing import Any

from recflow.schema import POSITIVE_EVENT_TYPES
from recflow.simulator.env import Observation, StepResult


def context_of(obs: Observation) -> dict[str, Any]:
    """The request context of a ShopEnv observation."""
    return {"hour": obs.hour, "weekday": obs.weekday, "device": obs.device, "region": obs.region}


def slate_feedback(slate: list[str], request_id: str, step: StepResult) -> list[dict[str, str]]:
    """What a client posts back for a served slate: its impressions, then the user's clicks, carts and purchases.

    ``step`` is the ShopEnv step that showed ``slate``; it must carry its events (``record_events`` on)."""
    if step.events is None:
        raise ValueError("the step carries no events: create the ShopEnv with record_events on")
    return ([{"event_type": "impression", "item_id": i, "request_id": request_id} for i in slate]
            + [{"event_type": str(e.event_type), "item_id": str(e.item_id), "request_id": request_id}
               for e in step.events.itertuples() if e.event_type in POSITIVE_EVENT_TYPES])
