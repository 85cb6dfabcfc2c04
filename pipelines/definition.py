"""The training DAG, defined once and run by every runner (local, Kubeflow run, Kubeflow recurring run).

    example_gen -> transform -> [tuner ->] tfrs_trainer -> agents_trainer -> evaluator -(push)-> pusher

The tuner (Optuna hyperparameter search, :mod:`recflow.tuning`) is in the DAG only when ``tuning.enabled`` is
true when the pipeline is built (a compile-time switch, so the default DAG keeps its six tasks); it returns the
config with the tuned trainer section, and the TFRS trainer runs with that config.

The pusher runs only inside ``dsl.If(evaluator.Output == True)``: the Evaluator says push for a blessed
candidate, or, when the candidate lost and the model store has no champion yet, for the run's best baseline
(``release.baseline_fallback``, :mod:`recflow.servable_baseline`); otherwise (or when the evaluation fails)
nothing is pushed. The components' images and the tasks' placement come from the ``pipeline`` config section when the
pipeline is built, so the same definition yields the local DAG and the GPU-placed Kubeflow DAG.
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's real annotations.

from kfp import dsl
from kfp.dsl import base_component

from components import agents_trainer, evaluator, example_gen, pusher, tfrs_trainer, transform, tuner
from pipelines.placement import apply_placement
from recflow.pipeline_config import PipelineConfig
from recflow.tuning import TuningConfig

PIPELINE_PARAMETERS: tuple[str, ...] = (
    "data_uri",
    "model_store",
    "config_yaml",
    "tracking_uri",
    "parent_run_id",
    "status_dir",
)
"""The run-time parameters of the pipeline (what ``recflow pipeline run/submit/schedule`` fill in)."""


def build_pipeline(config: PipelineConfig, tuning: TuningConfig | None = None) -> base_component.BaseComponent:
    """Build the training pipeline for ``config`` (images, placement, caching, name), with the tuner step when
    ``tuning`` is given and enabled.

    Parameters of the returned pipeline: ``data_uri`` (the raw dataset: a directory, or gs:// on Kubeflow),
    ``model_store`` (where blessed bundles are pushed), ``config_yaml`` (the whole effective recflow config),
    ``tracking_uri`` and ``parent_run_id`` (the MLflow parent run; empty strings disable tracking) and
    ``status_dir`` (a local directory for per-step status records; empty on Kubeflow).
    """
    steps = {
        "example_gen": example_gen.build(config.image_for("example_gen")),
        "transform": transform.build(config.image_for("transform")),
        "tfrs_trainer": tfrs_trainer.build(config.image_for("tfrs_trainer")),
        "agents_trainer": agents_trainer.build(config.image_for("agents_trainer")),
        "evaluator": evaluator.build(config.image_for("evaluator")),
        "pusher": pusher.build(config.image_for("pusher")),
    }
    with_tuner = tuning is not None and tuning.enabled
    if with_tuner:
        # The tuner trains the same models as the TFRS trainer: same image, resources and GPU placement.
        steps["tuner"] = tuner.build(config.image_for("tfrs_trainer"))
    beam_args = list(config.beam_pipeline_args)

    @dsl.pipeline(name=config.name, description="recflow training: examples, features, TFRS + TF-Agents models, "
                  "evaluation against baselines and champion, push when blessed.",
                  pipeline_root=config.pipeline_root or None)
    def training_pipeline(
        data_uri: str,
        model_store: str,
        config_yaml: str,
        tracking_uri: str = "",
        parent_run_id: str = "",
        status_dir: str = "",
    ) -> None:
        common = {"config_yaml": config_yaml, "tracking_uri": tracking_uri, "parent_run_id": parent_run_id,
                  "status_dir": status_dir}
        gen = apply_placement(steps["example_gen"](data_uri=data_uri, **common), "example_gen", config)
        examples = gen.outputs["examples"]
        tft = apply_placement(steps["transform"](examples=examples, beam_pipeline_args=beam_args, **common),
                              "transform", config)
        trainer_common = dict(common)
        if with_tuner:
            search = apply_placement(
                steps["tuner"](examples=examples, transformed=tft.outputs["transformed"], **common),
                "tfrs_trainer", config)
            search.set_display_name("tuner")
            trainer_common["config_yaml"] = search.outputs["Output"]
        tfrs = apply_placement(
            steps["tfrs_trainer"](examples=examples, transformed=tft.outputs["transformed"], **trainer_common),
            "tfrs_trainer", config)
        agents = apply_placement(
            steps["agents_trainer"](examples=examples, model=tfrs.outputs["model"], **common),
            "agents_trainer", config)
        evaluation = apply_placement(
            steps["evaluator"](examples=examples, model=tfrs.outputs["model"], policy=agents.outputs["policy"],
                               model_store=model_store, **common),
            "evaluator", config)
        with dsl.If(evaluation.outputs["Output"] == True, name="push"):
            apply_placement(
                steps["pusher"](transformed=tft.outputs["transformed"], model=tfrs.outputs["model"],
                                policy=agents.outputs["policy"], evaluation=evaluation.outputs["evaluation"],
                                model_store=model_store, **common),
                "pusher", config)

    return training_pipeline
