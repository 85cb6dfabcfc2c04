"""TFRS trainer component: examples + transform output -> retrieval/ranking SavedModels."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import python_component
from kfp.dsl import Dataset, Input, Model, Output


def tfrs_trainer(
    examples: Input[Dataset],
    transformed: Input[Dataset],
    config_yaml: str,
    tracking_uri: str,
    parent_run_id: str,
    status_dir: str,
    model: Output[Model],
) -> None:
    """Train the TensorFlow Recommenders models; the output directory holds the SavedModels and history."""
    from pathlib import Path

    from components.step_run import step_run

    with step_run("tfrs_trainer", config_yaml, tracking_uri, parent_run_id, status_dir) as step:
        from recflow.training.tfrs_trainer import train_tfrs

        result = train_tfrs(Path(examples.path), Path(transformed.path), Path(model.path), step.config.trainer)
        for name, value in step.log_metrics(getattr(result, "metrics", None) or {}).items():
            model.metadata[name] = value


def build(image: str) -> python_component.PythonComponent:
    """The TFRS trainer component running in ``image`` (the GPU image on Kubeflow)."""
    return dsl.component(tfrs_trainer, base_image=image, install_kfp_package=False)
