"""Where and how the training DAG's steps run: images, resources, GPU placement, caching, pipeline root.

This is the ``pipeline`` section of the core config (``RecflowConfig.pipeline``): it lives in the core library
because the pipeline imports the core, never the other way round. Every field has a default, so the DAG compiles
and runs with no config file at all.

GPU placement follows GKE's own conventions, so the infrastructure needs no custom labels or taints:

* GKE labels every node of a GPU node pool ``cloud.google.com/gke-accelerator=<gpu model>`` (for example
  ``nvidia-tesla-t4``); the trainers select that label.
* GKE taints GPU node pools ``nvidia.com/gpu=present:NoSchedule``; the trainers tolerate exactly that taint, and
  no other step does, so CPU work never lands on (and blocks) the expensive nodes.
* Kubeflow Pipelines turns the task's accelerator *type* into the name of the container's resource limit, so on
  Kubeflow it must be the device plugin's resource name ``nvidia.com/gpu`` (Vertex AI Pipelines would want
  ``NVIDIA_TESLA_T4`` instead); the GPU *model* is chosen by the node selector.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

STEP_ORDER: tuple[str, ...] = (
    "example_gen",
    "transform",
    "tfrs_trainer",
    "agents_trainer",
    "evaluator",
    "pusher",
)
"""The six steps of the training DAG in dependency order (numbers the ``[i/6]`` progress lines)."""
STEP_NAMES = STEP_ORDER


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepResources(_Section):
    """Kubernetes CPU/memory requests (and optional limits) of one step's pod."""

    cpu: str = Field("1", description="CPU request, Kubernetes quantity (e.g. '2' or '500m').")
    memory: str = Field("4G", description="Memory request, Kubernetes quantity (e.g. '8G').")
    cpu_limit: str | None = Field(None, description="CPU limit (null: none).")
    memory_limit: str | None = Field(None, description="Memory limit (null: none).")


class Toleration(_Section):
    """A Kubernetes toleration (the GPU node pool's taint)."""

    key: str = Field("nvidia.com/gpu", description="Taint key to tolerate.")
    operator: str = Field("Equal", description="'Equal' or 'Exists'.")
    value: str | None = Field("present", description="Taint value (null with operator 'Exists').")
    effect: str = Field("NoSchedule", description="Taint effect: NoSchedule, PreferNoSchedule or NoExecute.")


class GpuPlacement(_Section):
    """How the GPU steps are placed on the GPU node pool."""

    accelerator_type: str = Field(
        "nvidia.com/gpu",
        description="Accelerator type of the KFP task; Kubeflow uses it as the resource-limit name.",
    )
    count: int = Field(1, ge=1, description="GPUs per GPU step.")
    gpu_model: str = Field("nvidia-tesla-t4", description="GPU model, the value of the node selector label.")
    node_selector_label: str = Field(
        "cloud.google.com/gke-accelerator", description="Node label that names the GPU model (set by GKE)."
    )
    toleration: Toleration = Field(default_factory=Toleration, description="Toleration of the GPU pool's taint.")

    def node_selector(self) -> dict[str, str]:
        """The node selector of a GPU step: ``{label: gpu_model}``."""
        return {self.node_selector_label: self.gpu_model}


def _default_resources() -> dict[str, StepResources]:
    return {
        "example_gen": StepResources(cpu="1", memory="4G"),
        "transform": StepResources(cpu="2", memory="8G"),
        "tfrs_trainer": StepResources(cpu="4", memory="16G"),
        "agents_trainer": StepResources(cpu="4", memory="16G"),
        "evaluator": StepResources(cpu="2", memory="8G"),
        "pusher": StepResources(cpu="500m", memory="1G"),
    }


class PipelineConfig(_Section):
    """The ``pipeline`` section: how the training DAG is built, placed and run."""

    name: str = Field("recflow-training", description="Pipeline name (KFP pipeline and run names).")
    image: str = Field(
        "ghcr.io/recflow/recflow:0.1.0-cpu", description="Container image of the CPU steps (infra/docker)."
    )
    gpu_image: str = Field(
        "ghcr.io/recflow/recflow:0.1.0-gpu", description="Container image of the GPU steps (infra/docker)."
    )
    gpu_steps: tuple[str, ...] = Field(
        ("tfrs_trainer", "agents_trainer"), description="Steps that get a GPU, the GPU image and the toleration."
    )
    gpu: GpuPlacement = Field(default_factory=GpuPlacement, description="GPU placement of the GPU steps.")
    resources: dict[str, StepResources] = Field(
        default_factory=_default_resources,
        description="CPU/memory per step; steps left out get the defaults of StepResources.",
    )
    caching: bool = Field(True, description="Let Kubeflow reuse a step's outputs when its inputs are unchanged.")
    pipeline_root: str = Field(
        "",
        description="Where step outputs go: a gs:// URI on Kubeflow ('' = the server's default); "
        "for local runs '' means DATA_DIR/pipeline-runs.",
    )
    beam_pipeline_args: tuple[str, ...] = Field(
        (), description="Extra Apache Beam options for Transform (e.g. --runner=DataflowRunner ...)."
    )
    experiment: str = Field("recflow", description="Kubeflow experiment that submitted and scheduled runs join.")

    @model_validator(mode="after")
    def _known_steps(self) -> PipelineConfig:
        for field_name, steps in (("gpu_steps", self.gpu_steps), ("resources", tuple(self.resources))):
            unknown = [s for s in steps if s not in STEP_NAMES]
            if unknown:
                raise ValueError(
                    f"{field_name}: unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEP_NAMES)}"
                )
        return self

    def resources_for(self, step: str) -> StepResources:
        """The resources of ``step`` (the StepResources defaults when the config leaves it out)."""
        return self.resources.get(step, StepResources())

    def image_for(self, step: str) -> str:
        """The container image of ``step``: the GPU image for GPU steps, else the CPU image."""
        return self.gpu_image if step in self.gpu_steps else self.image
