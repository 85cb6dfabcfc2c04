"""The training DAG compiles to KFP IR YAML with its six tasks, their order, placement and caching."""

from pathlib import Path

import pytest
import yaml

from recflow.pipeline_config import PipelineConfig
from pipelines.package import compile_pipeline
from recflow.cli import main
from recflow.errors import ConfigError

TASKS = {"example-gen", "transform", "tfrs-trainer", "agents-trainer", "evaluator", "pusher"}
GPU_TASKS = {"tfrs-trainer", "agents-trainer"}


def load_package(path: Path) -> dict:
    """The compiled package: the pipeline spec, plus ``platforms`` from the platform-spec document."""
    spec, *platform = yaml.safe_load_all(path.read_text())
    for doc in platform:
        spec.update(doc)
    return spec


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["pipeline", "compile", "--out", str(out)]) == 0
    return load_package(out)


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the root DAG and of its sub-DAGs (the If branch), by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def _executor(spec: dict, tasks: dict, name: str) -> dict:
    comp = spec["components"][tasks[name]["componentRef"]["name"]]
    return spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]


def test_six_tasks_in_dependency_order(compiled):
    tasks = _all_tasks(compiled)
    assert TASKS <= set(tasks)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["example-gen"] == set()
    assert deps["transform"] == {"example-gen"}
    assert "transform" in deps["tfrs-trainer"]
    assert "tfrs-trainer" in deps["agents-trainer"]
    assert {"tfrs-trainer", "agents-trainer"} <= deps["evaluator"]
    # The pusher lives in the If branch, which waits for the evaluator and is gated on its verdict.
    branch_task = next(t for t in tasks.values() if "pusher" in
                       compiled["components"][t["componentRef"]["name"]].get("dag", {}).get("tasks", {}))
    assert "evaluator" in branch_task["dependentTasks"]
    condition = branch_task["triggerPolicy"]["condition"]
    assert "pipelinechannel--evaluator-Output" in condition and "true" in condition


def test_trainers_get_gpu_node_selector_and_toleration(compiled):
    tasks = _all_tasks(compiled)
    k8s = compiled["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = PipelineConfig().gpu
    for name in TASKS:
        container = _executor(compiled, tasks, name)
        label = compiled["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]
        if name in GPU_TASKS:
            acc = container["resources"]["accelerator"]
            assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
            assert k8s[label]["nodeSelector"]["labels"] == {gpu.node_selector_label: gpu.gpu_model}
            assert k8s[label]["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
            assert container["image"] == PipelineConfig().gpu_image
        else:
            assert "accelerator" not in container.get("resources", {})
            assert label not in k8s  # CPU steps never tolerate the GPU pool's taint
            assert container["image"] == PipelineConfig().image
        assert container["resources"]["resourceCpuRequest"] == PipelineConfig().resources_for(
            name.replace("-", "_")).cpu
        assert container["resources"]["resourceMemoryRequest"]


def test_caching_on_and_no_runtime_pip_install(compiled):
    tasks = _all_tasks(compiled)
    for name in TASKS:
        assert tasks[name]["cachingOptions"]["enableCache"] is True
        command = " ".join(_executor(compiled, tasks, name)["command"])
        assert "pip install" not in command  # the image has recflow and kfp; nothing is installed at run time


def test_placement_and_images_come_from_config(tmp_path: Path):
    config = PipelineConfig.model_validate({
        "image": "registry.example/recflow:cpu", "gpu_image": "registry.example/recflow:gpu",
        "caching": False, "gpu": {"count": 2, "gpu_model": "nvidia-l4"},
        "resources": {"pusher": {"cpu": "250m", "memory": "512M", "memory_limit": "1G"}},
    })
    spec = load_package(compile_pipeline(config, tmp_path / "p.yaml"))
    tasks = _all_tasks(spec)
    assert _executor(spec, tasks, "tfrs-trainer")["image"] == "registry.example/recflow:gpu"
    assert _executor(spec, tasks, "transform")["image"] == "registry.example/recflow:cpu"
    assert _executor(spec, tasks, "agents-trainer")["resources"]["accelerator"]["resourceCount"] == "2"
    pusher = _executor(spec, tasks, "pusher")["resources"]
    assert pusher["resourceCpuRequest"] == "250m" and pusher["resourceMemoryLimit"] == "1G"
    assert all(tasks[n]["cachingOptions"].get("enableCache", False) is False for n in TASKS)
    labels = [e["nodeSelector"]["labels"] for e in spec["platforms"]["kubernetes"]["deploymentSpec"]
              ["executors"].values()]
    assert labels == [{"cloud.google.com/gke-accelerator": "nvidia-l4"}] * 2


def test_config_errors_are_clear(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown step"):
        PipelineConfig.model_validate({"gpu_steps": ["tfrs_trainr"]})
    with pytest.raises(ConfigError, match=r"\.yaml"):
        compile_pipeline(PipelineConfig(), tmp_path / "pipeline.json")
