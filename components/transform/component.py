"""Transform component: examples -> transform graph + transformed examples (one output directory)."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Dataset, Input, Output, python_component


def transform(
    examples: Input[Dataset],
    beam_pipeline_args: list,
    transform_config: dict,
    tracking_config: dict,
    tracking_uri: str,
    run_key: str,
    run_name: str,
    status_dir: str,
    transformed: Output[Dataset],
) -> None:
    """Analyze the train split with tf.Transform and transform every split; writes the transform graph too."""
    from pathlib import Path

    from components.step_run import Tracking, step_run

    sections = {"transform": transform_config, "tracking": tracking_config}
    with step_run("transform", sections, Tracking(tracking_uri, run_key, run_name), status_dir) as step:
        from recflow.features.transform import run_transform

        result = run_transform(Path(examples.path), Path(transformed.path), step.config.transform,
                               beam_pipeline_args=[str(a) for a in beam_pipeline_args] or None)
        step.log_metrics(getattr(result, "metrics", None) or {})
        for path in sorted(Path(transformed.path).glob("*.json")):
            step.log_artifact(path, "transform")


def build(image: str) -> python_component.PythonComponent:
    """The Transform component running in ``image``."""
    return dsl.component(transform, base_image=image, install_kfp_package=False)
