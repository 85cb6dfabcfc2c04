"""The life of a tracked run: what defines it (data, code, libraries), the pipeline run and its step runs.

The KFP runners execute each component in its own process (on Kubeflow, its own pod), so components do not
share MLflow's global "active run": they receive the tracking URI and the parent run id as plain strings and
open :func:`component_run`. Everything here goes through :class:`mlflow.MlflowClient` with an explicit URI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from recflow.errors import ConfigError, DataError
from recflow.tracking.names import (
    EVALUATION_ARTIFACTS,
    STEP_SECONDS,
    TAG_BLESSED,
    TAG_CODE_DIRTY,
    TAG_ERROR,
    TAG_FAILED_CHECKS,
    TAG_GATE_OVERRIDES,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_PARENT,
    TAG_PIPELINE,
    TAG_STEP,
    flatten_config,
    log_batch,
    metric_name,
    param_value,
    sanitize_metrics,
)
from recflow.tracking.store import check_tracking_server, tracking_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

#: Libraries whose versions are logged with every pipeline run (param ``lib.<name>``).
TRACKED_LIBRARIES: tuple[str, ...] = (
    "tensorflow",
    "tensorflow-recommenders",
    "tensorflow-transform",
    "tf-agents",
    "kfp",
    "mlflow",
    "apache-beam",
    "numpy",
    "pandas",
)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


def data_fingerprint(data_dir: Path, chunk_size: int = 1 << 20) -> str:
    """sha256 over the data tables of a dataset: ``events``, ``items``, ``users`` in that order, bytes only.

    In a dataset directory each table is the file :func:`recflow.validation.reading.find_table_file` finds
    (``events.parquet``, else ``events.csv``, ...); the digest covers each table's kind, file format and
    bytes, and marks a missing table. Nothing else counts: not ``simulator.json`` (generation time, output path), not
    quarantine files or reports, not the directory's location or the files' mtimes. So byte-identical tables
    have one fingerprint wherever they are; changing, adding or removing a table changes it. A single file is
    fingerprinted by its bytes. Raises DataError when there is no events table.
    """
    from recflow.schema import TABLE_KINDS
    from recflow.validation.reading import find_table_file

    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist (cannot fingerprint the training data)")
    digest = hashlib.sha256()

    def add(path: Path) -> None:
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                digest.update(chunk)

    if root.is_file():
        add(root)
        return digest.hexdigest()
    tables = {kind: find_table_file(root, kind) for kind in TABLE_KINDS}
    if tables["events"] is None:
        raise DataError(
            f"{root}: no events table (events.parquet or events.csv) to fingerprint",
            hint="pass the dataset directory (the one `recflow data generate --out` wrote)",
        )
    for kind, path in tables.items():
        if path is None:
            digest.update(f"{kind}\0-\0".encode())
            continue
        digest.update(f"{kind}\0{path.name[len(kind):]}\0".encode())
        if path.is_dir():  # a shard directory: its data files' names and bytes, in name order
            from recflow.validation.reading import shard_files

            for shard in shard_files(path):
                digest.update(f"{shard.name}\0".encode())
                add(shard)
        else:
            add(path)
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class CodeVersion:
    """Which code produced a run."""

    version: str  # "<commit>" / "<commit>+dirty" in a git checkout, else "recflow==<version>"
    commit: str | None
    dirty: bool | None


def code_version(source_dir: Path | None = None) -> CodeVersion:
    """The git commit (and whether the checkout is dirty) of the recflow code, else its version."""
    import recflow

    where = source_dir or Path(recflow.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return CodeVersion(f"recflow=={recflow.__version__}", None, None)
    dirty = bool(status.strip())
    return CodeVersion(commit + ("+dirty" if dirty else ""), commit, dirty)


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (``"not installed"`` for missing ones), plus ``python``."""
    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# ----------------------------------------------------------------------------------------------------------
# Pipeline runs and step runs


@dataclass
class PipelineRun:
    """An open MLflow run for one pipeline run. As a context manager it finishes the run (FAILED on error)."""

    tracking_uri: str
    run_id: str
    experiment_id: str
    data_fingerprint: str
    code_version: str
    summary_metrics: dict[str, float] = field(default_factory=dict)

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> dict[str, float]:
        """Log metrics on the pipeline run (names mapped by :func:`metric_name`)."""
        return log_metrics(self.tracking_uri, self.run_id, metrics, step=step)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload a file or directory as artifacts of the pipeline run."""
        log_artifacts(self.tracking_uri, self.run_id, local_dir, artifact_path)

    def __enter__(self) -> PipelineRun:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        finish_pipeline_run(
            self.tracking_uri, self.run_id, "FINISHED" if exc_type is None else "FAILED", self.summary_metrics
        )


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if missing; restored if deleted."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def default_run_name(pipeline_name: str, when: datetime | None = None) -> str:
    """A readable run name: ``<pipeline>-<yyyymmdd-hhmmss>`` (UTC), e.g. ``training-20261203-131552``."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{pipeline_name}-{stamp}"


def start_pipeline_run(
    tracking_uri: str,
    experiment: str,
    run_name: str | None,
    config_yaml: str,
    data_dir: Path,
    *,
    pipeline_name: str = "recflow",
    artifact_location: str | None = None,
    tags: Mapping[str, str] | None = None,
    check_timeout_s: float = 5.0,
) -> PipelineRun:
    """Open the MLflow run of one pipeline run and log what defines it (config, data, code, libraries).

    Checks the tracking store first, so an unreachable server fails the run in seconds, before any work.
    ``config_yaml`` is the effective configuration (``recflow.config.dump_config``); ``data_dir`` the dataset
    that is fingerprinted. ``run_name`` is the run's name in MLflow (``--run-name``); None or empty gives
    :func:`default_run_name` of ``pipeline_name``.
    """
    check_tracking_server(tracking_uri, check_timeout_s)
    run_name = run_name.strip() if run_name and run_name.strip() else default_run_name(pipeline_name)
    try:
        config = yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config YAML of run {run_name!r} cannot be parsed: {exc}") from None
    if not isinstance(config, Mapping):
        raise ConfigError(f"config YAML of run {run_name!r} must be a mapping, got {type(config).__name__}")
    fingerprint = data_fingerprint(data_dir)
    code = code_version()
    client = tracking_client(tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment, artifact_location)
    run_tags = {TAG_KIND: "pipeline", TAG_PIPELINE: pipeline_name, **(tags or {})}
    if code.commit:
        run_tags[TAG_GIT_COMMIT] = code.commit
        run_tags[TAG_CODE_DIRTY] = str(code.dirty).lower()
    run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    run_id = run.info.run_id
    params = {k: param_value(v) for k, v in flatten_config(config).items()}
    params.update(
        {
            "data.path": param_value(str(Path(data_dir).resolve())),
            "data.fingerprint": fingerprint,
            "code.version": code.version,
            **{f"lib.{name}": v for name, v in library_versions().items()},
        }
    )
    try:
        log_batch(client, run_id, params=params)
        client.log_text(run_id, config_yaml, "config/config.yaml")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return PipelineRun(tracking_uri, run_id, experiment_id, fingerprint, code.version)


@dataclass
class ComponentRun:
    """The nested MLflow run of one pipeline step (yielded by :func:`component_run`)."""

    tracking_uri: str
    run_id: str
    parent_run_id: str
    step_name: str

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> dict[str, float]:
        """Log metrics on the step's run."""
        return log_metrics(self.tracking_uri, self.run_id, metrics, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params on the step's run (values as :func:`param_value`)."""
        log_batch(
            tracking_client(self.tracking_uri),
            self.run_id,
            params={k: param_value(v) for k, v in params.items()},
        )

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload a file or directory as artifacts of the step's run."""
        log_artifacts(self.tracking_uri, self.run_id, local_dir, artifact_path)


@contextlib.contextmanager
def component_run(
    tracking_uri: str, parent_run_id: str, step_name: str, *, check_timeout_s: float = 5.0,
    seconds: float | None = None,
) -> Iterator[ComponentRun]:
    """A nested run for one pipeline step, usable from any process (the KFP local runner forks one per step).

    Tags ``mlflow.parentRunId`` and ``recflow.step``; records the step's wall time as metric ``step_seconds`` (the
    time spent inside the block, or ``seconds`` when given: the wall time of a step executed elsewhere, whose
    record is being logged); on an exception sets status FAILED (with the error as tag ``recflow.error``) and
    re-raises.
    """
    check_tracking_server(tracking_uri, check_timeout_s)
    client = tracking_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    run = client.create_run(
        parent.info.experiment_id,
        run_name=step_name,
        tags={
            TAG_PARENT: parent_run_id,
            TAG_STEP: step_name,
            TAG_KIND: "step",
            TAG_PIPELINE: parent.data.tags.get(TAG_PIPELINE, ""),
        },
    )
    handle = ComponentRun(tracking_uri, run.info.run_id, parent_run_id, step_name)
    started = time.perf_counter()
    try:
        yield handle
    except BaseException as exc:
        elapsed = time.perf_counter() - started
        with contextlib.suppress(Exception):  # never mask the step's own error
            log_batch(
                client,
                handle.run_id,
                metrics={STEP_SECONDS: elapsed},
                tags={TAG_ERROR: f"{type(exc).__name__}: {exc}"[:5000]},
            )
            client.set_terminated(handle.run_id, "FAILED")
        raise
    took = time.perf_counter() - started if seconds is None else float(seconds)
    log_batch(client, handle.run_id, metrics={STEP_SECONDS: took})
    client.set_terminated(handle.run_id, "FINISHED")


def log_metrics(
    tracking_uri: str, run_id: str, metrics: Mapping[str, Any], *, step: int = 0
) -> dict[str, float]:
    """Log a flat dict of metrics on ``run_id``; names via :func:`metric_name`. Returns what was logged."""
    clean = sanitize_metrics(metrics)
    log_batch(tracking_client(tracking_uri), run_id, metrics=clean, step=step)
    return clean


def log_artifacts(tracking_uri: str, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
    """Upload a local file or directory as artifacts of ``run_id`` under ``artifact_path``."""
    local = Path(local_dir)
    if not local.exists():
        raise DataError(f"artifact {local} does not exist (nothing to log for run {run_id})")
    client = tracking_client(tracking_uri)
    if local.is_dir():
        client.log_artifacts(run_id, str(local), artifact_path)
    else:
        client.log_artifact(run_id, str(local), artifact_path)


def evaluation_tags(blessing: Mapping[str, Any]) -> dict[str, str]:
    """The verdict tags of an evaluation (its ``blessing.json`` content): ``recflow.blessed``,
    ``recflow.gate_overrides`` and ``recflow.failed_checks`` (``none`` when empty)."""
    return {
        TAG_BLESSED: "true" if blessing.get("blessed") else "false",
        TAG_GATE_OVERRIDES: ("; ".join(blessing.get("overrides") or []) or "none")[:5000],
        TAG_FAILED_CHECKS: ("; ".join(blessing.get("reasons") or []) or "none")[:5000],
    }


def record_evaluation(
    tracking_uri: str, run_ids: Sequence[str], evaluation_dir: Path, artifact_path: str = "evaluation"
) -> dict[str, str]:
    """Log an evaluation's report (``report.html``, ``blessing.json``, ``metrics.json``) as artifacts of every
    run of ``run_ids`` (the pipeline run and the evaluator's step run), blessed or not, and tag them with the
    verdict, the failed checks and the gate overrides. Returns the tags set."""
    evaluation_dir = Path(evaluation_dir)
    tags = evaluation_tags(json.loads((evaluation_dir / "blessing.json").read_text(encoding="utf-8")))
    client = tracking_client(tracking_uri)
    for run_id in dict.fromkeys(r for r in run_ids if r):
        for name in EVALUATION_ARTIFACTS:
            path = evaluation_dir / name
            if path.is_file():
                client.log_artifact(run_id, str(path), artifact_path)
        log_batch(client, run_id, tags=tags)
    return tags


def child_runs(tracking_uri: str, parent_run_id: str) -> list[Run]:
    """The step runs nested under ``parent_run_id``, oldest first."""
    client = tracking_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
        max_results=1000,
    )
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def finish_pipeline_run(
    tracking_uri: str, run_id: str, status: RunStatus = "FINISHED", metrics: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Close a pipeline run: log ``metrics``, copy step wall times to ``step_seconds.<step>``, set status.

    Also logs ``pipeline_seconds`` (start to now). Returns the metrics logged here.
    """
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    client = tracking_client(tracking_uri)
    logged = sanitize_metrics(metrics or {})
    for child in child_runs(tracking_uri, run_id):
        seconds = child.data.metrics.get(STEP_SECONDS)
        step = child.data.tags.get(TAG_STEP)
        if seconds is not None and step:
            logged[f"{STEP_SECONDS}.{metric_name(step)}"] = seconds
    run = client.get_run(run_id)
    logged["pipeline_seconds"] = max(0.0, time.time() - run.info.start_time / 1000.0)
    log_batch(client, run_id, metrics=logged)
    client.set_terminated(run_id, status)
    return logged

