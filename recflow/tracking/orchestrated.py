"""Pipeline runs tracked from inside the orchestrator: opened by the first step, joined by the others, closed by
the exit handler -- the same code path on Kubeflow and on the local runner.

No process outside the DAG holds the MLflow parent run. Every task of one pipeline run receives the
orchestrator's run id (KFP's ``{{$.pipeline_job_uuid}}`` placeholder, resolved at run time; the *run key*):

* the first step calls :func:`open_pipeline_run`: it finds the MLflow run tagged ``recflow.run_key = <key>`` in
  the experiment or creates it (so a retried first step joins the run it opened before), and logs the data
  fingerprint, code and library versions;
* every step calls :func:`join_pipeline_run` and nests its own run under the parent
  (:func:`recflow.tracking.lifecycle.component_run`); it logs the config sections it reads on its own run and,
  where the parent does not have them yet, on the parent (:func:`log_config_sections`);
* the exit handler calls :func:`close_pipeline_run` with the orchestrator's final state: the parent gets its
  step wall times, the final status (FINISHED / FAILED / KILLED) and the tag ``recflow.final_status``; when the
  first step never opened a parent (e.g. it failed before), the exit handler creates one, so a failed run is
  never invisible, and it records each failed step it is told about (the local runner's status records) as a
  FAILED step run with the step's own error (:func:`record_failed_step`).

The heavy steps themselves never call these functions: they take no run id (so KFP can reuse them from its
cache) and write a record that a light tracking step logs (:mod:`recflow.tracking.records`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from recflow.errors import DataError
from recflow.tracking.lifecycle import (
    code_version,
    data_fingerprint,
    default_run_name,
    finish_pipeline_run,
    get_or_create_experiment,
    library_versions,
)
from recflow.tracking.names import (
    STEP_SECONDS,
    TAG_CODE_DIRTY,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_PARENT,
    TAG_PIPELINE,
    TAG_STEP,
    flatten_config,
    log_batch,
    param_value,
)
from recflow.tracking.store import check_tracking_server, tracking_client

if TYPE_CHECKING:
    from mlflow.entities import Run

TAG_RUN_KEY = "recflow.run_key"  # the orchestrator's id of the pipeline run (KFP: the pipeline job's uuid)
TAG_FINAL_STATUS = "recflow.final_status"  # the orchestrator's final state: SUCCEEDED, FAILED, CANCELLED
#: The orchestrator's final states (KFP's PipelineTaskFinalStatus.state) and the MLflow status they close with.
FINAL_STATES: dict[str, str] = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED",
                                "CANCELED": "KILLED", "SKIPPED": "FINISHED"}


def find_pipeline_run(tracking_uri: str, experiment: str, run_key: str) -> Run | None:
    """The pipeline run of ``experiment`` tagged with ``run_key`` (the oldest, if several), or None."""
    client = tracking_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_KEY}` = '{run_key}'",
                              max_results=50)
    pipelines = [r for r in runs if r.data.tags.get(TAG_KIND) == "pipeline"]
    return min(pipelines, key=lambda r: r.info.start_time or 0) if pipelines else None


def _require_key(run_key: str) -> str:
    key = (run_key or "").strip()
    if not key or key.startswith("{{"):
        raise DataError(f"pipeline run key {run_key!r} is empty or an unresolved placeholder: the orchestrator "
                        "must pass its run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)")
    return key


def open_pipeline_run(
    tracking_uri: str,
    experiment: str,
    run_key: str,
    *,
    run_name: str = "",
    pipeline_name: str = "recflow",
    data_dir: Path | None = None,
    artifact_location: str | None = None,
    check_timeout_s: float = 5.0,
) -> str:
    """The id of the parent run of pipeline run ``run_key``: found by its tag, else created and described.

    A new run is named ``run_name`` (else :func:`default_run_name`) and gets the tags ``recflow.kind=pipeline``,
    ``recflow.pipeline``, ``recflow.run_key`` (and the git commit when known) and the params ``data.path``,
    ``data.fingerprint`` (when ``data_dir`` is given), ``code.version`` and ``lib.<name>``.
    """
    key = _require_key(run_key)
    check_tracking_server(tracking_uri, check_timeout_s)
    found = find_pipeline_run(tracking_uri, experiment, key)
    if found is not None:
        return str(found.info.run_id)
    client = tracking_client(tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment, artifact_location)
    code = code_version()
    tags = {TAG_KIND: "pipeline", TAG_PIPELINE: pipeline_name, TAG_RUN_KEY: key}
    if code.commit:
        tags[TAG_GIT_COMMIT] = code.commit
        tags[TAG_CODE_DIRTY] = str(code.dirty).lower()
    name = run_name.strip() if run_name and run_name.strip() else default_run_name(pipeline_name)
    run_id = str(client.create_run(experiment_id, run_name=name, tags=tags).info.run_id)
    params = {"code.version": code.version, **{f"lib.{n}": v for n, v in library_versions().items()}}
    if data_dir is not None:
        params["data.path"] = param_value(str(data_dir))
        params["data.fingerprint"] = data_fingerprint(data_dir)
    log_batch(client, run_id, params=params)
    return run_id


def join_pipeline_run(tracking_uri: str, experiment: str, run_key: str, *, check_timeout_s: float = 5.0) -> str:
    """The id of the parent run that the first step opened for ``run_key``; DataError when there is none."""
    key = _require_key(run_key)
    check_tracking_server(tracking_uri, check_timeout_s)
    found = find_pipeline_run(tracking_uri, experiment, key)
    if found is None:
        raise DataError(f"no MLflow pipeline run tagged {TAG_RUN_KEY}={key} in experiment {experiment!r} at "
                        f"{tracking_uri}: the first step opens it (did it run with the same tracking_uri?)")
    return str(found.info.run_id)


def log_config_sections(tracking_uri: str, run_ids: tuple[str, str], sections: Mapping[str, Any]) -> None:
    """Log config ``sections`` (``{"trainer": {...}}``) as params ``<section>.<key>`` and as the artifact
    ``config/<section>.yaml`` on the step run (``run_ids[1]``), and the params the parent run (``run_ids[0]``)
    does not have yet on it (MLflow params are immutable: a tuned section keeps its tuned values on the step)."""
    parent_id, step_id = run_ids
    client = tracking_client(tracking_uri)
    params = {k: param_value(v) for k, v in flatten_config(dict(sections)).items()}
    log_batch(client, step_id, params=params)
    existing = client.get_run(parent_id).data.params
    log_batch(client, parent_id, params={k: v for k, v in params.items() if k not in existing})
    for section, values in sections.items():
        text = yaml.safe_dump({section: values}, sort_keys=False)
        client.log_text(step_id, text, f"config/{section}.yaml")
        if f"config/{section}.yaml" not in {a.path for a in client.list_artifacts(parent_id, "config")}:
            client.log_text(parent_id, text, f"config/{section}.yaml")


def record_failed_step(tracking_uri: str, parent_run_id: str, step: str, error: str, seconds: float = 0.0) -> str:
    """A FAILED step run named ``step`` under ``parent_run_id``, with ``error`` as the tag ``recflow.error``
    (a heavy step that fails writes no record, so the exit handler records it). Returns its id."""
    client = tracking_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    run = client.create_run(parent.info.experiment_id, run_name=step, tags={
        TAG_PARENT: parent_run_id, TAG_STEP: step, TAG_KIND: "step",
        TAG_PIPELINE: parent.data.tags.get(TAG_PIPELINE, ""), TAG_ERROR: error[:5000]})
    log_batch(client, run.info.run_id, metrics={STEP_SECONDS: float(seconds)})
    client.set_terminated(run.info.run_id, "FAILED")
    return str(run.info.run_id)


def close_pipeline_run(
    tracking_uri: str,
    experiment: str,
    run_key: str,
    final_state: str,
    *,
    error: str = "",
    run_name: str = "",
    pipeline_name: str = "recflow",
    check_timeout_s: float = 5.0,
    failed_steps: Sequence[tuple[str, str, float]] = (),
) -> tuple[str, str]:
    """Close the parent run of ``run_key`` with the orchestrator's ``final_state``; returns (run id, status).

    The run gets the step wall times (``step_seconds.<step>``), ``pipeline_seconds``, the tag
    ``recflow.final_status`` and, on failure, ``recflow.error``. Without a parent (the first step failed before
    opening one) a run is created so that the failure is recorded. ``failed_steps`` (``(step, error,
    seconds)``) become FAILED step runs first.
    """
    state = (final_state or "").strip().upper()
    if state not in FINAL_STATES:
        raise DataError(f"unknown final state {final_state!r} of pipeline run {run_key!r} "
                        f"(expected one of {', '.join(FINAL_STATES)})")
    run_id = open_pipeline_run(tracking_uri, experiment, run_key, run_name=run_name, pipeline_name=pipeline_name,
                               check_timeout_s=check_timeout_s)
    for step, step_error, seconds in failed_steps:
        record_failed_step(tracking_uri, run_id, step, step_error, seconds)
    tags = {TAG_FINAL_STATUS: state}
    if error:
        tags[TAG_ERROR] = error[:5000]
    client = tracking_client(tracking_uri)
    log_batch(client, run_id, tags=tags)
    status = FINAL_STATES[state]
    finish_pipeline_run(tracking_uri, run_id, "FINISHED" if status == "FINISHED" else
                        "KILLED" if status == "KILLED" else "FAILED")
    return run_id, status

