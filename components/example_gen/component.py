"""ExampleGen component: raw dataset -> validated, time-split examples (+ statistics, validation summary)."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import python_component
from kfp.dsl import Dataset, Markdown, Metrics, Output


def example_gen(
    data_uri: str,
    config_yaml: str,
    tracking_uri: str,
    parent_run_id: str,
    status_dir: str,
    examples: Output[Dataset],
    statistics: Output[Metrics],
    validation_summary: Output[Markdown],
) -> None:
    """Validate the dataset at ``data_uri`` and write train/eval/test examples; invalid data fails the step."""
    import json
    from pathlib import Path

    from components.step_run import step_run

    with step_run("example_gen", config_yaml, tracking_uri, parent_run_id, status_dir) as step:
        from recflow.examplegen import run_example_gen

        result = run_example_gen(Path(data_uri), Path(examples.path), step.config.example_gen,
                                 step.config.validation)
        stats = json.loads((Path(examples.path) / "stats.json").read_text(encoding="utf-8"))
        for name, value in step.log_metrics(stats).items():
            statistics.log_metric(name, value)
        summary = result.format() if hasattr(result, "format") else json.dumps(stats, indent=2)
        Path(validation_summary.path).write_text(f"# ExampleGen\n\n```\n{summary}\n```\n", encoding="utf-8")


def build(image: str) -> python_component.PythonComponent:
    """The ExampleGen component running in ``image``."""
    return dsl.component(example_gen, base_image=image, install_kfp_package=False)
