"""Running DAGs on the KFP local runner through `run_local`.

The fast tests use a 3-step DAG of their own (ExampleGen -> Evaluator -> Pusher under the same `dsl.If` gate
as the training DAG, with the same step conventions) to check the local-run mechanics end to end: artifacts
between processes, the blessed branch pushing, an unblessed run pushing nothing and saying why, and invalid data
failing the first step with its named error while nothing downstream runs (kubeflow/pipelines #12511: a
condition that silently evaluated false). The slow test runs the real six-step DAG on tiny simulator data.
"""

import json
from pathlib import Path

import pytest
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from pipelines.local_run import PipelineStepFailed, run_local
from recflow.cli import main
from recflow.config import load_config

# No `from __future__ import annotations` here: KFP reads the toy components' real annotations.


def toy_example_gen(data_uri: str, examples: Output[Dataset], record: Output[Artifact]) -> None:
    """Read clicks.csv (one 0/1 click per line); a bad line is a DataError naming file, row and field."""
    from pathlib import Path

    from components.step_run import step_run

    with step_run("example_gen", {}, record=record.path) as step:
        from recflow.errors import DataError

        source = Path(data_uri) / "clicks.csv"
        clicks = []
        for row, line in enumerate(source.read_text().splitlines(), start=1):
            if line.strip() not in ("0", "1"):
                raise DataError(f"{source}: row {row}: field click: expected 0 or 1, got {line.strip()!r}")
            clicks.append(int(line))
        Path(examples.path).write_text("\n".join(map(str, clicks)))
        step.log_metrics({"rows": len(clicks)})
        step.log_artifact(examples.path, "example_gen")


def toy_evaluator(examples: Input[Dataset], record: Output[Artifact]) -> bool:
    """Bless the candidate when its click rate beats the 0.5 of a random baseline."""
    from pathlib import Path

    from components.step_run import step_run

    with step_run("evaluator", {}, record=record.path) as step:
        clicks = [int(x) for x in Path(examples.path).read_text().split()]
        ctr = sum(clicks) / len(clicks)
        step.log_metrics({"candidate": {"ctr": ctr}, "random": {"ctr": 0.5}})
        step.log_curves({"toy.loss": [1.0 - ctr * e / 3 for e in range(4)]})
        blessed = ctr > 0.5
        step.log_pipeline_metrics({"candidate.ctr": ctr, "blessed": float(blessed)})
        step.note(blessed=blessed, reasons=[] if blessed else [f"ctr {ctr:.3f} <= random baseline 0.500"])
    return blessed


def toy_pusher(examples: Input[Dataset], model_store: str, tracking_config: dict, tracking_uri: str, run_key: str,
               run_name: str) -> str:
    """Copy the examples into the model store as version v1."""
    import shutil
    from pathlib import Path

    from components.step_run import Tracking, step_run

    with step_run("pusher", {"tracking": tracking_config}, Tracking(tracking_uri, run_key, run_name)) as step:
        target = Path(model_store) / "v1"
        target.mkdir(parents=True)
        shutil.copyfile(examples.path, target / "examples.txt")
        step.note(pushed=True, pushed_to=str(target))
    return str(target)


def _component(func):
    return dsl.component(func, base_image="python:3.11", install_kfp_package=False)


@dsl.pipeline(name="toy-training")
def toy_pipeline(data_uri: str, model_store: str, tracking_uri: str = "", run_name: str = "",
                 tracking_config: dict = {}) -> None:  # noqa: B006  (a KFP default)
    """The training DAG's conventions in small: cacheable heavy steps with records, a never-cached track task
    after each (the first opens the MLflow run), a live-tracked pusher, the exit handler."""
    from components import close_run, track

    common = {"tracking_config": tracking_config, "tracking_uri": tracking_uri,
              "run_key": dsl.PIPELINE_JOB_ID_PLACEHOLDER, "run_name": run_name}
    exit_task = close_run.build("python:3.11")(**common).set_caching_options(False)
    with dsl.ExitHandler(exit_task):
        gen = _component(toy_example_gen)(data_uri=data_uri)
        tracker = track.build("python:3.11")
        logged = tracker(record=gen.outputs["record"], data_uri=data_uri, opens=True, **common)
        evaluation = _component(toy_evaluator)(examples=gen.outputs["examples"])
        logged_eval = tracker(record=evaluation.outputs["record"], data_uri="", opens=False, **common).after(logged)
        for task in (logged, logged_eval):
            task.set_caching_options(False)
        with dsl.If(evaluation.outputs["Output"] == True, name="blessed"):  # noqa: E712
            _component(toy_pusher)(examples=gen.outputs["examples"], model_store=model_store,
                                   **common).after(logged_eval).set_caching_options(False)


def _dataset(tmp_path: Path, lines: list[str]) -> Path:
    data = tmp_path / "data"
    data.mkdir(parents=True)
    (data / "clicks.csv").write_text("\n".join(lines) + "\n")
    return data


def _run(tmp_path: Path, data: Path, **kwargs):
    config = load_config(None, [f"paths.data_dir={tmp_path / 'work'}"])
    return run_local(data, config, model_store=tmp_path / "store", pipeline_func=toy_pipeline,
                     tracking=False, **kwargs)


def test_blessed_run_pushes_and_reports(tmp_path, capsys):
    result = _run(tmp_path, _dataset(tmp_path, ["1", "1", "0", "1"]))
    assert result.succeeded and result.blessed is True
    assert result.pushed_to == str(tmp_path / "store" / "v1")
    assert (tmp_path / "store" / "v1" / "examples.txt").read_text() == "1\n1\n0\n1"
    assert [s.status for s in result.steps if s.name in ("example_gen", "evaluator", "pusher")] == [
        "succeeded"] * 3
    assert result.step("example_gen").metrics == {"rows": 4.0}
    assert all(s.seconds and s.seconds > 0 for s in result.steps if s.status == "succeeded")
    summary = result.format()
    assert "BLESSED" in summary and f"pushed model bundle: {tmp_path / 'store' / 'v1'}" in summary
    # the run report says what serving does with the policy layer, and why (issue 13 item 5)
    assert ("serving: slates follow the ranking model's click probability; the TF-Agents policy's scores are only "
            "logged (serving.policy_rerank=false; the default is off because its re-ranking lowered") in summary
    assert "0.7500" in summary and "0.5000" in summary  # candidate vs random baseline
    progress = capsys.readouterr().out
    assert "[1/6] example_gen: started" in progress and "[6/6] pusher: done in" in progress
    assert "Executing task" not in progress  # KFP's own log goes to pipeline.log
    assert "Executing task" in result.log_path.read_text()


def test_unblessed_run_pushes_nothing_and_says_why(tmp_path):
    result = _run(tmp_path, _dataset(tmp_path, ["0", "1", "0", "0"]))
    assert result.succeeded and result.blessed is False
    assert result.step("pusher").status == "skipped"
    assert result.pushed_to is None
    assert not (tmp_path / "store").exists()
    assert "ctr 0.250 <= random baseline 0.500" in result.why_not_pushed()
    assert "nothing pushed: the candidate was not blessed" in result.format()


def test_invalid_data_fails_example_gen_and_nothing_downstream_runs(tmp_path):
    with pytest.raises(PipelineStepFailed) as failed:
        _run(tmp_path, _dataset(tmp_path, ["1", "yes", "0"]))
    message = str(failed.value)
    assert "step example_gen failed" in message
    assert "row 2: field click: expected 0 or 1, got 'yes'" in message
    assert "Traceback" not in message
    statuses = {p.stem: json.loads(p.read_text())["status"]
                for p in (tmp_path / "work" / "pipeline-runs").glob("*/status/*.json")}
    assert statuses == {"example_gen": "failed"}
    assert not (tmp_path / "store").exists()


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    rc = main(["--set", f"paths.data_dir={tmp_path}", "pipeline", "run", "--data", str(tmp_path / "nope"),
               "--no-tracking"])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_full_training_dag_runs_locally(tmp_path, capsys):
    """The real six-step DAG on tiny simulator data, with MLflow tracking (needs every core step to exist).

    The candidate is made to lose (an NDCG floor nobody reaches) on an empty store: the run pushes its best
    servable baseline instead, and the service serves it."""
    for module in ("recflow.simulator", "recflow.examplegen", "recflow.features.transform",
                   "recflow.training.tfrs_trainer", "recflow.policy.trainer", "recflow.evaluation",
                   "recflow.model_store", "recflow.tracking"):
        pytest.importorskip(module)
    from recflow.simulator import generate_dataset

    config = load_config(None, [f"paths.data_dir={tmp_path / 'work'}", "simulator.users=150",
                                "simulator.items=60", "simulator.days=4", "evaluator.thresholds.min_ndcg=0.999"])
    data = tmp_path / "data"
    generate_dataset(config.simulator, data, progress=False)
    result = run_local(data, config, model_store=tmp_path / "store")
    assert result.succeeded
    assert [s.status for s in result.steps] == ["succeeded"] * 6
    assert result.blessed is False
    fallback = result.step("evaluator").notes["fallback_baseline"]
    assert result.pushed_to and Path(result.pushed_to).is_dir()
    assert result.step("pusher").notes["kind"] == "baseline"
    summary = result.format()
    assert f"pushed the run's BEST BASELINE, {fallback['label']}" in summary

    from recflow.model_store import ModelStore
    from serving.config import ServingConfig
    from serving.recommender import Recommender

    store = ModelStore(tmp_path / "store")
    champion = store.champion()
    assert champion is not None and champion.kind == "baseline"
    assert champion.metadata["baseline"]["label"] == fallback["label"]
    rec = Recommender.load(store, ServingConfig())
    try:
        slate = rec.recommend("someone-new", k=5, history=["i000001", "i000002"])
        assert len(slate.items) == 5 and slate.policy_id.endswith(f"baseline:{fallback['label']}")
    finally:
        rec.close()
    assert "mlflow ui --backend-store-uri" in summary
    out = capsys.readouterr().out
    for i, step in enumerate(("example_gen", "transform", "tfrs_trainer", "agents_trainer", "evaluator"), 1):
        assert f"[{i}/6] {step}: done in" in out


def test_summary_table_separates_ranking_metrics_from_off_policy_estimates():
    from pipelines.local_run import _metrics_table

    rows = _metrics_table({"candidate.ndcg@10": 0.43, "als.ndcg@10": 0.41, "ope.click_rate/ips": 0.104,
                           "blessed": 1.0})
    text = "\n".join(rows)
    assert rows[0].split() == ["metric", "candidate", "als"]
    assert "ndcg@10" in rows[1] and "0.4300" in rows[1] and "0.4100" in rows[1]
    assert "off-policy estimates" in text and "ope.click_rate/ips" in text and "0.1040" in text
    assert "blessed" not in text.split("off-policy")[0].replace("candidate", "")


def test_run_name_and_tracking_store_anchored_at_the_config_file(tmp_path, monkeypatch):
    """`pipeline run --run-name` names the MLflow run; a relative data_dir in a --config file puts the local
    tracking store beside that file, whatever the working directory (where `recflow runs` looks for it)."""
    import mlflow

    project = tmp_path / "project"
    project.mkdir()
    config_file = project / "recflow.yaml"
    config_file.write_text("paths:\n  data_dir: work\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(config_file)
    data = _dataset(tmp_path, ["1", "1", "0", "1"])
    (data / "events.csv").write_text("user_id,item_id,event_type,timestamp\nu1,i1,click,2026-01-05T00:00:00Z\n")
    result = run_local(data, config, model_store=tmp_path / "store",
                       pipeline_func=toy_pipeline, run_name="nightly-check", config_path=config_file)
    assert result.succeeded
    assert (project / "work" / "mlflow.db").is_file()
    assert not (elsewhere / "work" / "mlflow.db").exists()  # (run directories follow paths.data_dir as given)
    client = mlflow.MlflowClient(result.tracking_uri)
    assert client.get_run(result.parent_run_id).info.run_name == "nightly-check"


def test_summary_prints_every_check_and_the_gate_overrides(tmp_path):
    from pipelines.local_run import LocalRunResult, StepReport

    checks = [
        {"rule": "evaluator.thresholds.min_ndcg", "name": "ndcg@10 floor", "value": "0.4300",
         "threshold": ">= 0.000", "status": "pass", "detail": "ndcg@10 0.430 >= floor 0.000"},
        {"rule": "evaluator.thresholds.non_inferiority_margins", "name": "ndcg@10 not worse than the champion",
         "value": "-0.0081 (p=0.46, power 0.31)", "threshold": "> -0.0087", "status": "fail",
         "detail": "ndcg@10: not shown non-inferior"},
        {"rule": "evaluator.thresholds.min_lift_over_popularity", "name": "lift over popularity", "value": "-",
         "threshold": "-", "status": "off", "detail": "lift over popularity: rule off"},
    ]
    steps = [StepReport(n, "succeeded", 1.0) for n in ("example_gen", "transform", "tfrs_trainer",
                                                       "agents_trainer")]
    steps.append(StepReport("evaluator", "succeeded", 1.0, notes={
        "blessed": False, "reasons": ["ndcg@10: not shown non-inferior"], "checks": checks,
        "overrides": ["evaluator.thresholds.min_lift_over_popularity = null (default 0.0)"]}))
    steps.append(StepReport("pusher", "skipped"))
    text = LocalRunResult(tmp_path, tmp_path / "log", steps, 1.0).format()
    lines = text.splitlines()
    assert any(line.split()[:3] == ["PASS", "ndcg@10", "floor"] and "0.4300" in line and ">= 0.000" in line
               for line in lines)
    assert any(line.strip().startswith("FAIL") and "not worse than the champion" in line for line in lines)
    assert any(line.strip().startswith("off") and "lift over popularity" in line for line in lines)
    assert "! evaluator.thresholds.min_lift_over_popularity = null (default 0.0)" in text
    assert "nothing pushed: the candidate was not blessed: ndcg@10: not shown non-inferior" in text


def test_a_local_run_is_tracked_by_its_steps_and_closed_by_the_exit_handler(tmp_path, mlflow_uri):
    """No parent run is opened outside the DAG: the first step opens it (keyed by the resolved KFP run id), the
    steps nest theirs with artifacts and per-epoch curves, the exit handler closes it with the final status."""
    from recflow.tracking import TAG_FINAL_STATUS, TAG_RUN_KEY, TAG_STEP, child_runs, tracking_client

    result = _run_tracked(tmp_path, _dataset(tmp_path, ["1", "1", "0", "1"]), mlflow_uri, "toy-tracked")
    client = tracking_client(mlflow_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.run_name == "toy-tracked" and parent.info.status == "FINISHED"
    assert parent.data.tags[TAG_FINAL_STATUS] == "SUCCEEDED" and "{{" not in parent.data.tags[TAG_RUN_KEY]
    assert parent.data.metrics["candidate.ctr"] == 0.75 and parent.data.metrics["blessed"] == 1.0
    steps = child_runs(mlflow_uri, result.parent_run_id)
    assert [r.data.tags[TAG_STEP] for r in steps] == ["example_gen", "evaluator", "pusher"]
    assert [a.path for a in client.list_artifacts(steps[0].info.run_id, "example_gen")]
    curve = client.get_metric_history(steps[1].info.run_id, "epoch.toy.loss")
    assert [m.step for m in curve] == [0, 1, 2, 3] and curve[0].value == 1.0
    assert [a.path for a in client.list_artifacts(steps[1].info.run_id, "plots")] == [
        "plots/evaluator_curves.png"]


def test_a_failed_local_run_is_closed_as_failed(tmp_path, mlflow_uri):
    from recflow.tracking import TAG_FINAL_STATUS, TAG_RUN_KEY, find_pipeline_run

    with pytest.raises(PipelineStepFailed, match="row 2: field click"):
        _run_tracked(tmp_path, _dataset(tmp_path, ["1", "x"]), mlflow_uri, "toy-failed")
    from recflow.tracking import tracking_client

    client = tracking_client(mlflow_uri)
    exp = client.get_experiment_by_name("toy-failed")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("recflow.kind") == "pipeline")
    assert parent.info.status == "FAILED" and parent.data.tags[TAG_FINAL_STATUS] == "FAILED"
    assert find_pipeline_run(mlflow_uri, "toy-failed", parent.data.tags[TAG_RUN_KEY]).info.run_id == \
        parent.info.run_id
    failed_step = next(r for r in runs if r.data.tags.get("recflow.step") == "example_gen")
    assert failed_step.info.status == "FAILED" and "field click" in failed_step.data.tags["recflow.error"]


def test_a_cached_local_run_reuses_the_steps_and_still_tracks_them(tmp_path, mlflow_uri, capsys):
    """With KFP's cache on, a second run on the same data and config reuses the heavy steps (they take no run id,
    run name or status directory), and their track tasks still give the new MLflow run its step runs, tagged
    ``recflow.cached`` with the run the steps ran in."""
    from recflow.tracking import TAG_STEP, child_runs, tracking_client
    from recflow.tracking.records import TAG_CACHED, TAG_EXECUTED_IN, TAG_EXECUTION

    data = _dataset(tmp_path, ["0", "1", "0", "0"])  # not blessed: nothing is pushed, so both runs are alike
    first = _run_tracked(tmp_path, data, mlflow_uri, "toy-cached", cache=True)
    capsys.readouterr()
    second = _run_tracked(tmp_path, data, mlflow_uri, "toy-cached", cache=True, run_name="toy-cached-again")
    assert first.parent_run_id != second.parent_run_id
    assert not any(s.notes.get("cached") for s in first.steps)
    assert [s.name for s in second.steps if s.notes.get("cached")] == ["example_gen", "evaluator"]
    assert second.blessed is False and second.step("evaluator").metrics == first.step("evaluator").metrics
    assert "reused from the KFP cache" in capsys.readouterr().out
    assert any(line.split()[:2] == ["example_gen", "cached"] for line in second.format().splitlines())
    client = tracking_client(mlflow_uri)
    before = {r.data.tags[TAG_STEP]: r for r in child_runs(mlflow_uri, first.parent_run_id)}
    after = {r.data.tags[TAG_STEP]: r for r in child_runs(mlflow_uri, second.parent_run_id)}
    assert list(after) == ["example_gen", "evaluator"]
    for step, run in after.items():
        assert before[step].data.tags[TAG_CACHED] == "false"
        assert run.data.tags[TAG_CACHED] == "true" and run.data.tags[TAG_EXECUTED_IN] == first.parent_run_id
        assert run.data.tags[TAG_EXECUTION] == before[step].data.tags[TAG_EXECUTION]
        assert run.data.metrics["step_seconds"] == before[step].data.metrics["step_seconds"]
    assert client.get_run(second.parent_run_id).data.metrics["candidate.ctr"] == 0.25
    # a new dataset is a new ExampleGen input: nothing is reused
    third = _run_tracked(tmp_path, _dataset(tmp_path / "new", ["1", "1", "0", "0", "1"]), mlflow_uri, "toy-cached",
                         cache=True)
    assert not any(s.notes.get("cached") for s in third.steps)


def _run_tracked(tmp_path: Path, data: Path, mlflow_uri: str, name: str, **kwargs):
    # the first step fingerprints the dataset's event table
    (data / "events.csv").write_text("user_id,item_id,event_type,timestamp\nu1,i1,click,2026-01-05T00:00:00Z\n")
    config = load_config(None, [f"paths.data_dir={tmp_path / 'work'}", f"tracking.experiment={name}"])
    kwargs.setdefault("run_name", name)
    return run_local(data, config, model_store=tmp_path / "store", pipeline_func=toy_pipeline,
                     tracking_uri=mlflow_uri, **kwargs)
