"""Tuner component: examples + transform output -> best trainer parameters, and the config the trainer runs with."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output, python_component


def tuner(
    examples: Input[Dataset],
    transformed: Input[Dataset],
    config_yaml: str,
    tracking_uri: str,
    parent_run_id: str,
    status_dir: str,
    tuning: Output[Artifact],
) -> str:
    """Search learning rate, batch size, embedding size and temperature with Optuna (each trial a nested MLflow
    run under this step's run); write ``best_params.json`` into ``tuning`` and return the whole config YAML with
    the trainer section overridden, which the pipeline hands to the TFRS trainer."""
    from pathlib import Path

    from components.step_run import step_run

    with step_run("tuner", config_yaml, tracking_uri, parent_run_id, status_dir) as step:
        from recflow.tuning import run_tuning, tuned_config_yaml

        settings = step.config.tuning
        result = run_tuning(Path(examples.path), Path(transformed.path), Path(tuning.path), step.config.trainer,
                            settings, tracking_uri=tracking_uri, parent_run_id=step.tracking_run_id or "")
        step.log_metrics({"best_value": result.best_value, "trials": len(result.trials),
                          **{f"best.{k}": v for k, v in result.best_params.items()}})
        step.note(best_params=result.best_params, metric=result.metric)
        tuning.metadata.update({"metric": result.metric, "best_value": result.best_value, **result.best_params})
        tuned = tuned_config_yaml(config_yaml, result.best_params_path)
    return tuned


def build(image: str) -> python_component.PythonComponent:
    """The tuner component running in ``image`` (placed like the TFRS trainer: it trains the same models)."""
    return dsl.component(tuner, base_image=image, install_kfp_package=False)
