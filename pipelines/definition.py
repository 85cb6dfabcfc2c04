"""The training DAG, defined once and run by every runner (local, Kubeflow run, Kubeflow recurring run).

    example_gen -> transform -> [tuner ->] tfrs_trainer -> agents_trainer -> evaluator -(push)-> pusher
    (all inside an exit handler: close_run runs last, whatever happened, and closes the MLflow run)

**Typed parameters.** Each step takes the config sections it reads as typed ``dict`` parameters
(``trainer_config``, ``evaluator_config``, ...; :data:`STEP_SECTIONS`), and the pipeline has one parameter per
section whose default is that section of the config the pipeline was built from. So the compiled YAML uploads and
runs from the KFP UI as is (every parameter has a default), and a change to a section a step does not read (say
``serving``) leaves that step's inputs -- and so its KFP cache key -- unchanged.

**Tracking.** With ``tracking_uri`` set, every task gets the orchestrator's run id (``run_key``:
``dsl.PIPELINE_JOB_ID_PLACEHOLDER``, resolved by Kubeflow and by ``kfp.local`` alike): ExampleGen opens the
MLflow parent run for it (or joins it on a retry), every step nests its own run under it, and the exit handler
closes it with the final status (:mod:`recflow.tracking.orchestrated`). Nothing outside the DAG holds the run,
so a scheduled run on the cluster is tracked exactly like a local one. The run id is an input of every step:
a tracked run's steps therefore run (and log) every time instead of being served from KFP's cache.

The tuner (Optuna hyperparameter search, :mod:`recflow.tuning`) is in the DAG only when ``tuning.enabled`` is
true when the pipeline is built (a compile-time switch, so the default DAG keeps its six tasks); it returns the
tuned trainer section, and the TFRS trainer runs with it.

The pusher runs only inside ``dsl.If(evaluator.Output == True)``: the Evaluator says push for a blessed
candidate, or, when the candidate lost and the model store has no champion yet, for the run's best baseline
(``release.baseline_fallback``, :mod:`recflow.servable_baseline`); otherwise (or when the evaluation fails)
nothing is pushed. The blessing (evaluator) and the pushed model (pusher) are also KFP artifacts with metadata. The
components' images, the tasks' placement and retries come from the ``pipeline`` config section when the pipeline
is built, so the same definition yields the local DAG and the GPU-placed Kubeflow DAG.
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's real annotations.

from typing import Any

from kfp import dsl
from kfp.dsl import base_component

from components import agents_trainer, close_run, evaluator, example_gen, pusher, tfrs_trainer, transform, tuner
from pipelines.placement import apply_placement
from recflow.config import RecflowConfig
from recflow.pipeline_config import PipelineConfig
from recflow.tuning import TuningConfig

#: The config sections each step reads (its typed ``<section>_config`` parameters; every step also takes
#: ``tracking``). The DAG's parameters are the union, one per section.
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "example_gen": ("example_gen", "validation"),
    "transform": ("transform",),
    "tuner": ("trainer", "tuning"),
    "tfrs_trainer": ("trainer",),
    "agents_trainer": ("policy",),
    "evaluator": ("evaluator", "policy", "release"),
    "pusher": ("model_store", "release"),
}
SECTIONS: tuple[str, ...] = (
    "example_gen", "validation", "transform", "trainer", "tuning", "policy", "evaluator", "model_store", "release",
    "tracking",
)

PIPELINE_PARAMETERS: tuple[str, ...] = (
    "data_uri",
    "model_store",
    "tracking_uri",
    "run_name",
    "status_dir",
    *(f"{s}_config" for s in SECTIONS),
)
"""The run-time parameters of the pipeline (what ``recflow pipeline run/submit/schedule`` fill in)."""

#: Steps whose failures are often transient (remote storage, the tracking server, the registry): retried by the
#: orchestrator, with exponential back-off. The training steps are not: a second try costs as much as the first
#: and their failures are rarely transient.
RETRIES: dict[str, int] = {"example_gen": 2, "pusher": 3, "close_run": 3}
RETRY_BACKOFF = "30s"

#: Images that are not real: the shipped defaults name an image that is built from infra/docker but not
#: published, so a cluster run needs the user's own registry path.
PLACEHOLDER_IMAGES: tuple[str, ...] = (PipelineConfig().image, PipelineConfig().gpu_image)


def image_warnings(config: PipelineConfig) -> list[str]:
    """One warning per configured image that is a placeholder (the shipped default, or a name that says so)."""
    out = []
    for key in ("image", "gpu_image"):
        image = str(getattr(config, key))
        if image in PLACEHOLDER_IMAGES or any(w in image.lower() for w in ("placeholder", "changeme", "<", "example")):
            flavour = "gpu" if key == "gpu_image" else "cpu"
            out.append(f"pipeline.{key} is {image!r}, a placeholder: build it (docker build -f "
                       f"infra/docker/Dockerfile.{flavour} -t REGISTRY/recflow:TAG .), push it and set "
                       f"pipeline.{key}; the cluster cannot pull it as is")
    return out


def section_defaults(config: RecflowConfig) -> dict[str, dict[str, Any]]:
    """Each section a step reads, as the dict that is its pipeline parameter's default.

    KFP's struct parameters cannot hold a null, so a null value travels as the string ``"null"`` (what the KFP
    UI shows, and what YAML would write); the step turns it back into None
    (:class:`components.step_run.StepConfig`).
    """
    from components.step_run import encode_nulls

    return {s: encode_nulls(getattr(config, s).model_dump(mode="json")) for s in SECTIONS}


def _as_recflow_config(config: RecflowConfig | PipelineConfig, tuning: TuningConfig | None) -> RecflowConfig:
    if isinstance(config, RecflowConfig):
        return config if tuning is None else config.model_copy(update={"tuning": tuning})
    base = RecflowConfig()
    return base.model_copy(update={"pipeline": config, **({"tuning": tuning} if tuning is not None else {})})


def _retry(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    if RETRIES.get(step):
        task.set_retry(num_retries=RETRIES[step], backoff_duration=RETRY_BACKOFF, backoff_factor=2.0)
    return task


def build_pipeline(config: RecflowConfig | PipelineConfig,
                   tuning: TuningConfig | None = None) -> base_component.BaseComponent:
    """Build the training pipeline for ``config`` (the whole config: sections become parameter defaults; or only
    its ``pipeline`` section, the other sections then defaulting), with the tuner step when tuning is enabled.

    Parameters of the returned pipeline: ``data_uri`` (the raw dataset: a directory, or gs:// on Kubeflow),
    ``model_store`` (where blessed bundles are pushed), ``tracking_uri`` (the MLflow server; empty disables
    tracking), ``run_name`` (the MLflow run's name; empty: ``recflow-<time>``), ``status_dir`` (a local
    directory for per-step status records; empty on Kubeflow) and ``<section>_config`` for each of
    :data:`SECTIONS`.
    """
    full = _as_recflow_config(config, tuning)
    pipeline_config = full.pipeline
    steps = {name: module.build(pipeline_config.image_for(name)) for name, module in (
        ("example_gen", example_gen), ("transform", transform), ("tfrs_trainer", tfrs_trainer),
        ("agents_trainer", agents_trainer), ("evaluator", evaluator), ("pusher", pusher))}
    steps["close_run"] = close_run.build(pipeline_config.image)
    with_tuner = full.tuning.enabled
    if with_tuner:
        # The tuner trains the same models as the TFRS trainer: same image, resources and GPU placement.
        steps["tuner"] = tuner.build(pipeline_config.image_for("tfrs_trainer"))
    beam_args = list(pipeline_config.beam_pipeline_args)
    d = section_defaults(full)
    store_default = full.model_store.path or ""
    uri_default = full.tracking.tracking_uri or ""

    @dsl.pipeline(name=pipeline_config.name, description="recflow training: examples, features, TFRS + TF-Agents "
                  "models, evaluation against baselines and champion, push when blessed; tracked in MLflow.",
                  pipeline_root=pipeline_config.pipeline_root or None)
    def training_pipeline(
        data_uri: str = "",
        model_store: str = store_default,
        tracking_uri: str = uri_default,
        run_name: str = "",
        status_dir: str = "",
        example_gen_config: dict = d["example_gen"],
        validation_config: dict = d["validation"],
        transform_config: dict = d["transform"],
        trainer_config: dict = d["trainer"],
        tuning_config: dict = d["tuning"],
        policy_config: dict = d["policy"],
        evaluator_config: dict = d["evaluator"],
        model_store_config: dict = d["model_store"],
        release_config: dict = d["release"],
        tracking_config: dict = d["tracking"],
    ) -> None:
        common = {"tracking_config": tracking_config, "tracking_uri": tracking_uri,
                  "run_key": dsl.PIPELINE_JOB_ID_PLACEHOLDER, "run_name": run_name}
        exit_task = steps["close_run"](**common)
        apply_placement(_retry(exit_task, "close_run"), "close_run", pipeline_config)
        exit_task.set_caching_options(False)
        with dsl.ExitHandler(exit_task, name="tracked-run"):
            _training_dag(steps, pipeline_config, with_tuner, beam_args, data_uri, model_store,
                          {**common, "status_dir": status_dir}, locals())

    return training_pipeline


def _training_dag(steps: dict[str, Any], config: PipelineConfig, with_tuner: bool, beam_args: list[str],
                  data_uri: Any, model_store: Any, common: dict[str, Any], params: dict[str, Any]) -> None:
    """The six (or seven) tasks, wired; ``params`` holds the pipeline's ``<section>_config`` channels."""

    def place(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
        return apply_placement(_retry(task, step), step, config)

    def sections(step: str) -> dict[str, Any]:
        return {f"{s}_config": params[f"{s}_config"] for s in STEP_SECTIONS[step]}

    gen = place(steps["example_gen"](data_uri=data_uri, **sections("example_gen"), **common), "example_gen")
    examples = gen.outputs["examples"]
    tft = place(steps["transform"](examples=examples, beam_pipeline_args=beam_args, **sections("transform"),
                                   **common), "transform")
    trainer_sections = sections("tfrs_trainer")
    if with_tuner:
        search = place(steps["tuner"](examples=examples, transformed=tft.outputs["transformed"],
                                      **sections("tuner"), **common), "tfrs_trainer")
        search.set_display_name("tuner")
        trainer_sections["trainer_config"] = search.outputs["Output"]
    tfrs = place(steps["tfrs_trainer"](examples=examples, transformed=tft.outputs["transformed"],
                                       **trainer_sections, **common), "tfrs_trainer")
    agents = place(steps["agents_trainer"](examples=examples, model=tfrs.outputs["model"],
                                           **sections("agents_trainer"), **common), "agents_trainer")
    evaluation = place(steps["evaluator"](examples=examples, model=tfrs.outputs["model"],
                                          policy=agents.outputs["policy"], model_store=model_store,
                                          **sections("evaluator"), **common), "evaluator")
    with dsl.If(evaluation.outputs["Output"] == True, name="push"):  # noqa: E712  (a KFP condition)
        place(steps["pusher"](transformed=tft.outputs["transformed"], model=tfrs.outputs["model"],
                              policy=agents.outputs["policy"], evaluation=evaluation.outputs["evaluation"],
                              blessing=evaluation.outputs["blessing"], model_store=model_store,
                              **sections("pusher"), **common), "pusher")
