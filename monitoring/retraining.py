"""One retraining run, started by the watcher: cut a dataset from recent feedback, run the pipeline, record it.

``python -m monitoring.retraining --state-dir S -- CMD...`` is the process the watcher starts. It holds the
single-flight lock (``retraining.lock`` with its pid) while ``CMD`` (``recflow pipeline run`` or ``recflow
pipeline submit``) runs, then writes ``last_run.json`` and the ``recflow_pipeline_*`` metrics and removes the
lock. A lock whose pid is gone is stale (the process was killed) and the watcher clears it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from recflow.errors import DataError
from recflow.io import atomic_path, write_dataset

LOCK_NAME = "retraining.lock"
LAST_RUN = "last_run.json"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (zombies of our own children count as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child that nobody waited for yet is a zombie: treat it as gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_lock(state_dir: Path) -> dict[str, object] | None:
    """The lock's content ({pid, started, reason}) or None when there is no lock."""
    try:
        return json.loads((state_dir / LOCK_NAME).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": -1, "started": 0.0, "reason": "unreadable lock"}


def write_lock(state_dir: Path, pid: int, reason: str) -> None:
    """Write the lock atomically."""
    with atomic_path(state_dir / LOCK_NAME) as tmp:
        tmp.write_text(json.dumps({"pid": pid, "started": time.time(), "reason": reason}), encoding="utf-8")


def _history_and_feedback(feedback_path: str | os.PathLike[str] | None,
                          history: str | os.PathLike[str] | None, *, require_feedback: bool = False) -> pd.DataFrame:
    """The event history followed by the feedback log, oldest first; history events from the feedback log's first
    timestamp on are dropped (the feedback log holds them once)."""
    from monitoring.drift import load_events

    if feedback_path is None and history is None:
        raise DataError("no events: give the event history, the feedback log, or both")
    recent = load_events(feedback_path) if feedback_path is not None else None
    if recent is not None and recent.empty and (history is None or require_feedback):
        raise DataError(f"{feedback_path}: no feedback events to retrain on")
    frames = [recent] if recent is not None else []
    if history is not None:
        past = load_events(history)
        if recent is not None and len(recent) and "timestamp" in past.columns and "timestamp" in recent.columns:
            past = past[past["timestamp"] < recent["timestamp"].min()]
        frames.insert(0, past)
    events = pd.concat(frames, ignore_index=True)
    if "timestamp" in events.columns:
        events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return events


def _side_tables(events_paths: list[str | os.PathLike[str]], items_path: str | os.PathLike[str] | None,
                 users_path: str | os.PathLike[str] | None) -> dict[str, pd.DataFrame]:
    from monitoring.drift import load_side_table

    tables: dict[str, pd.DataFrame] = {}
    for kind, path in (("items", items_path), ("users", users_path)):
        for source in events_paths:
            table = load_side_table(path, source, kind)
            if table is not None:
                tables[kind] = table
                break
    if "items" not in tables:
        raise DataError(f"{', '.join(map(str, events_paths))}: no items.parquet beside the events; pass the catalog "
                        "(--items)")
    return tables


def _write_atomically(out_dir: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Write the dataset into a sibling temp directory, then rename it to ``out_dir`` (never half-written)."""
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir}: already exists and is not empty (choose a new --out)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_dataset(tmp, **tables)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def recent_dataset(feedback_path: str | os.PathLike[str], out_dir: Path, n_events: int,
                   items_path: str | os.PathLike[str] | None = None,
                   users_path: str | os.PathLike[str] | None = None,
                   history: str | os.PathLike[str] | None = None) -> Path:
    """Write the last ``n_events`` events (with the catalog and users) as a dataset directory.

    The events are the ``history`` log (the champion's training data, when given) followed by the feedback
    log, so a retraining sees the users' past as well as the drifted present: a model trained on the few
    thousand events logged since the drift alone knows too little to be blessed, and the feedback holds only
    what the champion chose to show. The pipeline's time split then evaluates on the most recent traffic.
    """
    from monitoring.drift_io import last_events

    events = last_events(_history_and_feedback(feedback_path, history, require_feedback=True), n_events)
    known = [c for c in events.columns if not c.startswith("_")]
    sources = [feedback_path, *([history] if history is not None else [])]
    return _write_atomically(out_dir, {"events": events[known], **_side_tables(sources, items_path, users_path)})


@dataclass(frozen=True)
class WindowSummary:
    """What ``recflow data window`` wrote."""

    out_dir: Path
    events: int
    from_history: int
    from_feedback: int
    first: str
    last: str

    def format(self) -> str:
        return (f"wrote {self.events:,} events ({self.from_history:,} from the event history, {self.from_feedback:,} "
                f"from the feedback log), {self.first} .. {self.last}, with the catalog and users, to "
                f"{self.out_dir}")


def _utc(value: str | datetime | None, name: str) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"--{name} {value!r}: not a date/time (e.g. 2026-12-01 or 2026-12-01T06:00:00Z)") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def window_dataset(out_dir: Path, *, history: str | os.PathLike[str] | None = None,
                   feedback: str | os.PathLike[str] | None = None, since: str | datetime | None = None,
                   until: str | datetime | None = None, items_path: str | os.PathLike[str] | None = None,
                   users_path: str | os.PathLike[str] | None = None) -> WindowSummary:
    """A training dataset of the events with ``since <= timestamp < until`` (UTC; naive times are UTC), from the
    event ``history`` (a dataset directory or events file) followed by the serving ``feedback`` log, with the
    catalog and users (given, else beside the feedback log, else beside the history). Written atomically.

    Raises DataError when the window is empty (naming the range the data covers) or inverted.
    """
    start, end = _utc(since, "since"), _utc(until, "until")
    if start is not None and end is not None and start >= end:
        raise DataError(f"--since {start} is not before --until {end}")
    events = _history_and_feedback(feedback, history)
    n_feedback_total = 0
    if feedback is not None:
        from monitoring.drift import load_events

        fb = load_events(feedback)
        n_feedback_total = len(fb)
        first_feedback = fb["timestamp"].min() if len(fb) else None
    ts = events["timestamp"]
    keep = ts.notna()
    if start is not None:
        keep &= ts >= start
    if end is not None:
        keep &= ts < end
    window = events[keep].reset_index(drop=True)
    if window.empty:
        span = f"{ts.min()} .. {ts.max()}" if ts.notna().any() else "no timestamps"
        raise DataError(f"no events between {start or 'the beginning'} and {end or 'the end'} (the data covers "
                        f"{span})")
    from_feedback = int((window["timestamp"] >= first_feedback).sum()) if n_feedback_total and \
        first_feedback is not None else 0
    known = [c for c in window.columns if not c.startswith("_")]
    sources = [s for s in (feedback, history) if s is not None]
    out = _write_atomically(Path(out_dir), {"events": window[known], **_side_tables(sources, items_path, users_path)})
    return WindowSummary(out, len(window), len(window) - from_feedback, from_feedback,
                         str(window["timestamp"].iloc[0]), str(window["timestamp"].iloc[-1]))


def run_and_record(state_dir: Path, command: list[str], pushgateway: str | None = None) -> int:
    """Run ``command`` holding the lock; record its outcome in last_run.json and the pipeline metrics."""
    from monitoring.watcher import export_pipeline_metrics

    state_dir.mkdir(parents=True, exist_ok=True)
    write_lock(state_dir, os.getpid(), "retraining: " + " ".join(command))
    started = time.time()
    log_path = state_dir / "retraining.log"
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n")
            log.flush()
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        record = {"command": command, "exit_code": code, "started": started, "finished": time.time(),
                  "status": "succeeded" if code == 0 else "failed", "log": str(log_path)}
        with atomic_path(state_dir / LAST_RUN) as tmp:
            tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        export_pipeline_metrics(state_dir, record, pushgateway)
        return code
    finally:
        lock = read_lock(state_dir)
        if lock is not None and lock.get("pid") == os.getpid():
            (state_dir / LOCK_NAME).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m monitoring.retraining --state-dir S [--pushgateway URL] -- CMD...``"""
    parser = argparse.ArgumentParser(prog="monitoring.retraining")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--pushgateway", default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")
    return run_and_record(args.state_dir, command, args.pushgateway)


if __name__ == "__main__":
    sys.exit(main())
