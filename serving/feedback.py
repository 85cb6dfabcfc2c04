"""The feedback sink: served slates remembered for attribution, and feedback validated, enriched, logged durably,
fed to the online learners, the users' histories and the canary's per-arm counts.

A feedback event names a served slate by its ``request_id``; the slate is found in this process's memory (the
newest ``request_cache_size`` slates) or, with several workers, in the slates they share
(:class:`serving.decisions.SharedDecisions`). From it an event gets its user, position, propensity, policy id,
variant and context (an impression also the model's score and click probability, for monitoring).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from recflow.errors import DataError
from serving.decisions import SharedDecisions
from serving.feedback_log import FeedbackLog
from serving.history import HISTORY_EVENT_TYPES, HistoryEntry, UserHistories
from serving.slates import Decision, Recommendation, RecommendedItem, Variant

FEEDBACK_TYPES: tuple[str, ...] = (
    "impression",
    "view",
    "click",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
)


def parse_timestamp(value: Any, n: int) -> pd.Timestamp:
    """An event's timestamp as a UTC timestamp to the millisecond; DataError naming ``events[n]`` otherwise."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"events[{n}].timestamp: not a date/time ({exc})") from None
    if ts is pd.NaT:
        raise DataError(f"events[{n}].timestamp: not a date/time")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("ms")


class FeedbackSink:
    """Served slates and the feedback about them (see the module docstring)."""

    def __init__(self, cache_size: int, histories: UserHistories, feedback_log: FeedbackLog | None = None,
                 shared: SharedDecisions | None = None) -> None:
        self.cache_size = cache_size
        self.histories = histories
        self.feedback_log = feedback_log
        self.shared = shared
        self.events = 0  #: feedback events logged since start
        self._decisions: OrderedDict[str, Decision] = OrderedDict()
        self._decisions_lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}  # (variant, event type) -> events logged
        self._window: list[tuple[float, int, int]] = []  # (time, impressions, clicks) for the CTR window
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ served slates
    def remember(self, decision: Decision) -> None:
        """Keep a served slate for its feedback (and share it with the other workers)."""
        rid = decision.rec.request_id
        with self._decisions_lock:
            self._decisions[rid] = decision
            while len(self._decisions) > self.cache_size:
                self._decisions.popitem(last=False)
        if self.shared is not None:
            self.shared.put(rid, decision.rec.to_dict(), decision.features, decision.base)

    def decision(self, request_id: str | None, variants: Mapping[str, Variant]) -> Decision | None:
        """The slate served under ``request_id``: from this process's memory, else from the other workers'
        (attributed to this process's variant of the same name, else the champion)."""
        if not request_id:
            return None
        with self._decisions_lock:
            d = self._decisions.get(request_id)
        if d is not None or self.shared is None:
            return d
        found = self.shared.get(request_id)
        if found is None:
            return None
        slate, feats, base = found
        items = [RecommendedItem(**it) for it in slate.pop("items")]
        rec = Recommendation(items=items, **slate)
        variant = variants.get(rec.variant) or variants["champion"]
        return Decision(rec, variant, feats, base)

    # ------------------------------------------------------------------ feedback
    def record(self, events: Sequence[Mapping[str, Any]], variants: Mapping[str, Variant]) -> list[dict[str, Any]]:
        """Validate, enrich from the served slate, append durably to the feedback log, and queue for learning;
        returns the logged events. Raises :class:`DataError` naming the event index and field for a bad event
        (nothing is logged then)."""
        now = pd.Timestamp.now(tz="UTC").floor("ms")
        rows: list[dict[str, Any]] = []
        learn: list[tuple[Decision, int, str]] = []
        for n, ev in enumerate(events):
            row, d, pos = self._row(n, ev, now, variants)
            if d is not None and pos is not None:
                learn.append((d, pos, row["event_type"]))
            rows.append({key: value for key, value in row.items() if value is not None})
        if self.feedback_log is not None:
            self.feedback_log.append(rows)
        self._apply(rows, learn)
        return rows

    def _row(self, n: int, ev: Mapping[str, Any], now: pd.Timestamp, variants: Mapping[str, Variant]
             ) -> tuple[dict[str, Any], Decision | None, int | None]:
        """One event's log row, its served slate and the item's position in it."""
        kind = ev.get("event_type")
        if kind not in FEEDBACK_TYPES:
            raise DataError(f"events[{n}].event_type: must be one of {', '.join(FEEDBACK_TYPES)}, got {kind!r}")
        item, rid = ev.get("item_id"), ev.get("request_id")
        d = self.decision(rid, variants)
        if d is None and not ev.get("user_id"):
            raise DataError(f"events[{n}]: request_id {rid!r} is unknown, so user_id is required")
        row: dict[str, Any] = {
            "event_id": ev.get("event_id") or uuid.uuid4().hex,
            "event_type": kind,
            "timestamp": (parse_timestamp(ev["timestamp"], n) if ev.get("timestamp") else now).isoformat(),
            "user_id": ev.get("user_id") or (d.rec.user_id if d else None),
            "item_id": item,
            "session_id": ev.get("session_id"),
            "request_id": rid,
            "price": ev.get("price"),
            "order_value": ev.get("order_value"),
        }
        if d is None:
            return row, None, None
        pos = next((s.position for s in d.rec.items if s.item_id == item), None)
        row.update({"policy_id": d.rec.policy_id, "variant": d.rec.variant, **d.rec.context})
        if pos is None:
            return row, d, None
        row["position"] = pos
        row["propensity"] = d.rec.items[pos].propensity
        if kind == "impression":  # what the model predicted, for the drift job's prediction tests
            for name in ("score", "click_probability"):
                value = getattr(d.rec.items[pos], name)
                if value is not None and math.isfinite(float(value)):
                    row[name] = float(value)
        if row["price"] is None and hasattr(d.variant.bundle, "item_price"):  # a baseline bundle has no prices
            idx = d.variant.bundle.item_index.get(str(item))
            row["price"] = None if idx is None else float(d.variant.bundle.item_price[idx])
        return row, d, pos

    def _apply(self, rows: list[dict[str, Any]], learn: list[tuple[Decision, int, str]]) -> None:
        """What logged feedback changes: the users' histories, the counters, the learners, the arms' counts."""
        for r in rows:  # the user's next request sees what they just did
            if r["event_type"] in HISTORY_EVENT_TYPES and r.get("user_id") and r.get("item_id"):
                ts = pd.Timestamp(r["timestamp"]).value / 1e9
                self.histories.extend(str(r["user_id"]), [HistoryEntry(str(r["item_id"]), r["event_type"], ts)])
        self.events += len(rows)
        with self._lock:
            for r in rows:
                key = (str(r.get("variant") or "unattributed"), str(r["event_type"]))
                self._counts[key] = self._counts.get(key, 0) + 1
        for d, pos, kind in learn:
            if d.variant.online is not None:
                d.variant.online.submit(kind, d.features[pos], float(d.base[pos]))
            if kind == "impression":  # per-variant outcomes, for the canary guardrail
                d.variant.stats.impressions += 1
            elif kind == "click":
                d.variant.stats.clicks += 1
        imps = sum(r["event_type"] == "impression" for r in rows)
        clicks = sum(r["event_type"] == "click" for r in rows)
        if imps or clicks:
            with self._lock:
                self._window.append((time.time(), imps, clicks))

    def counts(self) -> dict[tuple[str, str], int]:
        """Feedback events logged since start, by (variant, event type)."""
        with self._lock:
            return dict(self._counts)

    def click_through_rate(self, window_s: float = 300.0) -> float:
        """Clicks per impression in the last ``window_s`` seconds (NaN without impressions)."""
        cutoff = time.time() - window_s
        with self._lock:
            self._window = [w for w in self._window if w[0] >= cutoff]
            imps = sum(w[1] for w in self._window)
            clicks = sum(w[2] for w in self._window)
        return clicks / imps if imps else float("nan")

    def close(self) -> None:
        if self.feedback_log is not None:
            self.feedback_log.close()
        if self.shared is not None:
            self.shared.close()
