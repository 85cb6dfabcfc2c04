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
    sections: Mapping[str, Any]
    status_dir: Path | None
    tracking_run_id: str | None = None
    parent_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    parent_metrics: dict[str, float] = field(default_factory=dict)
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
    def config(self) -> StepConfig:
        """The config sections the step declared, validated (``step.config.trainer`` is a ``TrainerConfig``)."""
        if self._config is None:
            self._config = StepConfig(self.name, self.sections)
        return self._config

    def log_metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Keep the finite numeric entries of ``metrics`` (nested dicts flattened with dots) and return them."""
        flat = flatten_numbers(metrics)
        self.metrics.update(flat)
        return flat

    def note(self, **values: Any) -> None:
        """Record JSON-serialisable facts for the run summary (e.g. ``blessed=True``, ``pushed_to=...``)."""
        self.notes.update(values)

    def log_artifact(self, path: Path | str, artifact_path: str = "") -> None:
        """Upload a file or directory as an artifact of the step's MLflow run when the step ends (kept in the
        status record's notes when the run is not tracked)."""
        self.artifacts.append((Path(path), artifact_path))

    def log_curves(self, curves: Mapping[str, list[float]]) -> None:
        """Per-epoch curves (``{"retrieval.loss": [...]}``), logged with one value per epoch and plotted."""
        self.curves.update(curves)

    def log_pipeline_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Metrics that also go on the pipeline (parent) run, e.g. the candidate's evaluation metrics."""
        self.parent_metrics.update(flatten_numbers(metrics))

    def progress(self, message: str) -> None:
        """Print one progress line, prefixed with the step's label."""
        print(f"{self.label}: {message}", flush=True)


#: How a null config value travels in a KFP struct parameter (which cannot hold a null).
NULL = "null"


def encode_nulls(value: Any) -> Any:
    """``None`` -> ``"null"`` at any depth (for KFP struct parameters)."""
    if value is None:
        return NULL
    if isinstance(value, Mapping):
        return {k: encode_nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_nulls(v) for v in value]
    return value


def decode_nulls(value: Any) -> Any:
    """``"null"`` -> ``None`` at any depth (the inverse of :func:`encode_nulls`)."""
    if value == NULL:
        return None
    if isinstance(value, Mapping):
        return {k: decode_nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [decode_nulls(v) for v in value]
    return value


class StepConfig:
    """The config sections one step reads, each validated by its section model; any other section is an error.

    A step receives only the sections it declares (typed KFP parameters, one per section), so a change to a
    section it does not read (say ``serving``) leaves its inputs, and so its KFP cache key, unchanged. Reading an
    undeclared section would silently see defaults; it raises instead.
    """

    def __init__(self, step: str, sections: Mapping[str, Any]) -> None:
        from pydantic import ValidationError

        from recflow.config import RecflowConfig
        from recflow.errors import ConfigError

        self._step = step
        self._values: dict[str, Any] = {}
        for section, values in sections.items():
            if section not in RecflowConfig.model_fields:
                raise ConfigError(f"step {step}: unknown config section {section!r}")
            if isinstance(values, str):  # a section passed as YAML/JSON text (e.g. from the KFP UI)
                values = yaml.safe_load(values) or {}
            try:
                model = RecflowConfig.model_validate({section: decode_nulls(values) or {}})
            except ValidationError as exc:
                raise ConfigError(f"step {step}: config section {section!r} is invalid:\n{exc}") from None
            self._values[section] = getattr(model, section)

    def __getattr__(self, section: str) -> Any:
        if section.startswith("_"):
            raise AttributeError(section)
        if section not in self._values:
            raise AttributeError(f"step {self._step} does not take config section {section!r} (it takes: "
                                 f"{', '.join(self._values) or 'none'}); add it to the component's parameters")
        return self._values[section]

    def dump(self) -> dict[str, Any]:
        """The sections as JSON-ready dicts (what is logged as the step's config)."""
        return {name: value.model_dump(mode="json") for name, value in self._values.items()}


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
        "parent_run_id": run.parent_run_id,
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


@dataclass(frozen=True)
class Tracking:
    """Where a step's MLflow runs go: ``uri`` ('' = not tracked), the orchestrator's run key (KFP's pipeline job
    uuid), the run name the first step gives the parent run, and whether this step opens it."""

    uri: str = ""
    run_key: str = ""
    run_name: str = ""
    opens: bool = False
    data_uri: str = ""


@contextlib.contextmanager
def _tracking(run: StepRun, where: Tracking) -> Iterator[None]:
    """A nested MLflow run for the step under the pipeline's parent run (opened by the first step, joined by the
    others, keyed by the orchestrator's run id), else nothing."""
    if not where.uri:
        yield
        return
    from recflow.tracking import component_run
    from recflow.tracking.orchestrated import join_pipeline_run, log_config_sections, open_pipeline_run

    section = run.config.tracking
    if where.opens:
        data = Path(where.data_uri) if where.data_uri and "://" not in where.data_uri else None
        parent = open_pipeline_run(where.uri, section.experiment, where.run_key, run_name=where.run_name,
                                   data_dir=data, check_timeout_s=section.check_timeout_s)
    else:
        parent = join_pipeline_run(where.uri, section.experiment, where.run_key,
                                   check_timeout_s=section.check_timeout_s)
    run.parent_run_id = parent
    with component_run(where.uri, parent, run.name, check_timeout_s=section.check_timeout_s) as nested:
        run.tracking_run_id = nested.run_id
        sections = {k: v for k, v in run.config.dump().items() if k != "tracking"}
        log_config_sections(where.uri, (parent, nested.run_id), sections)
        yield
        _record(run, where.uri, nested)


def _record(run: StepRun, uri: str, nested: Any) -> None:
    """Log what the step collected: metrics, per-epoch curves (+ plot), artifacts, the pipeline-level metrics."""
    from recflow.tracking import log_metrics
    from recflow.tracking.curves import log_epoch_curves, plot_curves

    if run.metrics:
        nested.log_metrics(run.metrics)
    if run.curves:
        log_epoch_curves(uri, nested.run_id, run.curves)
        with tempfile.TemporaryDirectory(prefix="recflow-plot-") as tmp:
            plot = plot_curves(run.curves, Path(tmp) / f"{run.name}_curves.png", f"{run.name}: per-epoch curves")
            if plot is not None:
                nested.log_artifacts(plot, "plots")
    for path, artifact_path in run.artifacts:
        if path.exists():
            nested.log_artifacts(path, artifact_path or None)
    if run.parent_metrics and run.parent_run_id:
        log_metrics(uri, run.parent_run_id, run.parent_metrics)


@contextlib.contextmanager
def step_run(
    name: str,
    sections: Mapping[str, Any],
    tracking: Tracking | None = None,
    status_dir: str = "",
) -> Iterator[StepRun]:
    """Run one pipeline step: progress lines, wall time, a nested tracking run, a status record.

    ``sections`` are the config sections the step reads (``{"trainer": {...}}``, as the pipeline passes them).
    A :class:`recflow.errors.RecflowError` (a problem the user can fix, such as invalid data) ends the process
    with the error's exit code and its message on one ``error:`` line, without a traceback; any other exception
    is a bug and keeps its traceback. Either way the status record says which step failed and why, and the
    orchestrator runs nothing downstream.
    """
    from recflow.errors import RecflowError

    run = StepRun(name=name, sections=sections, status_dir=Path(status_dir) if status_dir else None)
    run.progress("started")
    write_status(run, STATUS_RUNNING)
    try:
        with _tracking(run, tracking or Tracking()):
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
