"""ExampleGen component: raw dataset -> validated, time-split examples (+ statistics, validation summary).

The first step of the DAG: with tracking on it opens the pipeline's MLflow parent run (or joins it when it is
retried), keyed by the orchestrator's run id, and fingerprints the data on it.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output, python_component


def example_gen(
    data_uri: str,
    example_gen_config: dict,
    validation_config: dict,
    tracking_config: dict,
    tracking_uri: str,
    run_key: str,
    run_name: str,
    status_dir: str,
    examples: Output[Dataset],
    statistics: Output[Metrics],
    validation_summary: Output[Markdown],
) -> None:
    """Validate the dataset at ``data_uri`` and write train/eval/test examples; invalid data fails the step."""
    import json
    from pathlib import Path

    from components.step_run import Tracking, step_run

    sections = {"example_gen": example_gen_config, "validation": validation_config, "tracking": tracking_config}
    where = Tracking(tracking_uri, run_key, run_name, opens=True, data_uri=data_uri)
    with step_run("example_gen", sections, where, status_dir) as step:
        from recflow.errors import DataError
        from recflow.examplegen import run_example_gen

        if not data_uri.strip():
            raise DataError("pipeline parameter data_uri is empty: set it to the dataset (a directory or gs://...)")
        result = run_example_gen(Path(data_uri), Path(examples.path), step.config.example_gen,
                                 step.config.validation)
        stats = json.loads((Path(examples.path) / "stats.json").read_text(encoding="utf-8"))
        for name, value in step.log_metrics(stats).items():
            statistics.log_metric(name, value)
        summary = result.format() if hasattr(result, "format") else json.dumps(stats, indent=2)
        Path(validation_summary.path).write_text(f"# ExampleGen\n\n```\n{summary}\n```\n", encoding="utf-8")
        step.log_artifact(Path(examples.path) / "stats.json", "example_gen")
        step.log_artifact(validation_summary.path, "example_gen")


def build(image: str) -> python_component.PythonComponent:
    """The ExampleGen component running in ``image``."""
    return dsl.component(example_gen, base_image=image, install_kfp_package=False)
