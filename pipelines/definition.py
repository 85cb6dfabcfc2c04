"""The training DAG, defined once and run by every runner (local, Kubeflow run, Kubeflow recurring run).

    resolver -> example_gen -> transform -> [tuner ->] tfrs_trainer -> agents_trainer -> evaluator -(push)-> pusher
    each heavy step -> its track task (never cached; they run one after the other, in the DAG's order)
    (all inside an exit handler: close_run runs last, whatever happened, and closes the MLflow run)

**Typed parameters.** Each step takes the config sections it reads as typed ``dict`` parameters
(``trainer_config``, ``evaluator_config``, ...; :data:`STEP_SECTIONS`), and the pipeline has one parameter per
section whose default is that section of the config the pipeline was built from. So the compiled YAML uploads and
runs from the KFP UI as is (every parameter has a default), and a change to a section a step does not read (say
``serving``) leaves that step's inputs -- and so its KFP cache key -- unchanged.

**Caching.** The heavy steps (:data:`CACHED_STEPS`: ExampleGen, Transform, tuner, the trainers, the Evaluator)
take no per-run input: no run id, run name, time or status directory. What lies behind a path is made a value
by the first task, the never-cached resolver (:mod:`recflow.pipeline_inputs`): ExampleGen takes the dataset's
content version, the Evaluator the champion's version. So a run with the same data, champion and config sections
as an earlier one is served from KFP's cache step by step, and any change moves exactly the steps it reaches.
The Pusher is never cached (it changes the store and the registry).

**Tracking.** Each heavy step writes what it wants tracked into its ``record`` output artifact
(:mod:`recflow.step_record`); a light, never-cached ``track`` task after it -- the only tasks that take the
orchestrator's run id (``run_key``: ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``, resolved by Kubeflow and by
``kfp.local`` alike) -- logs it as the step's nested MLflow run. The first one opens the MLflow parent run for the
key (or joins it on a retry), the others join it, the Pusher nests its own run live, and the exit handler closes
the parent with the final status (:mod:`recflow.tracking.orchestrated`). A step served from the cache still gets
its nested run, tagged ``recflow.cached=true`` with the pipeline run it ran in. Nothing outside the DAG holds the
run, so a scheduled run on the cluster is tracked exactly like a local one.

The tuner (Optuna hyperparameter search, :mod:`recflow.tuning`) is in the DAG only when ``tuning.enabled`` is
true when the pipeline is built (a compile-time switch, so the default DAG keeps its six steps); it returns the
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

from components import (
    agents_trainer,
    close_run,
    evaluator,
    example_gen,
    pusher,
    resolver,
    tfrs_trainer,
    track,
    transform,
    tuner,
)
from pipelines.placement import apply_placement
from recflow.config import RecflowConfig
from recflow.pipeline_config import PipelineConfig
from recflow.tuning import TuningConfig

#: The config sections each step reads (its typed ``<section>_config`` parameters; the track tasks, the pusher
#: and the exit handler also take ``tracking``). The DAG's parameters are the union, one per section.
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "example_gen": ("example_gen", "validation", "transform"),  # transform: the Beam runner of engine beam
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

#: The steps KFP may serve from its cache: they take no per-run input (tests/test_pipeline_compile.py checks
#: that their cache keys do not depend on the run id or run name).
CACHED_STEPS: tuple[str, ...] = ("example_gen", "transform", "tuner", "tfrs_trainer", "agents_trainer", "evaluator")

PIPELINE_PARAMETERS: tuple[str, ...] = (
    "data_uri",
    "model_store",
    "tracking_uri",
    "run_name",
    *(f"{s}_config" for s in SECTIONS),
)
"""The run-time parameters of the pipeline (what ``recflow pipeline run/submit/schedule`` fill in)."""

#: Tasks whose failures are often transient (remote storage, the tracking server, the registry): retried by the
#: orchestrator, with exponential back-off. The training steps are not: a second try costs as much as the first
#: and their failures are rarely transient.
RETRIES: dict[str, int] = {"resolver": 2, "example_gen": 2, "track": 2, "pusher": 3, "close_run": 3}
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


def _uncached(task: dsl.PipelineTask, step: str, config: PipelineConfig) -> dsl.PipelineTask:
    """Place a light task (resolver, track, pusher, close_run) like the others, retried, and never cached."""
    apply_placement(_retry(task, step), step, config)
    task.set_caching_options(False)
    return task


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
    tracking), ``run_name`` (the MLflow run's name; empty: ``recflow-<time>``) and ``<section>_config`` for each
    of :data:`SECTIONS`.
    """
    full = _as_recflow_config(config, tuning)
    pipeline_config = full.pipeline
    steps = {name: module.build(pipeline_config.image_for(name)) for name, module in (
        ("example_gen", example_gen), ("transform", transform), ("tfrs_trainer", tfrs_trainer),
        ("agents_trainer", agents_trainer), ("evaluator", evaluator), ("pusher", pusher))}
    for name, module in (("close_run", close_run), ("track", track), ("resolver", resolver)):
        steps[name] = module.build(pipeline_config.image)
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
        exit_task = _uncached(steps["close_run"](**common), "close_run", pipeline_config)
        with dsl.ExitHandler(exit_task, name="tracked-run"):
            _training_dag(steps, pipeline_config, with_tuner, beam_args, data_uri, model_store, common, locals())

    return training_pipeline


def _training_dag(steps: dict[str, Any], config: PipelineConfig, with_tuner: bool, beam_args: list[str],
                  data_uri: Any, model_store: Any, common: dict[str, Any], params: dict[str, Any]) -> None:
    """The resolver, the six (or seven) steps and their track tasks, wired; ``params`` holds the pipeline's
    ``<section>_config`` channels, ``common`` the tracking inputs (section, URI, run key, run name)."""

    def place(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
        return apply_placement(_retry(task, step), step, config)

    def sections(step: str) -> dict[str, Any]:
        return {f"{s}_config": params[f"{s}_config"] for s in STEP_SECTIONS[step]}

    tracked: list[dsl.PipelineTask] = []

    def tracked_by(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
        """The heavy ``task``'s track task, after the previous one (the first opens the MLflow run)."""
        first = not tracked
        logger = steps["track"](record=task.outputs["record"], data_uri=data_uri if first else "", opens=first,
                                **common)
        _uncached(logger, "track", config).set_display_name(f"track-{step}")
        if tracked:
            logger.after(tracked[-1])
        tracked.append(logger)
        return task

    resolved = _uncached(steps["resolver"](data_uri=data_uri, model_store=model_store), "resolver", config)
    gen = tracked_by(place(steps["example_gen"](data_uri=data_uri, data_version=resolved.outputs["data_version"],
                                                beam_pipeline_args=beam_args, **sections("example_gen")),
                           "example_gen"), "example_gen")
    examples = gen.outputs["examples"]
    tft = tracked_by(place(steps["transform"](examples=examples, beam_pipeline_args=beam_args,
                                              **sections("transform")), "transform"), "transform")
    trainer_sections = sections("tfrs_trainer")
    if with_tuner:
        search = place(steps["tuner"](examples=examples, transformed=tft.outputs["transformed"],
                                      **sections("tuner")), "tfrs_trainer")
        tracked_by(search.set_display_name("tuner"), "tuner")
        trainer_sections["trainer_config"] = search.outputs["Output"]
    tfrs = tracked_by(place(steps["tfrs_trainer"](examples=examples, transformed=tft.outputs["transformed"],
                                                  **trainer_sections), "tfrs_trainer"), "tfrs_trainer")
    agents = tracked_by(place(steps["agents_trainer"](examples=examples, model=tfrs.outputs["model"],
                                                      **sections("agents_trainer")), "agents_trainer"),
                        "agents_trainer")
    evaluation = tracked_by(place(steps["evaluator"](
        examples=examples, model=tfrs.outputs["model"], policy=agents.outputs["policy"], model_store=model_store,
        champion=resolved.outputs["champion"], **sections("evaluator")), "evaluator"), "evaluator")
    with dsl.If(evaluation.outputs["Output"] == True, name="push"):  # noqa: E712  (a KFP condition)
        push = steps["pusher"](transformed=tft.outputs["transformed"], model=tfrs.outputs["model"],
                               policy=agents.outputs["policy"], evaluation=evaluation.outputs["evaluation"],
                               blessing=evaluation.outputs["blessing"], model_store=model_store,
                               **sections("pusher"), **common)
        _uncached(push, "pusher", config).after(tracked[-1])  # its run nests after the evaluator's
