"""A step's record (:mod:`recflow.step_record`) logged as its nested MLflow run under the pipeline run.

The light tracking step after each heavy step calls :func:`log_step_record`: the step's run gets the record's
config sections (params and ``config/<section>.yaml``), metrics, per-epoch curves (metric histories and a plot),
tags, artifacts and nested child runs (the tuner's trials), ``step_seconds`` = the wall time of the execution that
wrote the record, and the tags ``recflow.execution_id`` and ``recflow.cached``. A record served from KFP's cache
is the one an earlier execution wrote: its execution id is already on a step run of another pipeline run, so the
new step run says ``recflow.cached = true`` and ``recflow.executed_in = <that pipeline run>`` -- a reviewer sees
that the step did not run again, and where it did.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recflow.step_record import StepRecord, read_step_record, record_file
from recflow.tracking.lifecycle import component_run, log_artifacts, log_metrics
from recflow.tracking.names import TAG_PARENT, TAG_STEP, log_batch
from recflow.tracking.store import tracking_client

TAG_EXECUTION = "recflow.execution_id"  # the execution that wrote the step's record
TAG_CACHED = "recflow.cached"  # "true" when that execution belongs to an earlier pipeline run (KFP's cache)
TAG_EXECUTED_IN = "recflow.executed_in"  # the pipeline run (MLflow run id) the cached execution was logged in


def earlier_execution(tracking_uri: str, experiment_id: str, record: StepRecord, parent_run_id: str) -> str | None:
    """The pipeline run (id) under which ``record``'s execution was logged first, when that is not
    ``parent_run_id``; None when the execution is new (the step ran in this pipeline run)."""
    client = tracking_client(tracking_uri)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_EXECUTION}` = '{record.execution_id}' and tags.`{TAG_STEP}` = '{record.step}'",
        max_results=50,
    )
    others = sorted((r for r in runs if r.data.tags.get(TAG_PARENT) != parent_run_id),
                    key=lambda r: r.info.start_time or 0)
    return str(others[0].data.tags.get(TAG_PARENT, "")) if others else None


def log_step_outputs(
    tracking_uri: str,
    run_ids: tuple[str, str],
    step: str,
    *,
    metrics: Mapping[str, float] | None = None,
    curves: Mapping[str, list[float]] | None = None,
    artifacts: Sequence[tuple[Path, str, bool]] = (),
    tags: Mapping[str, str] | None = None,
    parent_metrics: Mapping[str, float] | None = None,
    parent_tags: Mapping[str, str] | None = None,
) -> None:
    """Log what a step produced on its run (``run_ids[1]``) and, where asked, on the pipeline run (``run_ids[0]``):
    metrics, per-epoch curves (``epoch.<name>`` histories and ``plots/<step>_curves.png``), tags, artifacts
    (``(path, artifact_path, also_on_pipeline)``; missing paths are skipped)."""
    from recflow.tracking.curves import log_epoch_curves, plot_curves

    parent_id, run_id = run_ids
    client = tracking_client(tracking_uri)
    if metrics:
        log_metrics(tracking_uri, run_id, metrics)
    if curves:
        log_epoch_curves(tracking_uri, run_id, curves)
        with tempfile.TemporaryDirectory(prefix="recflow-plot-") as tmp:
            plot = plot_curves(curves, Path(tmp) / f"{step}_curves.png", f"{step}: per-epoch curves")
            if plot is not None:
                log_artifacts(tracking_uri, run_id, plot, "plots")
    if tags:
        log_batch(client, run_id, tags=dict(tags))
    for path, artifact_path, on_pipeline in artifacts:
        if Path(path).exists():
            for target in (run_id, parent_id) if on_pipeline and parent_id else (run_id,):
                log_artifacts(tracking_uri, target, Path(path), artifact_path or None)
    if parent_id and parent_metrics:
        log_metrics(tracking_uri, parent_id, parent_metrics)
    if parent_id and parent_tags:
        log_batch(client, parent_id, tags=dict(parent_tags))


def _log_children(tracking_uri: str, run_id: str, children: Sequence[Mapping[str, Any]],
                  check_timeout_s: float) -> None:
    """Runs nested under the step's run (e.g. the tuner's trials), with their params and metrics."""
    for child in children:
        with component_run(tracking_uri, run_id, str(child.get("name", "child")), check_timeout_s=check_timeout_s,
                           seconds=child.get("seconds")) as nested:
            if child.get("params"):
                nested.log_params(child["params"])
            if child.get("metrics"):
                nested.log_metrics(child["metrics"])


def log_step_record(tracking_uri: str, parent_run_id: str, record_dir: Path | str, *,
                    check_timeout_s: float = 5.0) -> tuple[str, StepRecord, str | None]:
    """Log the record in ``record_dir`` as a step run nested under ``parent_run_id``.

    Returns the step run's id, the record, and -- when the record was served from KFP's cache -- the pipeline
    run its execution was first logged under (else None).
    """
    from recflow.tracking.orchestrated import log_config_sections

    record = read_step_record(record_dir)
    parent = tracking_client(tracking_uri).get_run(parent_run_id)
    earlier = earlier_execution(tracking_uri, parent.info.experiment_id, record, parent_run_id)
    with component_run(tracking_uri, parent_run_id, record.step, check_timeout_s=check_timeout_s,
                       seconds=record.seconds) as nested:
        tags = {**record.tags, TAG_EXECUTION: record.execution_id, TAG_CACHED: "true" if earlier else "false"}
        if earlier:
            tags[TAG_EXECUTED_IN] = earlier
        if record.config:
            log_config_sections(tracking_uri, (parent_run_id, nested.run_id), record.config)
        files = [(record_file(record_dir, a), str(a.get("artifact_path") or ""), bool(a.get("on_pipeline")))
                 for a in record.artifacts]
        log_step_outputs(tracking_uri, (parent_run_id, nested.run_id), record.step, metrics=record.metrics,
                         curves=record.curves, artifacts=files, tags=tags, parent_metrics=record.parent_metrics,
                         parent_tags=record.parent_tags)
        _log_children(tracking_uri, nested.run_id, record.children, check_timeout_s)
    return nested.run_id, record, earlier
