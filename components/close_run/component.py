"""Close-run component: the exit handler of the DAG (runs after every other task, whatever their outcome).

It closes the pipeline's MLflow parent run with the orchestrator's final state (``FINISHED``, ``FAILED`` or
``KILLED``; the tag ``recflow.final_status`` keeps KFP's own word), after copying the steps' wall times onto it.
A heavy step that failed wrote no record for its tracking step, so on a local run (whose status records say
which step failed and why) the exit handler records it as a FAILED step run with its error; on Kubeflow the
parent run keeps KFP's error message (``recflow.error``). Without tracking (``tracking_uri`` empty) it does
nothing.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
from kfp import dsl
from kfp.dsl import python_component


def close_run(
    tracking_config: dict,
    tracking_uri: str,
    run_key: str,
    run_name: str,
    status: dsl.PipelineTaskFinalStatus,
) -> str:
    """Close the MLflow parent run of this pipeline run; returns its MLflow status ('' without tracking)."""
    if not tracking_uri:
        return ""
    from components.step_run import STATUS_FAILED, decode_nulls, read_status, status_dir_from_env
    from recflow.tracking import TrackingConfig
    from recflow.tracking.orchestrated import close_pipeline_run

    section = TrackingConfig.model_validate(decode_nulls(tracking_config or {}))
    status_dir = status_dir_from_env()
    records = read_status(status_dir) if status_dir is not None else {}
    died = "the step's process died (see the pipeline log)"
    failed = [(name, str(r.get("error") or died), float(r.get("seconds") or 0.0)) for name, r in records.items()
              if r.get("status") != "succeeded" and not r.get("tracking_run_id")
              and (r.get("status") == STATUS_FAILED or status.state != "SUCCEEDED")]
    run_id, mlflow_status = close_pipeline_run(
        tracking_uri, section.experiment, run_key, status.state, error=status.error_message or "",
        run_name=run_name, check_timeout_s=section.check_timeout_s, failed_steps=failed)
    print(f"[exit] close_run: MLflow run {run_id} closed as {mlflow_status} (pipeline {status.state})", flush=True)
    return mlflow_status


def build(image: str) -> python_component.PythonComponent:
    """The exit-handler component running in ``image``."""
    return dsl.component(close_run, base_image=image, install_kfp_package=False)
