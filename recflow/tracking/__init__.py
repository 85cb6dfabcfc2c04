"""Experiment tracking with MLflow: one MLflow run per pipeline run, one nested run per pipeline step.

A pipeline run records everything a reviewer needs to reproduce or judge it:

* params: the whole config flattened to dotted keys (``simulator.users``), the data fingerprint
  (``data.fingerprint``: sha256 over the dataset's tables), the code version (``code.version``: git commit, with
  ``+dirty`` for uncommitted changes, or the package version outside a checkout) and the versions of the
  libraries that shape the result (``lib.tensorflow``, ...);
* the config YAML as the artifact ``config/config.yaml``;
* metrics: every evaluation metric (names mapped by :func:`metric_name`), each step's wall time
  (``step_seconds.<step>`` on the pipeline run, ``step_seconds`` on the step's own run);
* artifacts: whatever the steps log (evaluation report, transform graph, model bundle).

The package is split along its seams; everything public is importable from ``recflow.tracking``:

* :mod:`recflow.tracking.store`: the ``tracking`` config section, where the store is, whether it answers, the
  client;
* :mod:`recflow.tracking.names`: the tags recflow sets, MLflow-safe metric/param names, batched logging;
* :mod:`recflow.tracking.lifecycle`: a run's data/code/library identity, the pipeline run and its step runs;
* :mod:`recflow.tracking.orchestrated`: the pipeline run opened by the first step, joined by the others, closed
  by the exit handler (keyed by the orchestrator's run id);
* :mod:`recflow.tracking.curves`: per-epoch training curves as metric histories and plots;
* :mod:`recflow.tracking.comparison`: finding runs by id, prefix or name, listing and comparing them;
* :mod:`recflow.tracking.formatting`: the plain-text tables of ``recflow runs``.

None of them imports MLflow at import time (``recflow.config`` imports :class:`TrackingConfig` from here).
"""

from recflow.tracking.comparison import (
    BLESSED_METRIC,
    KEY_METRIC,
    LIFT_REFERENCE,
    ComparisonRow,
    RunComparison,
    RunSummary,
    compare_runs,
    find_run,
    list_runs,
    summarize_run,
)
from recflow.tracking.curves import epoch_curves, log_epoch_curves, plot_curves
from recflow.tracking.formatting import format_comparison, format_runs_table
from recflow.tracking.lifecycle import (
    TRACKED_LIBRARIES,
    CodeVersion,
    ComponentRun,
    PipelineRun,
    RunStatus,
    child_runs,
    code_version,
    component_run,
    data_fingerprint,
    default_run_name,
    finish_pipeline_run,
    get_or_create_experiment,
    library_versions,
    log_artifacts,
    log_metrics,
    record_evaluation,
    start_pipeline_run,
)
from recflow.tracking.names import (
    EVALUATION_ARTIFACTS,
    NAME_REPLACEMENTS,
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
    TAG_PUSHED_KIND,
    TAG_RUN_NAME,
    TAG_STEP,
    flatten_config,
    log_batch,
    metric_name,
    param_value,
    sanitize_metrics,
)
from recflow.tracking.orchestrated import (
    FINAL_STATES,
    TAG_FINAL_STATUS,
    TAG_RUN_KEY,
    close_pipeline_run,
    find_pipeline_run,
    join_pipeline_run,
    log_config_sections,
    open_pipeline_run,
)
from recflow.tracking.store import (
    TrackingConfig,
    check_tracking_server,
    default_artifact_location,
    default_tracking_uri,
    require_existing_store,
    resolve_tracking_uri,
    tracking_client,
    tracking_data_dir,
)

__all__ = [
    "BLESSED_METRIC",
    "CodeVersion",
    "ComparisonRow",
    "ComponentRun",
    "EVALUATION_ARTIFACTS",
    "FINAL_STATES",
    "KEY_METRIC",
    "LIFT_REFERENCE",
    "NAME_REPLACEMENTS",
    "PipelineRun",
    "RunComparison",
    "RunStatus",
    "RunSummary",
    "STEP_SECONDS",
    "TAG_BLESSED",
    "TAG_CODE_DIRTY",
    "TAG_ERROR",
    "TAG_FAILED_CHECKS",
    "TAG_FINAL_STATUS",
    "TAG_GATE_OVERRIDES",
    "TAG_GIT_COMMIT",
    "TAG_KIND",
    "TAG_PARENT",
    "TAG_PIPELINE",
    "TAG_PUSHED_KIND",
    "TAG_RUN_KEY",
    "TAG_RUN_NAME",
    "TAG_STEP",
    "TRACKED_LIBRARIES",
    "TrackingConfig",
    "check_tracking_server",
    "child_runs",
    "close_pipeline_run",
    "code_version",
    "compare_runs",
    "component_run",
    "data_fingerprint",
    "default_artifact_location",
    "default_run_name",
    "default_tracking_uri",
    "epoch_curves",
    "find_pipeline_run",
    "find_run",
    "finish_pipeline_run",
    "flatten_config",
    "format_comparison",
    "format_runs_table",
    "get_or_create_experiment",
    "join_pipeline_run",
    "library_versions",
    "list_runs",
    "log_artifacts",
    "log_batch",
    "log_config_sections",
    "log_epoch_curves",
    "log_metrics",
    "metric_name",
    "open_pipeline_run",
    "param_value",
    "plot_curves",
    "record_evaluation",
    "require_existing_store",
    "resolve_tracking_uri",
    "sanitize_metrics",
    "start_pipeline_run",
    "summarize_run",
    "tracking_client",
    "tracking_data_dir",
]
