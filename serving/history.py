"""A user's recent history at request time: parsing the request's ``history`` and remembering feedback.

A request's ``history`` lists the user's recent events, oldest first: plain item ids (type and time unknown) or
mappings ``{item_id, event_type, timestamp}``. :func:`parse_history` turns either into :class:`HistoryEntry`
values and names the entry and field of a bad one (:class:`recflow.errors.DataError`).

:class:`UserHistories` keeps the events users posted back as feedback (views, clicks, carts, purchases), per
user, bounded in length and number of users, thread-safe, so the next request of that user sees them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from recflow.errors import DataError

#: Event types a history may carry (the user's own choices of an item).
HISTORY_EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class HistoryEntry:
    """One event of a user's history: the item, what the user did, and when (Unix seconds; None: unknown)."""

    item_id: str
    event_type: str | None = None  # None: unknown (a plain item id)
    timestamp: float | None = None


def _seconds(value: Any, where: str) -> float:
    """Unix seconds of a number (taken as seconds), a datetime or an ISO 8601 string (UTC without offset)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise DataError(f"{where}.timestamp: not a finite number of seconds")
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            try:
                value = pd.Timestamp(value).to_pydatetime()
            except (TypeError, ValueError, OverflowError) as exc:
                raise DataError(f"{where}.timestamp: not a date/time ({exc})") from None
    if not isinstance(value, datetime) or value != value:  # NaT compares unequal to itself
        raise DataError(f"{where}.timestamp: not a date/time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def parse_history(history: Iterable[Any] | None, field: str = "history") -> list[HistoryEntry]:
    """``history`` (item ids, mappings or HistoryEntry values, oldest first) as HistoryEntry values.

    Raises DataError naming ``field[i]`` and the bad key for an entry without an item id, an unknown event
    type or an unreadable timestamp.
    """
    out: list[HistoryEntry] = []
    for n, entry in enumerate(history or ()):
        where = f"{field}[{n}]"
        if isinstance(entry, HistoryEntry):
            out.append(entry)
            continue
        if isinstance(entry, str):
            if not entry:
                raise DataError(f"{where}: an empty item id")
            out.append(HistoryEntry(entry))
            continue
        if not isinstance(entry, Mapping):
            raise DataError(f"{where}: must be an item id or an object with item_id, event_type, timestamp; "
                            f"got {type(entry).__name__}")
        unknown = sorted(set(entry) - {"item_id", "event_type", "timestamp"})
        if unknown:
            raise DataError(f"{where}: unknown field(s) {unknown}")
        item = entry.get("item_id")
        if not isinstance(item, str) or not item:
            raise DataError(f"{where}.item_id: required, a non-empty string")
        kind = entry.get("event_type")
        if kind is not None and kind not in HISTORY_EVENT_TYPES:
            raise DataError(f"{where}.event_type: must be one of {', '.join(HISTORY_EVENT_TYPES)}, got {kind!r}")
        ts = entry.get("timestamp")
        out.append(HistoryEntry(item, kind, None if ts is None else _seconds(ts, where)))
    return out


class UserHistories:
    """Per-user recent events posted back as feedback: at most ``max_events`` per user (the newest) and
    ``max_users`` users (the least recently updated are forgotten first). Thread-safe."""

    def __init__(self, max_events: int = 50, max_users: int = 100_000) -> None:
        self.max_events = int(max_events)
        self.max_users = int(max_users)
        self._events: OrderedDict[str, deque[HistoryEntry]] = OrderedDict()
        self._lock = threading.Lock()

    def extend(self, user_id: str, entries: Iterable[HistoryEntry]) -> None:
        entries = list(entries)
        if not entries:
            return
        with self._lock:
            events = self._events.pop(user_id, None)
            if events is None:
                events = deque(maxlen=self.max_events)
            events.extend(entries)
            self._events[user_id] = events
            while len(self._events) > self.max_users:
                self._events.popitem(last=False)

    def get(self, user_id: str) -> list[HistoryEntry]:
        with self._lock:
            events = self._events.get(user_id)
            return list(events) if events is not None else []

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)
