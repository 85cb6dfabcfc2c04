"""Running the training DAG on the KFP local runner (each step in its own process, on this machine).

``run_local`` opens the MLflow parent run first (so an unreachable tracking server fails in seconds, before any
work), runs the very same pipeline that is compiled for Kubeflow through ``kfp.local`` with the
SubprocessRunner, shows one progress line per step start/end (the full KFP log goes to ``pipeline.log`` in the
run directory), and returns a :class:`LocalRunResult` whose ``format()`` is the end-of-run summary. The steps
write their status records into ``<run dir>/status`` (named to them in ``$RECFLOW_STATUS_DIR``, not as a step
input, so it never changes a cache key). KFP's local caching is off unless asked for (``cache=True``, ``recflow
pipeline run --cache``): then a step whose inputs match an earlier local run's is reused from
``<run root>/.kfp-cache``, and its track task still logs it (tagged ``recflow.cached``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from components.step_run import STATUS_DIR_ENV, STATUS_FAILED, STATUS_SUCCEEDED, STEP_ORDER, read_status
from recflow.config import RecflowConfig
from recflow.errors import ConfigError, DataError, RecflowError
from recflow.model_store import resolve_store_root

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PROGRESS = re.compile(r"^\s*\[\d+/\d+\] ")
_FAILED_TASK = re.compile(r"Inner task failed: '([^']+)'")


class PipelineStepFailed(RecflowError):
    """A step of the pipeline failed; nothing downstream of it ran."""

    exit_code = 1


@dataclass
class StepReport:
    """What one step did in a local run."""

    name: str
    status: str  # succeeded | failed | skipped (pusher of an unblessed run) | not run
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class LocalRunResult:
    """The outcome of one local pipeline run (``format()`` is the summary printed at the end)."""

    run_dir: Path
    log_path: Path
    steps: list[StepReport]
    total_seconds: float
    tracking_uri: str = ""
    parent_run_id: str = ""
    model_store: str = ""
    #: What serving does with the pushed bundle's policy, and why (:func:`recflow.serving_config.policy_layer_summary`).
    serving_note: str = ""

    def step(self, name: str) -> StepReport:
        """The report of step ``name``."""
        return next(s for s in self.steps if s.name == name)

    @property
    def succeeded(self) -> bool:
        """Whether no step failed."""
        return all(s.status != STATUS_FAILED for s in self.steps)

    @property
    def blessed(self) -> bool | None:
        """The evaluator's verdict (None when the evaluator did not finish)."""
        value = self.step("evaluator").notes.get("blessed")
        return None if value is None else bool(value)

    @property
    def pushed_to(self) -> str | None:
        """Where the pusher put the bundle, or None when nothing was pushed."""
        pusher = self.step("pusher")
        return pusher.notes.get("pushed_to") or None if pusher.status == STATUS_SUCCEEDED else None

    def why_not_pushed(self) -> str:
        """Why nothing was pushed ('' when something was)."""
        if self.pushed_to:
            return ""
        failed = [s for s in self.steps if s.status == STATUS_FAILED]
        if failed:
            return f"step {failed[0].name} failed: {failed[0].error}"
        if self.blessed is False:
            reasons = self.step("evaluator").notes.get("reasons") or ["no reason given"]
            return "the candidate was not blessed: " + "; ".join(str(r) for r in reasons)
        return str(self.step("pusher").notes.get("reason") or "the pusher did not run")

    def format(self) -> str:
        """The end-of-run summary: per-step times, key metrics, blessing, pushed bundle, MLflow UI command."""
        lines = [f"pipeline run {self.run_dir.name}: {'completed' if self.succeeded else 'FAILED'} "
                 f"in {self.total_seconds:.1f}s", "", "steps:"]
        for s in self.steps:
            took = f"{s.seconds:8.1f}s" if s.seconds is not None else " " * 9
            status = "cached" if s.status == STATUS_SUCCEEDED and s.notes.get("cached") else s.status
            lines.append(f"  {s.name:<15} {status:<10} {took}" + (f"  {s.error}" if s.error else ""))
        evaluation = self.step("evaluator")
        if evaluation.metrics:
            lines += ["", "key metrics (candidate vs baselines):", *_metrics_table(evaluation.metrics)]
        verdict = {True: "BLESSED", False: "NOT blessed", None: "no verdict"}[self.blessed]
        lines += ["", f"evaluation: {verdict}"]
        checks = evaluation.notes.get("checks") or []
        if checks:
            lines += _checks_table(checks)
        else:
            lines += [f"  - {r}" for r in evaluation.notes.get("reasons", [])]
        overrides = evaluation.notes.get("overrides") or []
        if overrides:
            lines.append("  gate settings changed from the defaults (recorded in MLflow as recflow.gate_overrides):")
            lines += [f"    ! {o}" for o in overrides]
        if evaluation.notes.get("report"):
            lines.append(f"  report: {evaluation.notes['report']}")
        lines.append("")
        if self.pushed_to:
            pusher = self.step("pusher").notes
            fallback = evaluation.notes.get("fallback_baseline") or {}
            if pusher.get("kind") == "baseline":
                lines.append(f"pushed the run's BEST BASELINE, {fallback.get('label', '?')} "
                             f"({fallback.get('metric', '')} {fallback.get('value', float('nan')):.4f} vs the "
                             f"candidate's {fallback.get('candidate_value', float('nan')):.4f}), as the champion: "
                             f"{self.pushed_to}")
                lines.append("  (the candidate was not blessed and the store had no champion; a blessed model "
                             "replaces it; release.baseline_fallback=never turns this off)")
            elif pusher.get("alias") == "canary":
                lines.append(f"pushed model bundle: {self.pushed_to} as the canary (the champion keeps serving the "
                             "other users until the online guardrail promotes or rolls it back)")
            else:
                lines.append(f"pushed model bundle: {self.pushed_to}")
            if pusher.get("canary_disabled"):
                lines.append("  ! release.canary.enabled = false (default true): pushed straight to champion")
            if self.serving_note:
                lines.append(self.serving_note)
        else:
            lines.append(f"nothing pushed: {self.why_not_pushed()}")
        if self.tracking_uri:
            lines += ["", f"MLflow run {self.parent_run_id}; open the UI with:",
                      f"  mlflow ui --backend-store-uri {self.tracking_uri}"]
        lines.append(f"full log: {self.log_path}")
        return "\n".join(lines)


def _checks_table(checks: list[dict[str, Any]]) -> list[str]:
    """Every blessing check as a row (status, check, value, threshold), then each failed check's words."""
    rows = [f"  {'status':<7}{'check':<42}{'value':>34}  threshold"]
    for c in checks:
        status = {"pass": "PASS", "fail": "FAIL", "off": "off"}.get(str(c.get("status")), str(c.get("status")))
        rows.append(f"  {status:<7}{str(c.get('name', ''))[:41]:<42}{str(c.get('value', '-'))[:34]:>34}  "
                    f"{c.get('threshold', '-')}")
    failed = [c for c in checks if c.get("status") == "fail"]
    if failed:
        rows.append("  failed:")
        rows += [f"  - {c.get('detail', '')}" for c in failed]
    return rows


def _metrics_table(flat: dict[str, float]) -> list[str]:
    """Ranking metrics as rows of metric x model (``model.metric`` keys), then the policy's off-policy estimates
    (``ope.*``) and any other flat values on their own lines."""
    grouped: dict[str, dict[str, float]] = {}
    other: dict[str, float] = {}
    for key, value in flat.items():
        model, _, metric = key.rpartition(".")
        if not model or model == "ope" or key == "blessed":
            if key != "blessed":
                other[key] = value
            continue
        grouped.setdefault(metric, {})[model] = value
    models = sorted({m for row in grouped.values() for m in row}, key=lambda m: (m != "candidate", m))
    rows = [f"  {'metric':<24}" + "".join(f"{m[:14]:>15}" for m in models)]
    for metric in sorted(grouped):
        cells = "".join(f"{grouped[metric][m]:>15.4f}" if m in grouped[metric] else f"{'-':>15}" for m in models)
        rows.append(f"  {metric[:24]:<24}{cells}")
    if other:
        rows += ["", "policy, off-policy estimates on the held-out log (ope.<outcome>/<estimator>):"]
        rows += [f"  {name[:40]:<40}{value:>12.4f}" for name, value in sorted(other.items())]
    return rows


class _ProgressFilter(io.TextIOBase):
    """A stdout stand-in: everything goes to the log file; step progress lines also go to ``out``."""

    def __init__(self, log: TextIO, out: TextIO, verbose: bool) -> None:
        self._log, self._out, self._verbose = log, out, verbose
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            plain = _ANSI.sub("", line)
            if self._verbose or _PROGRESS.match(plain):
                self._out.write((plain if self._verbose else plain.strip()) + "\n")
                self._out.flush()
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._out.flush()


@contextlib.contextmanager
def _quiet_kfp_output(log_path: Path, verbose: bool) -> Iterator[None]:
    with open(log_path, "a", encoding="utf-8") as log:
        stream = _ProgressFilter(log, sys.stdout, verbose)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), warnings.catch_warnings():
            # The SubprocessRunner warns about non-"python" image names; it runs the steps here, not the image.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            yield
        stream.flush()


def default_model_store(config: RecflowConfig) -> Path:
    """The model store of ``config`` (``model_store.path``), else DATA_DIR/models."""
    return Path(resolve_store_root(config.model_store, config.paths.data_dir))


def run_local(
    data_dir: Path,
    config: RecflowConfig,
    *,
    model_store: Path | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    run_root: Path | None = None,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
    pipeline_func: Any = None,
    run_name: str | None = None,
    config_path: Path | None = None,
    cache: bool = False,
) -> LocalRunResult:
    """Run the training DAG locally on the dataset in ``data_dir`` and return what each step did.

    ``model_store`` defaults to :func:`default_model_store`; ``tracking_uri`` to the tracking section's URI
    (a local sqlite store in DATA_DIR when unset); ``tracking=False`` runs without MLflow. Run directories go
    under ``run_root`` (default: ``pipeline.pipeline_root`` or DATA_DIR/pipeline-runs). ``pipeline_func``
    replaces the training DAG (tests use small DAGs that follow the same conventions). ``run_name`` names the
    MLflow run (default ``<pipeline>-<yyyymmdd-hhmmss>``); ``config_path`` (the ``--config`` file) anchors a
    relative data directory's tracking store, as ``recflow runs`` resolves it. ``cache=True`` lets KFP reuse the
    outputs of steps whose inputs match an earlier local run's under the same run root (``<root>/.kfp-cache``).

    Raises :class:`PipelineStepFailed` (with the failed step's own error message) when a step fails; an
    unblessed evaluation is not a failure (the result says why nothing was pushed).
    """
    from kfp import local

    from pipelines.definition import build_pipeline, section_defaults
    from recflow.serving_config import policy_layer_summary

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"dataset directory {data_dir} does not exist (generate one with `recflow data generate`)")
    pipeline_config = config.pipeline
    store = Path(model_store) if model_store is not None else default_model_store(config)
    root = Path(run_root or pipeline_config.pipeline_root or config.paths.data_dir / "pipeline-runs")
    if "://" in str(root):
        raise ConfigError(f"pipeline.pipeline_root {root} is remote; a local run needs a local directory")
    # Checked before any work (an unreachable server fails in seconds); the run itself is opened by the first
    # step and closed by the exit handler, exactly as on the cluster.
    uri = _prepare_tracking(config, tracking_uri, config_path) if tracking else ""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = (root / f"{stamp}-{uuid.uuid4().hex[:6]}").resolve()
    status_dir = run_dir / "status"
    status_dir.mkdir(parents=True)
    log_path = run_dir / "pipeline.log"
    pipeline = pipeline_func if pipeline_func is not None else build_pipeline(config)
    name = run_name.strip() if run_name and run_name.strip() else _default_run_name(pipeline_config.name)
    arguments = {"data_uri": str(data_dir.resolve()), "model_store": str(store.resolve()),
                 "tracking_uri": uri, "run_name": name if uri else "",
                 **{f"{k}_config": v for k, v in section_defaults(config).items()}}
    accepted = set(getattr(getattr(pipeline, "component_spec", None), "inputs", None) or arguments)
    arguments = {k: v for k, v in arguments.items() if k in accepted}  # a test's small DAG takes fewer
    echo(f"running pipeline {pipeline_config.name} locally: run directory {run_dir}")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "artifacts"),
               raise_on_error=True, enable_caching=cache, cache_root=str(root.resolve() / ".kfp-cache"))
    started = time.monotonic()
    failure: str | None = None
    with _quiet_kfp_output(log_path, verbose), _environment(STATUS_DIR_ENV, str(status_dir)):
        try:
            pipeline(**arguments)
        except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task..."
            failure = _ANSI.sub("", str(exc))
    records = read_status(status_dir)
    parent = next((r["parent_run_id"] for r in records.values() if r.get("parent_run_id")), "") if uri else ""
    result = LocalRunResult(run_dir=run_dir, log_path=log_path, steps=_step_reports(status_dir, failure),
                            total_seconds=time.monotonic() - started, tracking_uri=uri, parent_run_id=parent,
                            model_store=str(store), serving_note=policy_layer_summary(config.serving))
    if failure is not None:
        failed = next((s for s in result.steps if s.status == STATUS_FAILED), None)
        where = f"step {failed.name} failed: {failed.error}" if failed else failure
        raise PipelineStepFailed(f"{where}\n  nothing downstream ran; full log: {log_path}")
    return result


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``$name`` set to ``value`` for the block (the steps are subprocesses: they inherit it), then restored."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _default_run_name(pipeline_name: str) -> str:
    from recflow.tracking import default_run_name

    return default_run_name(pipeline_name)


def _prepare_tracking(config: RecflowConfig, override: str | None, config_path: Path | None) -> str:
    """The tracking URI of a local run (the local store anchored at the config file's data directory), checked,
    with the experiment created (its artifacts under the data directory for a local store)."""
    try:
        from recflow import tracking
    except ImportError as exc:
        raise ConfigError(f"MLflow tracking is not available in this install ({exc}); run with --no-tracking") from None
    section = config.tracking
    store_dir = tracking.tracking_data_dir(config.paths.data_dir, config_path)
    uri = tracking.resolve_tracking_uri(section, store_dir, override)
    tracking.check_tracking_server(uri, section.check_timeout_s)
    tracking.get_or_create_experiment(tracking.tracking_client(uri), section.experiment,
                                      tracking.default_artifact_location(uri, section, store_dir))
    return uri


def _summary_metrics(result: LocalRunResult) -> dict[str, float]:
    metrics = {f"candidate.{k}" if "." not in k else k: v for k, v in result.step("evaluator").metrics.items()}
    if result.blessed is not None:
        metrics["blessed"] = float(result.blessed)
    return metrics


def _step_names(records: dict[str, Any]) -> list[str]:
    """The DAG's steps in order; the optional tuner (after transform) when it left a status record."""
    names = list(STEP_ORDER)
    if "tuner" in records and "tuner" not in names:
        names.insert(names.index("transform") + 1 if "transform" in names else 0, "tuner")
    return names


def _step_reports(status_dir: Path, failure: str | None) -> list[StepReport]:
    records = read_status(status_dir)
    failed_task = _FAILED_TASK.search(failure or "")
    reports = []
    for name in _step_names(records):
        record = records.get(name)
        if record is None:
            status = "skipped" if name == "pusher" and failure is None else "not run"
            if failed_task and failed_task.group(1).replace("-", "_") == name:
                status = STATUS_FAILED
            reports.append(StepReport(name, status, error="see the full log" if status == STATUS_FAILED else None))
            continue
        status = record["status"]
        if status not in (STATUS_SUCCEEDED, STATUS_FAILED):  # started but never reported back: it crashed
            status = STATUS_FAILED
        notes = {**(record.get("notes") or {}), **({"cached": True} if record.get("cached") else {})}
        reports.append(StepReport(name, status, record.get("seconds"), record.get("metrics") or {},
                                  notes, record.get("error")
                                  or ("the step's process died; see the full log" if status == STATUS_FAILED
                                      else None)))
    return reports
