"""Agents trainer component: examples + TFRS model -> TF-Agents policy."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import python_component
from kfp.dsl import Dataset, Input, Model, Output


def agents_trainer(
    examples: Input[Dataset],
    model: Input[Model],
    config_yaml: str,
    tracking_uri: str,
    parent_run_id: str,
    status_dir: str,
    policy: Output[Model],
) -> None:
    """Train the bandit policy on the TFRS model's embeddings and the logged feedback of the train split."""
    from pathlib import Path

    from components.step_run import step_run

    with step_run("agents_trainer", config_yaml, tracking_uri, parent_run_id, status_dir) as step:
        from recflow.policy.trainer import train_policy

        result = train_policy(Path(examples.path), Path(model.path), Path(policy.path), step.config.policy)
        for name, value in step.log_metrics(result.metrics()).items():
            policy.metadata[name] = value


def build(image: str) -> python_component.PythonComponent:
    """The Agents trainer component running in ``image`` (the GPU image on Kubeflow)."""
    return dsl.component(agents_trainer, base_image=image, install_kfp_package=False)
