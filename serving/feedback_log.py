"""The feedback log: an append-only, rotated set of JSON-lines segments, durable on acknowledge.

Every accepted ``POST /v1/feedback`` is appended here *before* the service answers: the writer writes the
events, flushes and ``fsync``\\ s the segment, so an acknowledged event survives a SIGKILL or a power cut (the
test kills the server mid-load and counts). Concurrent appends are group-committed: whoever holds the lock
writes everything queued so far with one ``fsync``, so many small requests share one disk sync.

Segments are named ``feedback-<start ms>-<seq>.jsonl`` (``feedback-<start ms>-<seq>-<writer>.jsonl`` when
several worker processes log into one directory: each writes its own segments, so each worker's events stay in
the order it acknowledged them, and no two processes ever append to one file) and rotated by size and age; a
segment is never rewritten. :func:`read_feedback` returns the events in the recflow events schema (monitoring and
retraining read it like any other event log); a line torn by a crash at the very end of a segment is skipped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from recflow import io, schema
from recflow.errors import DataError

SEGMENT_PREFIX = "feedback-"
SEGMENT_SUFFIX = ".jsonl"
EVENT_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in schema.EVENT_FIELDS)


def _segment_name(seq: int, writer: str | None = None) -> str:
    tag = f"-{writer}" if writer else ""
    return f"{SEGMENT_PREFIX}{int(time.time() * 1000):013d}-{seq:06d}{tag}{SEGMENT_SUFFIX}"


def segment_paths(log_dir: str | os.PathLike[str]) -> list[Path]:
    """The log's segments, oldest first."""
    root = Path(log_dir)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.name.startswith(SEGMENT_PREFIX) and p.name.endswith(SEGMENT_SUFFIX)
    )


class FeedbackLog:
    """Appends events (dicts with event-schema fields) durably; see the module docstring."""

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        segment_bytes: int = 64 << 20,
        segment_seconds: float = 3600.0,
        writer: str | None = None,
    ) -> None:
        if writer is not None and not writer.replace("_", "").isalnum():
            raise DataError(f"feedback log writer name {writer!r}: letters, digits and _ only")
        self.writer = writer
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[bytes] = []
        self._enqueued = 0  # batches queued so far
        self._durable = 0  # batches fsynced so far
        self._seq = len(segment_paths(self.log_dir))
        self._fh: Any = None
        self._opened_at = 0.0
        self._size = 0
        self.appended_events = 0
        self.last_append_unix = 0.0
        self._closed = False

    # ------------------------------------------------------------------ segments
    def _open_segment(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._seq += 1
        path = self.log_dir / _segment_name(self._seq, self.writer)
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open across appends
        self._opened_at = time.monotonic()
        self._size = 0
        # The new directory entry must be durable too, or a crash could lose the whole segment.
        dir_fd = os.open(self.log_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _needs_rotation(self) -> bool:
        return (
            self._fh is None
            or self._size >= self.segment_bytes
            or time.monotonic() - self._opened_at >= self.segment_seconds
        )

    # ------------------------------------------------------------------ appending
    def append(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Append ``events`` and return once they are on disk (fsynced). Returns the number appended."""
        if not events:
            return 0
        payload = b"".join(json.dumps(e, separators=(",", ":"), default=str).encode() + b"\n" for e in events)
        with self._cond:
            if self._closed:
                raise DataError(f"{self.log_dir}: the feedback log is closed")
            self._pending.append(payload)
            self._enqueued += 1
            ticket = self._enqueued
        # Group commit: the first writer to get the lock flushes every batch queued so far.
        with self._lock:
            with self._cond:
                if self._durable >= ticket:
                    return len(events)
                batch, self._pending = self._pending, []
                upto = self._enqueued
            if self._needs_rotation():
                self._open_segment()
            data = b"".join(batch)
            self._fh.write(data)
            os.fsync(self._fh.fileno())
            self._size += len(data)
            with self._cond:
                self._durable = upto
                self._cond.notify_all()
        self.appended_events += len(events)
        self.last_append_unix = time.time()
        return len(events)

    def close(self) -> None:
        """Close the current segment (appends after this raise)."""
        with self._lock:
            with self._cond:
                self._closed = True
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def iter_feedback(log_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield every logged event as a dict, oldest segment first; skip a torn last line of a segment."""
    for path in segment_paths(log_dir):
        with open(path, "rb") as fh:
            lines = fh.read().split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError:
                if number < len(lines) - 1:  # only the final (unterminated) line can be torn by a crash
                    raise DataError(f"{path}: line {number} is not valid JSON") from None


def read_feedback(log_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All logged events as a DataFrame with the events schema's columns and types (empty if no log)."""
    rows = list(iter_feedback(log_dir))
    frame = pd.DataFrame(rows, columns=None if rows else list(EVENT_FIELD_NAMES))
    for name in EVENT_FIELD_NAMES:
        if name not in frame.columns:
            frame[name] = None
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601").dt.floor("ms")
    table: pa.Table = io.to_arrow(frame[list(EVENT_FIELD_NAMES)], "events")
    return table.to_pandas()


def write_feedback_parquet(log_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Export the log as an events Parquet file (atomic), e.g. for `recflow data validate` or retraining."""
    rows = list(iter_feedback(log_dir))
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(EVENT_FIELD_NAMES))
    for name in EVENT_FIELD_NAMES:
        if name not in frame.columns:
            frame[name] = None
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601").dt.floor("ms")
    return io.write_table(frame[list(EVENT_FIELD_NAMES)], out, "events")
