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
    from monitoring.drift_io import last_events, load_events, load_side_table

    recent = load_events(feedback_path)
    if recent.empty:
        raise DataError(f"{feedback_path}: no feedback events to retrain on")
    frames = [recent]
    if history is not None:
        past = load_events(history)
        if "timestamp" in past.columns and "timestamp" in recent.columns and len(past):
            past = past[past["timestamp"] < recent["timestamp"].min()]  # what the feedback log already holds once
        frames.insert(0, past)
    events = last_events(pd.concat(frames, ignore_index=True), n_events)
    known = [c for c in events.columns if not c.startswith("_")]
    tables: dict[str, pd.DataFrame] = {"events": events[known]}
    for kind, path in (("items", items_path), ("users", users_path)):
        table = load_side_table(path, feedback_path, kind)
        if table is None and history is not None:
            table = load_side_table(None, history, kind)
        if table is not None:
            tables[kind] = table
    if "items" not in tables:
        raise DataError(f"{feedback_path}: no items.parquet beside the feedback log; pass the catalog (--items)")
    write_dataset(out_dir, **tables)
    return out_dir


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
