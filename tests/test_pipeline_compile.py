"""The training DAG compiles to KFP IR YAML with its six tasks, their order, placement and caching."""

from pathlib import Path

import pytest
import yaml

from pipelines.package import compile_pipeline
from recflow.cli import main
from recflow.errors import ConfigError
from recflow.pipeline_config import PipelineConfig

TASKS = {"example-gen", "transform", "tfrs-trainer", "agents-trainer", "evaluator", "pusher"}
GPU_TASKS = {"tfrs-trainer", "agents-trainer"}
#: The heavy steps, which KFP may serve from its cache (pipelines/definition.py: CACHED_STEPS).
CACHED = ("example-gen", "transform", "tfrs-trainer", "agents-trainer", "evaluator")


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
    assert set(tasks) >= TASKS
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["resolver"] == set()
    assert deps["example-gen"] == {"resolver"}  # it takes the dataset's content version
    assert deps["transform"] == {"example-gen"}
    assert "resolver" in deps["evaluator"]  # it takes the champion's version
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


def _track_tasks(spec: dict) -> list[str]:
    tasks = _all_tasks(spec)
    return [n for n, t in tasks.items() if t["componentRef"]["name"].startswith("comp-track")]


def test_caching_on_for_the_heavy_steps_off_for_the_rest_and_no_runtime_pip_install(compiled):
    tasks = _all_tasks(compiled)
    light = ["pusher", "resolver", "close-run", *_track_tasks(compiled)]
    assert len(_track_tasks(compiled)) == 5  # one per heavy step
    for name in CACHED:
        assert tasks[name]["cachingOptions"]["enableCache"] is True, name
    for name in light:
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name
    for name in (*TASKS, *light):
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


# ----------------------------------------------------------------------------------------------------------
# Typed parameters: what each step's KFP cache key depends on


def _cache_keys(spec: dict, arguments: dict | None = None, run_id: str = "run-id",
                outputs: dict | None = None) -> dict[str, str]:
    """Per task, a digest of what KFP's cache key covers: the component (interface and container: image, command,
    args), its input parameters' values and its input artifacts (identified by the producing task's own key and
    the output's name), as the orchestrator resolves them for one run: pipeline parameters from ``arguments``
    (else the compiled defaults), the run-id placeholder replaced by ``run_id``, the output parameters of an
    uncached light task (the resolver) from ``outputs`` (``{task: {output: value}}``) where given."""
    import hashlib
    import json

    tasks = _all_tasks(spec)
    root_params = spec["root"]["inputDefinitions"]["parameters"]
    arguments, outputs = arguments or {}, outputs or {}
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name in keys:
            return keys[name]
        task = tasks[name]
        component = spec["components"][task["componentRef"]["name"]]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        params = {}
        for pname, source in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in source:
                root = source["componentInputParameter"].removeprefix("pipelinechannel--")
                # (inside the If branch, a channel of the parent DAG: kept as its name)
                params[pname] = arguments.get(root, root_params.get(root, {}).get("defaultValue", root))
            elif "taskOutputParameter" in source:
                out = source["taskOutputParameter"]
                given = outputs.get(out["producerTask"], {})
                params[pname] = given[out["outputParameterKey"]] if out["outputParameterKey"] in given else [
                    key(out["producerTask"]), out["outputParameterKey"]]
            else:
                params[pname] = json.loads(json.dumps(source).replace("{{$.pipeline_job_uuid}}", run_id))
        artifacts = {}
        for aname, source in task.get("inputs", {}).get("artifacts", {}).items():
            out = source.get("taskOutputArtifact")
            artifacts[aname] = [key(out["producerTask"]), out["outputArtifactKey"]] if out else source
        blob = json.dumps([component.get("inputDefinitions"), component.get("outputDefinitions"), executor,
                           params, artifacts], sort_keys=True)
        keys[name] = hashlib.sha256(blob.encode()).hexdigest()
        return keys[name]

    return {name: key(name) for name in tasks if "componentRef" in tasks[name] and
            "executorLabel" in spec["components"][tasks[name]["componentRef"]["name"]]}


def _heavy(keys: dict[str, str]) -> dict[str, str]:
    return {name: keys[name] for name in CACHED}


def _compiled_keys(tmp_path: Path, *overrides: str) -> dict[str, str]:
    from recflow.config import load_config

    out = tmp_path / f"p{abs(hash(overrides))}.yaml"
    return _heavy(_cache_keys(load_package(compile_pipeline(load_config(None, list(overrides)), out))))


def test_a_serving_change_leaves_the_training_steps_cache_keys_unchanged(tmp_path: Path):
    base = _compiled_keys(tmp_path)
    assert _compiled_keys(tmp_path, "serving.default_k=3", "serving.epsilon=0.3", "monitoring.watch.daily_budget=9",
                          "simulator.users=77") == base
    # the control: a trainer change moves the trainer's key and everything downstream of it, nothing upstream
    trainer = _compiled_keys(tmp_path, "trainer.epochs=2")
    assert [n for n in base if trainer[n] != base[n]] == ["tfrs-trainer", "agents-trainer", "evaluator"]
    evaluator = _compiled_keys(tmp_path, "evaluator.thresholds.min_ndcg=0.5")
    assert [n for n in base if evaluator[n] != base[n]] == ["evaluator"]


def test_another_run_id_or_run_name_leaves_the_heavy_steps_cache_keys_unchanged(compiled):
    """The heavy steps take no per-run input, so two runs with the same data, champion and config have the same
    cache keys (KFP reuses them); only the light, uncached tasks see the run id and run name."""
    tasks = _all_tasks(compiled)
    resolved = {"resolver": {"data_version": "sha256:0a1b", "champion": "v0003@2026-12-01T03:00:00+00:00"}}
    nightly = _cache_keys(compiled, {"run_name": "nightly-0412", "tracking_uri": "http://mlflow:5000",
                                     "data_uri": "gs://shop/events"}, "9b2f1c4e-0000-4000-8000-000000000001", resolved)
    adhoc = _cache_keys(compiled, {"run_name": "adhoc-check", "tracking_uri": "http://mlflow:5000",
                                   "data_uri": "gs://shop/events"}, "5d7e3a90-0000-4000-8000-000000000002", resolved)
    assert _heavy(nightly) == _heavy(adhoc)
    for name in CACHED:  # nothing per-run reaches them, not even unused
        inputs = tasks[name].get("inputs", {}).get("parameters", {})
        assert "{{$" not in str(inputs) and not {"run_key", "run_name", "tracking_uri", "status_dir"} & set(inputs)
    # the control: the track tasks and the pusher take the run id, so their keys differ (and they are uncached)
    for name in (*_track_tasks(compiled), "pusher", "close-run"):
        assert nightly[name] != adhoc[name], name
    # what lies behind the paths is an input too: new data moves every step, a new champion only the evaluator
    new_data = _cache_keys(compiled, {"run_name": "x", "data_uri": "gs://shop/events"}, "r", {
        "resolver": {**resolved["resolver"], "data_version": "sha256:ffff"}})
    assert [n for n in CACHED if new_data[n] != nightly[n]] == list(CACHED)
    new_champion = _cache_keys(compiled, {"run_name": "x", "data_uri": "gs://shop/events"}, "r", {
        "resolver": {**resolved["resolver"], "champion": "v0004@2026-12-02T03:00:00+00:00"}})
    assert [n for n in CACHED if new_champion[n] != nightly[n]] == ["evaluator"]


def test_every_pipeline_parameter_has_a_default_and_sections_are_typed(compiled):
    params = compiled["root"]["inputDefinitions"]["parameters"]
    assert all("defaultValue" in p for p in params.values()), [n for n, p in params.items() if "defaultValue" not in p]
    assert params["trainer_config"]["parameterType"] == "STRUCT"
    assert params["trainer_config"]["defaultValue"]["epochs"] == 10
    # a null travels as "null" (KFP structs hold no null): the gate rule that is off by default stays off
    assert params["evaluator_config"]["defaultValue"]["thresholds"]["min_index_recall"] == "null"
    assert "serving_config" not in params and "config_yaml" not in params


def test_placeholder_images_are_warned_about(tmp_path: Path, capsys):
    assert main(["pipeline", "compile", "--out", str(tmp_path / "p.yaml")]) == 0
    assert "pipeline.image is 'ghcr.io/recflow/recflow:0.1.0-cpu', a placeholder" in capsys.readouterr().err
    assert main(["--set", "pipeline.image=europe-docker.pkg.dev/acme/ml/recflow:1.2-cpu", "--set",
                 "pipeline.gpu_image=europe-docker.pkg.dev/acme/ml/recflow:1.2-gpu", "pipeline", "compile",
                 "--out", str(tmp_path / "q.yaml")]) == 0
    assert "placeholder" not in capsys.readouterr().err


def test_transient_steps_retry_and_the_exit_handler_closes_the_run(compiled):
    tasks = _all_tasks(compiled)
    for name in ("example-gen", "pusher", "close-run"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] >= 2, name
    assert "retryPolicy" not in tasks["tfrs-trainer"]
    close = compiled["root"]["dag"]["tasks"]["close-run"]
    assert close["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "taskFinalStatus" in close["inputs"]["parameters"]["status"]
    for name in (*_track_tasks(compiled), "pusher", "close-run"):
        assert tasks[name]["inputs"]["parameters"]["run_key"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    # the track tasks run in the DAG's order (so the step runs nest in it); the first opens the MLflow run
    order = [tasks[n]["inputs"]["artifacts"]["record"]["taskOutputArtifact"]["producerTask"]
             for n in sorted(_track_tasks(compiled), key=lambda n: int(n.rpartition("-")[2]) if n[-1].isdigit() else 1)]
    assert order == list(CACHED)
    opens = {n: tasks[n]["inputs"]["parameters"]["opens"]["runtimeValue"]["constant"] for n in _track_tasks(compiled)}
    assert [n for n, v in opens.items() if v] == ["track"]


def test_both_data_steps_get_the_beam_runner_settings(tmp_path: Path):
    """ExampleGen's beam engine runs where Transform runs: both steps take the pipeline's beam_pipeline_args and
    the transform section (its runner settings); the pandas engine ignores them."""
    config = PipelineConfig.model_validate({"beam_pipeline_args": ["--runner=DataflowRunner", "--region=x"]})
    spec = load_package(compile_pipeline(config, tmp_path / "p.yaml"))
    tasks = _all_tasks(spec)
    for name in ("example-gen", "transform"):
        params = tasks[name]["inputs"]["parameters"]
        assert params["beam_pipeline_args"]["runtimeValue"]["constant"] == ["--runner=DataflowRunner", "--region=x"]
        assert params["transform_config"]["componentInputParameter"].endswith("transform_config")


def test_transform_prepare_engine_reaches_the_step(tmp_path: Path):
    """transform.prepare_engine travels in the Transform step's transform_config (its default from the config),
    which the step validates into the TransformConfig that run_transform reads."""
    from components.step_run import StepConfig
    from recflow.config import RecflowConfig

    config = RecflowConfig.model_validate({"transform": {"prepare_engine": "beam", "prepare_shards": 16}})
    spec = load_package(compile_pipeline(config, tmp_path / "p.yaml"))
    default = spec["root"]["inputDefinitions"]["parameters"]["transform_config"]["defaultValue"]
    assert default["prepare_engine"] == "beam" and default["prepare_shards"] == 16
    step = StepConfig("transform", {"transform": default})
    assert step.transform.prepare_engine == "beam" and step.transform.prepare_shards == 16
