"""What every pipeline step does around its core call: config, progress, timing, its record, status, errors.

A component body is a few lines: enter :func:`step_run`, call one core-library function, record its key
numbers. This module runs inside the step's own process (on Kubeflow, its own pod), so it only depends on the
core library and the standard library.

**Records, not live tracking.** A heavy step (ExampleGen, Transform, tuner, trainers, Evaluator) collects what
it wants tracked (metrics, curves, artifacts, tags, notes) and :func:`step_run` writes it into the step's
``record`` output artifact (:mod:`recflow.step_record`); it takes no per-run input, so KFP can reuse it from its
cache. The light tracking step after it (``components/track``) calls :func:`publish_record`, which opens or joins
the MLflow pipeline run by the orchestrator's run id and logs the record as the step's nested run. Only the
Pusher, which is never cached (it has side effects), tracks live (:class:`Tracking`).

The status file (``<status dir>/<step>.json``) is how ``recflow pipeline run`` learns each step's wall time, key
numbers and, when a step fails, its error message, without parsing logs. The local runner names the directory in
the environment variable ``RECFLOW_STATUS_DIR`` (the steps are its subprocesses): an environment variable, not a
step input, so it never changes a step's cache key. On Kubeflow it is unset and nothing is written.
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
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recflow.pipeline_config import STEP_ORDER
from recflow.step_record import RecordFile, StepRecord, write_step_record

#: The environment variable naming the local runner's status directory (unset on Kubeflow).
STATUS_DIR_ENV = "RECFLOW_STATUS_DIR"

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
    artifacts: list[RecordFile] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    parent_metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    parent_tags: dict[str, str] = field(default_factory=dict)
    children: list[dict[str, Any]] = field(default_factory=list)
    execution_id: str = field(default_factory=lambda: uuid.uuid4().hex)
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

    def log_artifact(self, path: Path | str, artifact_path: str = "", on_pipeline: bool = False) -> None:
        """A file or directory to log with the step's MLflow run (and the pipeline run when ``on_pipeline``);
        copied into the step's record when the step ends."""
        self.artifacts.append(RecordFile(Path(path), artifact_path, on_pipeline))

    def set_tags(self, tags: Mapping[str, Any], on_pipeline: bool = False) -> None:
        """Tags of the step's run (and of the pipeline run when ``on_pipeline``), e.g. the verdict."""
        self.tags.update({str(k): str(v) for k, v in tags.items()})
        if on_pipeline:
            self.parent_tags.update({str(k): str(v) for k, v in tags.items()})

    def log_children(self, children: list[dict[str, Any]]) -> None:
        """Runs to nest under the step's run: ``{"name", "params", "metrics", "seconds"}`` (the tuner's trials)."""
        self.children.extend(children)

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


def status_dir_from_env(status_dir: str = "") -> Path | None:
    """``status_dir`` if given, else the local runner's (``$RECFLOW_STATUS_DIR``), else None (Kubeflow)."""
    where = status_dir or os.environ.get(STATUS_DIR_ENV, "")
    return Path(where) if where else None


def _write_json(directory: Path, name: str, document: Mapping[str, Any]) -> None:
    # Same temp-file-and-rename as recflow.io.atomic_path, without importing pandas/pyarrow into every step
    # just to write a small JSON file (it would add seconds to each step's measured time).
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=2, default=str)
        os.replace(tmp, directory / f"{name}.json")
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_status(run: StepRun, status: str, error: str | None = None) -> None:
    """Write ``<status_dir>/<step>.json`` atomically (no-op without a status_dir)."""
    if run.status_dir is None:
        return
    _write_json(run.status_dir, run.name, {
        "step": run.name,
        "index": run.index,
        "status": status,
        "seconds": round(time.monotonic() - run.started, 6),
        "metrics": run.metrics,
        "notes": run.notes,
        "error": error,
        "tracking_run_id": run.tracking_run_id,
        "parent_run_id": run.parent_run_id,
        "execution_id": run.execution_id,
        "cached": False,
    })


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


def pipeline_run_id(where: Tracking, tracking_section: Any) -> str:
    """The MLflow parent run of this pipeline run: opened (found or created, with the data fingerprint) when
    ``where.opens``, else joined."""
    from recflow.tracking.orchestrated import join_pipeline_run, open_pipeline_run

    if where.opens:
        data = Path(where.data_uri) if where.data_uri and "://" not in where.data_uri else None
        return open_pipeline_run(where.uri, tracking_section.experiment, where.run_key, run_name=where.run_name,
                                 data_dir=data, check_timeout_s=tracking_section.check_timeout_s)
    return join_pipeline_run(where.uri, tracking_section.experiment, where.run_key,
                             check_timeout_s=tracking_section.check_timeout_s)


@contextlib.contextmanager
def _tracking(run: StepRun, where: Tracking) -> Iterator[None]:
    """A live nested MLflow run for the step under the pipeline's parent run (the Pusher's way: it is never
    cached), else nothing."""
    if not where.uri:
        yield
        return
    from recflow.tracking import component_run
    from recflow.tracking.orchestrated import log_config_sections
    from recflow.tracking.records import log_step_outputs

    section = run.config.tracking
    parent = pipeline_run_id(where, section)
    run.parent_run_id = parent
    with component_run(where.uri, parent, run.name, check_timeout_s=section.check_timeout_s) as nested:
        run.tracking_run_id = nested.run_id
        sections = {k: v for k, v in run.config.dump().items() if k != "tracking"}
        log_config_sections(where.uri, (parent, nested.run_id), sections)
        yield
        log_step_outputs(where.uri, (parent, nested.run_id), run.name, metrics=run.metrics, curves=run.curves,
                         artifacts=[(a.path, a.artifact_path, a.on_pipeline) for a in run.artifacts],
                         tags=run.tags, parent_metrics=run.parent_metrics, parent_tags=run.parent_tags)


def _write_record(run: StepRun, out_dir: str) -> None:
    """The step's record (:mod:`recflow.step_record`) in its ``record`` output artifact."""
    from datetime import UTC, datetime

    record = StepRecord(
        step=run.name, execution_id=run.execution_id, finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - run.started, 6),
        config={k: v for k, v in run.config.dump().items() if k != "tracking"},
        metrics=run.metrics, curves=run.curves, tags=run.tags, parent_metrics=run.parent_metrics,
        parent_tags=run.parent_tags, children=run.children, notes=run.notes)
    write_step_record(out_dir, record, run.artifacts)


@contextlib.contextmanager
def step_run(
    name: str,
    sections: Mapping[str, Any],
    tracking: Tracking | None = None,
    status_dir: str = "",
    record: str = "",
) -> Iterator[StepRun]:
    """Run one pipeline step: progress lines, wall time, its record, a status record (and, for the Pusher, a
    live nested tracking run).

    ``sections`` are the config sections the step reads (``{"trainer": {...}}``, as the pipeline passes them).
    ``record`` is the path of the step's ``record`` output artifact: what the step collected is written there
    when it succeeds. ``status_dir`` defaults to ``$RECFLOW_STATUS_DIR``.
    A :class:`recflow.errors.RecflowError` (a problem the user can fix, such as invalid data) ends the process
    with the error's exit code and its message on one ``error:`` line, without a traceback; any other exception
    is a bug and keeps its traceback. Either way the status record says which step failed and why, and the
    orchestrator runs nothing downstream.
    """
    from recflow.errors import RecflowError

    run = StepRun(name=name, sections=sections, status_dir=status_dir_from_env(status_dir))
    run.progress("started")
    write_status(run, STATUS_RUNNING)
    try:
        with _tracking(run, tracking or Tracking()):
            yield run
        if record:
            _write_record(run, record)
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


def publish_record(record_dir: str, tracking_config: Any, where: Tracking, status_dir: str = "") -> str:
    """What the light tracking step after a heavy step does: log the heavy step's record as its nested MLflow
    run (when ``where.uri`` is set; the first step's tracking step opens the pipeline run) and complete the
    step's local status record (its run ids; a whole record from the step record when KFP served the step from
    its cache, so it did not run and wrote no status). Returns the step run's id ('' when not tracked).

    A :class:`recflow.errors.RecflowError` (an unreachable tracking server, a missing record) ends the process
    with its exit code and one ``error:`` line, as in :func:`step_run`.
    """
    from recflow.errors import RecflowError

    try:
        return _publish(record_dir, tracking_config, where, status_dir)
    except RecflowError as exc:
        print(f"[track] error: {exc}", flush=True)
        raise SystemExit(exc.exit_code) from None


def _publish(record_dir: str, tracking_config: Any, where: Tracking, status_dir: str) -> str:
    from recflow.step_record import read_step_record

    step = read_step_record(record_dir)
    status_path = status_dir_from_env(status_dir)
    status = read_status(status_path).get(step.step) if status_path is not None else None
    # Served from the cache: no status of this execution in this run's status directory (local runs), or the
    # execution already logged under another pipeline run (tracked runs).
    cached = status_path is not None and (status is None or status.get("execution_id") != step.execution_id)
    run = StepRun(name=step.step, sections={"tracking": tracking_config}, status_dir=status_path)
    run.execution_id, run.metrics, run.notes = step.execution_id, dict(step.metrics), dict(step.notes)
    if where.uri:
        from recflow.tracking.records import log_step_record

        section = run.config.tracking
        run.parent_run_id = pipeline_run_id(where, section)
        run.tracking_run_id, _, earlier = log_step_record(where.uri, run.parent_run_id, record_dir,
                                                          check_timeout_s=section.check_timeout_s)
        cached = cached or earlier is not None
    if run.status_dir is not None:
        document = dict(status) if status and not cached else {
            "step": step.step, "index": run.index, "status": STATUS_SUCCEEDED, "seconds": step.seconds,
            "metrics": step.metrics, "notes": step.notes, "error": None, "execution_id": step.execution_id}
        document.update(tracking_run_id=run.tracking_run_id, parent_run_id=run.parent_run_id, cached=cached)
        _write_json(run.status_dir, step.step, document)
    if cached:
        run.progress(f"reused from the KFP cache (an earlier execution, {step.finished_at}, {step.seconds:.1f}s)")
    return run.tracking_run_id or ""
