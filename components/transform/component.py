"""Transform component: examples -> transform graph + transformed examples (one output directory)."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output, python_component


def transform(
    examples: Input[Dataset],
    beam_pipeline_args: list,
    transform_config: dict,
    transformed: Output[Dataset],
    record: Output[Artifact],
) -> None:
    """Prepare the raw feature rows (``transform.prepare_engine``: pandas here, or Beam pipelines on the step's
    runner), analyze the train split with tf.Transform and transform every split; writes the transform graph too."""
    from pathlib import Path

    from components.step_run import step_run

    with step_run("transform", {"transform": transform_config}, record=record.path) as step:
        from recflow.features.transform import run_transform

        result = run_transform(Path(examples.path), Path(transformed.path), step.config.transform,
                               beam_pipeline_args=[str(a) for a in beam_pipeline_args] or None)
        step.log_metrics(getattr(result, "metrics", None) or {})
        for path in sorted(Path(transformed.path).glob("*.json")):
            step.log_artifact(path, "transform")


def build(image: str) -> python_component.PythonComponent:
    """The Transform component running in ``image``."""
    return dsl.component(transform, base_image=image, install_kfp_package=False)
