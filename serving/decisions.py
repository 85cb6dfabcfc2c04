"""Served slates shared by the worker processes of one service, so feedback and explanations find them.

With several workers (``recflow serve --workers N``) a click can reach another worker than the one that served
the slate. Each worker keeps its recent slates in memory and also writes them here: one SQLite database (WAL
mode, no fsync -- a slate lost in a crash only loses the enrichment of its feedback, never the feedback) in the
service's run directory. A lookup that misses the worker's own memory reads it from here. The newest
``capacity`` slates are kept.

The same database carries what the canary guardrail needs from every worker (:mod:`serving.canary`): each
worker's per-arm counts for the running canary (:meth:`SharedDecisions.publish_arms`, summed by
:meth:`SharedDecisions.summed_arms`) and the lease that makes exactly one worker the one that decides
(:meth:`SharedDecisions.claim`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from recflow.release import ArmStats

PRUNE_EVERY = 1000
_ARM_FIELDS = ("requests", "errors", "latency_sum_ms", "latency_sumsq_ms", "impressions", "clicks")


def _array(data: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(data["bytes"], dtype=data["dtype"]).reshape(data["shape"])


class SharedDecisions:
    """A request id -> served slate table shared by processes (see the module docstring)."""

    def __init__(self, path: str | Path, capacity: int) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS decisions (request_id TEXT PRIMARY KEY, created REAL, slate TEXT, "
            "features BLOB, base BLOB, shape TEXT)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS arms (worker TEXT, canary TEXT, arm TEXT, "
            + ", ".join(f"{f} REAL" for f in _ARM_FIELDS) + ", updated REAL, PRIMARY KEY (worker, canary, arm))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT, expires REAL)")
        self._puts = 0

    def put(self, request_id: str, slate: dict[str, Any], features: np.ndarray, base: np.ndarray) -> None:
        """Remember a served slate (its ``to_dict()`` plus the variant name) and its policy features."""
        f = np.ascontiguousarray(features, np.float32)
        b = np.ascontiguousarray(base, np.float64)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, time.time(), json.dumps(slate), f.tobytes(), b.tobytes(), json.dumps(f.shape)),
            )
            self._puts += 1
            if self._puts % PRUNE_EVERY == 0:
                self._db.execute(
                    "DELETE FROM decisions WHERE rowid <= (SELECT MAX(rowid) FROM decisions) - ?", (self.capacity,)
                )

    def get(self, request_id: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
        """The slate, features ``[k, dim]`` and base scores ``[k]`` served under ``request_id``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT slate, features, base, shape FROM decisions WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            return None
        slate, features, base, shape = row
        return (
            json.loads(slate),
            _array({"bytes": features, "dtype": np.float32, "shape": json.loads(shape)}),
            np.frombuffer(base, dtype=np.float64),
        )

    # ------------------------------------------------------------------ the canary's numbers and its decider
    def publish_arms(self, worker: str, canary: str, arms: dict[str, ArmStats]) -> None:
        """Record ``worker``'s counts per arm (``champion``, ``canary``) since it started serving ``canary``."""
        rows = [(worker, canary, arm, *(float(getattr(stats, f)) for f in _ARM_FIELDS), time.time())
                for arm, stats in arms.items()]
        marks = ", ".join("?" * (len(_ARM_FIELDS) + 4))
        with self._lock:
            self._db.executemany(f"INSERT OR REPLACE INTO arms VALUES ({marks})", rows)

    def summed_arms(self, canary: str) -> dict[str, ArmStats]:
        """Each arm's counts for ``canary`` summed over every worker that published them."""
        sums = ", ".join(f"SUM({f})" for f in _ARM_FIELDS)
        with self._lock:
            rows = self._db.execute(f"SELECT arm, {sums} FROM arms WHERE canary = ? GROUP BY arm",
                                    (canary,)).fetchall()
        out = {}
        for arm, *values in rows:
            fields: dict[str, Any] = {f: (int(v) if f in ("requests", "errors", "impressions", "clicks") else float(v))
                                      for f, v in zip(_ARM_FIELDS, values, strict=True)}
            out[arm] = ArmStats(**fields)
        return out

    def claim(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` for ``ttl_s`` seconds; False while another holder's
        lease runs (one atomic statement: at most one holder at any time)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires WHERE leases.holder = excluded.holder OR leases.expires < ?",
                (name, holder, now + ttl_s, now),
            )
            row = self._db.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] == holder

    def release(self, name: str, holder: str) -> None:
        """Give the lease ``name`` up, if ``holder`` has it."""
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def close(self) -> None:
        with self._lock:
            self._db.close()
