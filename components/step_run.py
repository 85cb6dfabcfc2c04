"""What every pipeline step does around its core call: config, progress, timing, tracking, status, errors.

A component body is a few lines: enter :func:`step_run`, call one core-library function, record its key
numbers. This module runs inside the step's own process (on Kubeflow, its own pod), so it only depends on the
core library and the standard library.

The status file (``<status_dir>/<step>.json``, written only when the pipeline passes a ``status_dir``, which the
local runner does) is how ``recflow pipeline run`` learns each step's wall time, key numbers and, when a step
fails, its error message, without parsing logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recflow.pipeline_config import STEP_ORDER

STATUS_RUNNING = "running"
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"


@dataclass
class StepRun:
    """The state of one running step, handed to the component body by :func:`step_run`."""

    name: str
    config_yaml: str
    status_dir: Path | None
    tracking_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _config: Any = None

    @property
    def index(self) -> int:
        """1-based position of the step in the DAG."""
        return STEP_ORDER.index(self.name) + 1 if self.name in STEP_ORDER else 0

    @property
    def label(self) -> str:
        """``[i/6] name``, the prefix of the step's progress lines."""
        if self.index == 0:  # an optional step outside the six (e.g. the tuner)
            return f"[+] {self.name}"
        return f"[{self.index}/{len(STEP_ORDER)}] {self.name}"

    @property
    def config(self) -> Any:
        """The whole effective recflow config (a ``RecflowConfig``), parsed from the step's ``config_yaml``."""
        if self._config is None:
            self._config = parse_config(self.config_yaml)
        return self._config

    def log_metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Keep the finite numeric entries of ``metrics`` (nested dicts flattened with dots) and return them."""
        flat = flatten_numbers(metrics)
        self.metrics.update(flat)
        return flat

    def note(self, **values: Any) -> None:
        """Record JSON-serialisable facts for the run summary (e.g. ``blessed=True``, ``pushed_to=...``)."""
        self.notes.update(values)

    def progress(self, message: str) -> None:
        """Print one progress line, prefixed with the step's label."""
        print(f"{self.label}: {message}", flush=True)


def parse_config(config_yaml: str) -> Any:
    """Validate the YAML text of a whole recflow config into a ``RecflowConfig``."""
    from recflow.config import RecflowConfig

    return RecflowConfig.model_validate(yaml.safe_load(config_yaml) or {})


def flatten_numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}, "c": "x"}`` -> ``{"a.b": 1.0}``: finite numbers only (bools count as 0/1)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, prefix=f"{name}."))
        elif isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


def write_status(run: StepRun, status: str, error: str | None = None) -> None:
    """Write ``<status_dir>/<step>.json`` atomically (no-op without a status_dir)."""
    if run.status_dir is None:
        return
    record = {
        "step": run.name,
        "index": run.index,
        "status": status,
        "seconds": round(time.monotonic() - run.started, 6),
        "metrics": run.metrics,
        "notes": run.notes,
        "error": error,
        "tracking_run_id": run.tracking_run_id,
    }
    # Same temp-file-and-rename as recflow.io.atomic_path, without importing pandas/pyarrow into every step
    # just to write a small JSON file (it would add seconds to each step's measured time).
    run.status_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{run.name}.", suffix=".tmp", dir=run.status_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2, default=str)
        os.replace(tmp, run.status_dir / f"{run.name}.json")
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_status(status_dir: Path) -> dict[str, dict[str, Any]]:
    """All status records in ``status_dir``, by step name."""
    records: dict[str, dict[str, Any]] = {}
    if status_dir.is_dir():
        for path in sorted(status_dir.glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            records[record["step"]] = record
    return records


@contextlib.contextmanager
def _tracking(run: StepRun, tracking_uri: str, parent_run_id: str) -> Iterator[None]:
    """A nested MLflow run for the step when the pipeline has a tracking run, else nothing."""
    if not tracking_uri or not parent_run_id:
        yield
        return
    from recflow import tracking

    with tracking.component_run(tracking_uri, parent_run_id, run.name) as nested:
        run.tracking_run_id = nested.run_id
        yield
        if run.metrics:
            nested.log_metrics(run.metrics)


@contextlib.contextmanager
def step_run(
    name: str,
    config_yaml: str,
    tracking_uri: str = "",
    parent_run_id: str = "",
    status_dir: str = "",
) -> Iterator[StepRun]:
    """Run one pipeline step: progress lines, wall time, a nested tracking run, a status record.

    A :class:`recflow.errors.RecflowError` (a problem the user can fix, such as invalid data) ends the process
    with the error's exit code and its message on one ``error:`` line, without a traceback; any other exception
    is a bug and keeps its traceback. Either way the status record says which step failed and why, and the
    orchestrator runs nothing downstream.
    """
    from recflow.errors import RecflowError

    run = StepRun(name=name, config_yaml=config_yaml, status_dir=Path(status_dir) if status_dir else None)
    run.progress("started")
    write_status(run, STATUS_RUNNING)
    try:
        with _tracking(run, tracking_uri, parent_run_id):
            yield run
    except RecflowError as exc:
        write_status(run, STATUS_FAILED, error=str(exc))
        print(f"{run.label}: error: {exc}", file=sys.stdout, flush=True)
        raise SystemExit(exc.exit_code) from None
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"
        write_status(run, STATUS_FAILED, error=message)
        print(f"{run.label}: failed (a bug in recflow, traceback follows): {message}", flush=True)
        traceback.print_exc(file=sys.stdout)
        raise
    seconds = time.monotonic() - run.started
    write_status(run, STATUS_SUCCEEDED)
    run.progress(f"done in {seconds:.1f}s")
