"""ExampleGen component: raw dataset -> validated, time-split examples (+ statistics, validation summary).

It takes no per-run input (its cache key is its data's content version, from the resolver, and its config
sections), so KFP reuses it for unchanged data and config; what it wants tracked goes into its ``record`` output,
which the tracking step after it logs (and that step opens the pipeline's MLflow run).
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Output, python_component


def example_gen(
    data_uri: str,
    data_version: str,
    example_gen_config: dict,
    validation_config: dict,
    transform_config: dict,
    beam_pipeline_args: list,
    examples: Output[Dataset],
    statistics: Output[Metrics],
    validation_summary: Output[Markdown],
    record: Output[Artifact],
) -> None:
    """Validate the dataset at ``data_uri`` and write train/eval/test examples; invalid data fails the step.

    ``data_version`` (the resolver's value for what ``data_uri`` holds) is not read: it is there so that the
    step's cache key changes when the data does. ``transform_config`` and ``beam_pipeline_args``: the Beam
    runner of ``example_gen.engine: beam`` (the transform section's runner settings, one place for both data
    steps, and the pipeline's ``beam_pipeline_args``); the pandas engine reads neither."""
    import json
    from pathlib import Path

    from components.step_run import step_run

    sections = {"example_gen": example_gen_config, "validation": validation_config, "transform": transform_config}
    with step_run("example_gen", sections, record=record.path) as step:
        from recflow.errors import DataError
        from recflow.examplegen import run_example_gen
        from recflow.examplegen_beam import BeamSettings

        if not data_uri.strip():
            raise DataError("pipeline parameter data_uri is empty: set it to the dataset (a directory or gs://...)")
        beam = BeamSettings.from_transform(step.config.transform, [str(a) for a in beam_pipeline_args])
        result = run_example_gen(Path(data_uri), Path(examples.path), step.config.example_gen,
                                 step.config.validation, beam=beam)
        stats = json.loads((Path(examples.path) / "stats.json").read_text(encoding="utf-8"))
        for name, value in step.log_metrics(stats).items():
            statistics.log_metric(name, value)
        # The Metrics artifact's own file too: KFP's local cache treats an output with no file as missing.
        Path(statistics.path).write_text(json.dumps(statistics.metadata, indent=2), encoding="utf-8")
        summary = result.format() if hasattr(result, "format") else json.dumps(stats, indent=2)
        Path(validation_summary.path).write_text(f"# ExampleGen\n\n```\n{summary}\n```\n", encoding="utf-8")
        step.log_artifact(Path(examples.path) / "stats.json", "example_gen")
        step.log_artifact(validation_summary.path, "example_gen")
        step.set_tags({"recflow.data_version": data_version})


def build(image: str) -> python_component.PythonComponent:
    """The ExampleGen component running in ``image``."""
    return dsl.component(example_gen, base_image=image, install_kfp_package=False)
