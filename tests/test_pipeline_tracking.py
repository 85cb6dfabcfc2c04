"""A compiled pipeline run the way the cluster runs it, tracked in a real MLflow server.

No parent run is opened by the CLI: the compiled IR YAML is loaded and run by ``kfp.local`` with the
orchestrator's placeholders (the pipeline job's uuid) resolved and only the parameters a user fills in the KFP UI
(data, model store, tracking server, run name); every config section comes from the YAML's defaults. The first
step opens the MLflow parent run, the steps nest theirs, the exit handler closes it. Slow: the real six steps on a
tiny simulated shop, twice (blessed and not blessed).
"""

from pathlib import Path

import pytest

from recflow.config import load_config

pytestmark = pytest.mark.slow

STEPS = ["example_gen", "transform", "tfrs_trainer", "agents_trainer", "evaluator", "pusher"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recflow.simulator import generate_dataset

    config = load_config(None, ["simulator.users=150", "simulator.items=60", "simulator.days=4"])
    data = tmp_path_factory.mktemp("shop") / "data"
    generate_dataset(config.simulator, data, progress=False)
    return data


def _run_compiled(tmp_path: Path, data: Path, mlflow_uri: str, experiment: str, overrides: list[str]) -> None:
    """Compile with ``overrides`` and run the compiled YAML on kfp.local like the cluster (UI parameters only)."""
    from kfp import components, local

    from pipelines.package import compile_pipeline

    config = load_config(None, [f"paths.data_dir={tmp_path / 'work'}", f"tracking.experiment={experiment}",
                                "trainer.epochs=3", "trainer.ranking_epochs=3", "trainer.early_stopping_patience=5",
                                *overrides])
    package = compile_pipeline(config, tmp_path / "pipeline.yaml")
    pipeline = components.load_component_from_file(str(package))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=False)
    pipeline(data_uri=str(data), model_store=str(tmp_path / "store"), tracking_uri=mlflow_uri,
             run_name=f"{experiment}-run")


def _pipeline_run(mlflow_uri: str, experiment: str):
    from recflow.tracking import TAG_KIND, tracking_client

    client = tracking_client(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "the first step did not create the experiment"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "pipeline"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return client, parents[0]


def _artifacts(client, run_id: str) -> set[str]:
    out, todo = set(), [None]
    while todo:
        for entry in client.list_artifacts(run_id, todo.pop()):
            (todo.append(entry.path) if entry.is_dir else out.add(entry.path))
    return out


def test_a_compiled_cluster_run_is_one_parent_with_six_step_runs(tmp_path: Path, shop: Path, mlflow_uri: str):
    from recflow.tracking import TAG_FINAL_STATUS, TAG_RUN_KEY, TAG_STEP, child_runs

    experiment = "cluster-blessed"
    # No champion in a fresh store, and the gate's lift rules off: this tiny shop's candidate is blessed.
    _run_compiled(tmp_path, shop, mlflow_uri, experiment, [
        "evaluator.thresholds.min_lift_over_popularity=null", "evaluator.thresholds.min_lift_over_best_baseline=null"])
    client, parent = _pipeline_run(mlflow_uri, experiment)
    assert parent.info.run_name == f"{experiment}-run"
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_FINAL_STATUS] == "SUCCEEDED"
    key = parent.data.tags[TAG_RUN_KEY]
    assert key and "{{" not in key  # the placeholder was resolved by the runner
    assert parent.data.tags["recflow.blessed"] == "true" and parent.data.metrics["blessed"] == 1.0
    assert parent.data.params["data.fingerprint"] and parent.data.params["trainer.epochs"] == "3"
    assert "serving.default_k" not in parent.data.params  # no step reads the serving section
    assert parent.data.metrics["candidate.ndcg_at_10"] >= 0
    assert parent.data.tags.get("recflow.bundle_version")  # the Pusher registered the pushed bundle
    assert {f"step_seconds.{s}" for s in STEPS} <= set(parent.data.metrics)

    steps = child_runs(mlflow_uri, parent.info.run_id)
    assert [r.data.tags[TAG_STEP] for r in steps] == STEPS
    assert all(r.info.status == "FINISHED" for r in steps)
    by_name = {r.data.tags[TAG_STEP]: r for r in steps}
    assert "example_gen/stats.json" in _artifacts(client, by_name["example_gen"].info.run_id)
    evaluator = _artifacts(client, by_name["evaluator"].info.run_id)
    assert {"evaluation/report.html", "evaluation/blessing.json", "evaluation/metrics.json"} <= evaluator
    assert "pusher/pushed" in _artifacts(client, by_name["pusher"].info.run_id)  # the KFP artifact, as JSON
    trainer = by_name["tfrs_trainer"]
    assert "plots/tfrs_trainer_curves.png" in _artifacts(client, trainer.info.run_id)
    history = client.get_metric_history(trainer.info.run_id, "epoch.retrieval.loss")
    assert [m.step for m in history] == list(range(len(history))) and len(history) >= 2  # one value per epoch
    # the linear bandit trains one pass (a one-point curve); the neural agent one point per epoch
    assert len(client.get_metric_history(by_name["agents_trainer"].info.run_id, "epoch.policy.loss")) >= 1
    assert trainer.data.params["trainer.epochs"] == "3"


def test_a_compiled_run_that_is_not_blessed_records_why(tmp_path: Path, shop: Path, mlflow_uri: str):
    from recflow.tracking import TAG_FINAL_STATUS, TAG_STEP, child_runs

    experiment = "cluster-not-blessed"
    # The baseline fallback is off here: this test is about what an unblessed run records when nothing is pushed
    # (tests/test_pipeline_local.py's full-DAG test covers the fallback that pushes the run's best baseline).
    _run_compiled(tmp_path, shop, mlflow_uri, experiment, ["evaluator.thresholds.min_ndcg=0.99",
                                                           "release.baseline_fallback=never"])
    client, parent = _pipeline_run(mlflow_uri, experiment)
    assert parent.info.status == "FINISHED" and parent.data.tags[TAG_FINAL_STATUS] == "SUCCEEDED"
    assert parent.data.tags["recflow.blessed"] == "false" and parent.data.metrics["blessed"] == 0.0
    assert "0.99" in parent.data.tags["recflow.failed_checks"]
    assert "recflow.bundle_version" not in parent.data.tags
    steps = child_runs(mlflow_uri, parent.info.run_id)
    assert [r.data.tags[TAG_STEP] for r in steps] == STEPS[:-1]  # nothing pushed
    evaluator = steps[-1]
    assert {"evaluation/report.html", "evaluation/blessing.json"} <= _artifacts(client, evaluator.info.run_id)
    assert "evaluation/blessing.json" in _artifacts(client, parent.info.run_id)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
