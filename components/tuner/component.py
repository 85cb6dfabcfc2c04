"""Tuner component: examples + transform output -> best trainer parameters, and the trainer section the TFRS
trainer runs with."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output, python_component


def tuner(
    examples: Input[Dataset],
    transformed: Input[Dataset],
    trainer_config: dict,
    tuning_config: dict,
    tuning: Output[Artifact],
    record: Output[Artifact],
) -> dict:
    """Search learning rate, batch size, embedding size and temperature with Optuna (each trial goes into the
    step's record, and becomes a run nested under the step's MLflow run); write ``best_params.json`` into
    ``tuning`` and return the ``trainer`` section with the tuned values, which the pipeline hands to the TFRS
    trainer."""
    from pathlib import Path

    from components.step_run import step_run

    sections = {"trainer": trainer_config, "tuning": tuning_config}
    with step_run("tuner", sections, record=record.path) as step:
        from recflow.tuning import apply_best_params, run_tuning

        settings = step.config.tuning
        result = run_tuning(Path(examples.path), Path(transformed.path), Path(tuning.path), step.config.trainer,
                            settings)
        step.log_children([{"name": f"trial-{t['number']:03d}", "seconds": t["seconds"],
                            "params": {**t["params"], "epochs": min(settings.epochs, step.config.trainer.epochs),
                                       "trial": t["number"]},
                            "metrics": {**t["metrics"], "objective": t["value"], "trial_seconds": t["seconds"]}}
                           for t in result.trials])
        step.log_metrics({"best_value": result.best_value, "trials": len(result.trials),
                          **{f"best.{k}": v for k, v in result.best_params.items()}})
        step.note(best_params=result.best_params, metric=result.metric)
        tuning.metadata.update({"metric": result.metric, "best_value": result.best_value, **result.best_params})
        step.log_artifact(result.best_params_path, "tuner")
        tuned = apply_best_params(step.config.trainer, result.best_params_path).model_dump(mode="json")
    return tuned


def build(image: str) -> python_component.PythonComponent:
    """The tuner component running in ``image`` (placed like the TFRS trainer: it trains the same models)."""
    return dsl.component(tuner, base_image=image, install_kfp_package=False)
