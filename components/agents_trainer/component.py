"""Agents trainer component: examples + TFRS model -> TF-Agents policy."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output, python_component


def agents_trainer(
    examples: Input[Dataset],
    model: Input[Model],
    policy_config: dict,
    policy: Output[Model],
    record: Output[Artifact],
) -> None:
    """Train the bandit policy on the TFRS model's embeddings and the logged feedback of the train split."""
    from pathlib import Path

    from components.step_run import step_run

    with step_run("agents_trainer", {"policy": policy_config}, record=record.path) as step:
        from recflow.policy.trainer import train_policy

        result = train_policy(Path(examples.path), Path(model.path), Path(policy.path), step.config.policy)
        for name, value in step.log_metrics(result.metrics()).items():
            policy.metadata[name] = value
        if result.loss_curve:
            step.log_curves({"policy.loss": [float(v) for v in result.loss_curve]})
        from recflow.bundle_layout import POLICY_META_FILE

        meta = Path(policy.path) / POLICY_META_FILE
        if meta.is_file():
            step.log_artifact(meta, "agents_trainer")


def build(image: str) -> python_component.PythonComponent:
    """The Agents trainer component running in ``image`` (the GPU image on Kubeflow)."""
    return dsl.component(agents_trainer, base_image=image, install_kfp_package=False)
