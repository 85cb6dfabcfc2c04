"""The drift job's input and output: reading event logs and side tables, writing summary.json.

The statistics are in :mod:`monitoring.drift_stats`, the decisions in :mod:`monitoring.drift`; nothing here
computes a test.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from recflow.errors import DataError
from recflow.io import atomic_path
from recflow.schema import FILE_NAMES

if TYPE_CHECKING:
    from monitoring.drift import DriftSummary

#: The fields every events log must have.
REQUIRED_FIELDS = ("event_type", "user_id", "item_id")


def _read_json_lines(path: Path) -> pd.DataFrame:
    """A JSON-lines file; a torn final line (a crash mid-append) is skipped, a bad line elsewhere is an error."""
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines) - 1:  # only the last, unterminated line can be torn by a crash
                raise DataError(f"{path}: line {number} is not valid JSON") from None
    return pd.DataFrame(rows)


def _read_one(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".jsonl", ".ndjson"):
            return _read_json_lines(path)
        if path.suffix == ".json":
            return pd.read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from None
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .parquet, .jsonl or .json)")


def _read_feedback_segments(directory: Path) -> pd.DataFrame | None:
    """The serving feedback log in ``directory`` (its own reader, which skips a torn last line), else None.

    Rows keep every logged field (``score`` too), not only the events schema's columns.
    """
    try:
        from serving.feedback_log import iter_feedback, segment_paths
    except ImportError:  # monitoring installed without serving: the generic JSON-lines reader does the same
        return None
    if not segment_paths(directory):
        return None
    return pd.DataFrame(list(iter_feedback(directory)))


def load_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an events log: a dataset directory (events.parquet), a .parquet/.jsonl file, or a directory of them.

    A serving feedback log (``feedback-*.jsonl`` segments) is read with serving's own reader when serving is
    installed; either way a line torn by a crash at the end of a segment is skipped. Raises :class:`DataError`
    naming the file when it is missing, unreadable or lacks a required column.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: events log does not exist")
    if p.is_dir():
        if (p / FILE_NAMES["events"]).is_file():
            files = [p / FILE_NAMES["events"]]
        else:
            files = sorted(f for f in p.iterdir() if f.suffix in (".parquet", ".jsonl", ".ndjson")
                           and f.name not in (FILE_NAMES["items"], FILE_NAMES["users"]) and not f.name.startswith("."))
        if not files:
            raise DataError(f"{p}: no events.parquet and no .parquet/.jsonl event files in this directory")
        feedback = _read_feedback_segments(p)
        if feedback is not None:
            files = [f for f in files if not f.name.startswith("feedback-")]
        frames = [_read_one(f) for f in files] + ([feedback] if feedback is not None else [])
        frames = [f for f in frames if len(f)]
        events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REQUIRED_FIELDS))
    else:
        events = _read_one(p)
    missing = [c for c in REQUIRED_FIELDS if c not in events.columns]
    if missing:
        raise DataError(f"{p}: missing required field(s) {missing} of the events schema (see docs/schema.md)")
    if "timestamp" in events.columns:
        events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True, errors="coerce", format="ISO8601")
        events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return events


def load_side_table(path: str | os.PathLike[str] | None, events_path: str | os.PathLike[str], kind: str
                    ) -> pd.DataFrame | None:
    """The items or users table: ``path`` when given, else ``{kind}.parquet`` beside the events, else None."""
    if path is None:
        base = Path(events_path)
        candidate = (base if base.is_dir() else base.parent) / f"{kind}.parquet"
        if not candidate.is_file():
            return None
        path = candidate
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {kind} table does not exist")
    return _read_one(p)


def last_events(events: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The most recent ``n`` events (all when ``n`` is None)."""
    return events if n is None or len(events) <= n else events.iloc[-n:].reset_index(drop=True)



def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_summary(summary: DriftSummary, path: Path) -> Path:
    """Write summary.json atomically (non-finite numbers become null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(summary.to_dict()), indent=2) + "\n", encoding="utf-8")
    return path
