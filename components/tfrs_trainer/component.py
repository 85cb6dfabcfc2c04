"""TFRS trainer component: examples + transform output -> retrieval/ranking SavedModels."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output, python_component


def tfrs_trainer(
    examples: Input[Dataset],
    transformed: Input[Dataset],
    trainer_config: dict,
    model: Output[Model],
    record: Output[Artifact],
) -> None:
    """Train the TensorFlow Recommenders models; the output directory holds the SavedModels and history.

    The per-epoch curves of ``training.json`` go into the step's record (logged with one value per epoch, and a
    plot)."""
    import json
    from pathlib import Path

    from components.step_run import step_run

    with step_run("tfrs_trainer", {"trainer": trainer_config}, record=record.path) as step:
        from recflow.tracking.curves import epoch_curves
        from recflow.training.tfrs_trainer import train_tfrs

        result = train_tfrs(Path(examples.path), Path(transformed.path), Path(model.path), step.config.trainer)
        for name, value in step.log_metrics(getattr(result, "metrics", None) or {}).items():
            model.metadata[name] = value
        from recflow.bundle_layout import TRAINING_REPORT_FILE

        training_json = Path(model.path) / TRAINING_REPORT_FILE
        if training_json.is_file():
            step.log_curves(epoch_curves(json.loads(training_json.read_text(encoding="utf-8"))))
            step.log_artifact(training_json, "tfrs_trainer")


def build(image: str) -> python_component.PythonComponent:
    """The TFRS trainer component running in ``image`` (the GPU image on Kubeflow)."""
    return dsl.component(tfrs_trainer, base_image=image, install_kfp_package=False)
