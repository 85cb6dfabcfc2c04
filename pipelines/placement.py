"""Kubernetes placement of the DAG's tasks, applied in this one place from the ``pipeline`` config section.

The DAG definition (pipelines/definition.py) says only what runs after what; this module adds where it runs:
CPU/memory requests on every step, and on the GPU steps an accelerator, the GPU node pool's node selector and
the toleration of its taint (via kfp-kubernetes, which writes them into the compiled YAML's
``platforms.kubernetes`` section). Caching is set here too. The local runner ignores all of it.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from recflow.pipeline_config import PipelineConfig


def apply_placement(task: PipelineTask, step: str, config: PipelineConfig) -> PipelineTask:
    """Name ``task`` after ``step`` and give it its resources, GPU placement and caching; returns the task."""
    task.set_display_name(step)
    task.set_caching_options(config.caching)
    resources = config.resources_for(step)
    task.set_cpu_request(resources.cpu).set_memory_request(resources.memory)
    if resources.cpu_limit:
        task.set_cpu_limit(resources.cpu_limit)
    if resources.memory_limit:
        task.set_memory_limit(resources.memory_limit)
    if step in config.gpu_steps:
        gpu = config.gpu
        task.set_accelerator_type(gpu.accelerator_type).set_accelerator_limit(gpu.count)
        for label, value in gpu.node_selector().items():
            kubernetes.add_node_selector(task, label_key=label, label_value=value)
        tol = gpu.toleration
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    return task
