"""MLflow tracking against a real `mlflow server` on 127.0.0.1 (one server per session, see servers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from recflow.config import dump_config, load_config
from recflow.errors import DataError, ServiceUnavailable
from recflow.tracking import (
    TrackingConfig,
    check_tracking_server,
    child_runs,
    component_run,
    data_fingerprint,
    default_artifact_location,
    finish_pipeline_run,
    log_artifacts,
    log_metrics,
    metric_name,
    param_value,
    resolve_tracking_uri,
    sanitize_metrics,
    start_pipeline_run,
    tracking_client,
)

pytest_plugins = ["servers"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    d = tmp_path / "ds"
    d.mkdir()
    (d / "events.parquet").write_bytes(b"events-bytes" * 100)
    (d / "items.parquet").write_bytes(b"items-bytes")
    return d


def _start(
    uri: str, dataset: Path, name: str = "run", experiment: str = "test-tracking", **overrides: object
):
    config = load_config(overrides=[f"{k}={v}" for k, v in overrides.items()])
    return start_pipeline_run(uri, experiment, name, dump_config(config), dataset, pipeline_name="training")


def test_metric_names_follow_a_documented_mapping():
    assert metric_name("ndcg@10") == "ndcg_at_10"
    assert metric_name("hit_rate%") == "hit_rate_pct"
    assert metric_name("slice:category=shoes/recall@50") == "slice_category_eq_shoes/recall_at_50"
    assert metric_name("already_fine-1.0 a/b") == "already_fine-1.0 a/b"
    with pytest.raises(ValueError, match="both map to"):
        sanitize_metrics({"a@1": 1.0, "a_at_1": 2.0})
    with pytest.raises(ValueError, match="not a number"):
        sanitize_metrics({"x": "high"})


def test_long_param_values_are_cut_to_mlflows_limit_with_a_marker():
    value = param_value(list(range(5000)))
    assert len(value) == MAX_PARAM_VAL_LENGTH and value.endswith("config/config.yaml]")
    assert param_value("short") == "short" and param_value(None) == "null" and param_value([1, 2]) == "[1, 2]"


def test_tracking_uri_precedence_and_absolute_sqlite_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    default = resolve_tracking_uri(TrackingConfig(), Path("data"))
    assert default == f"sqlite:///{tmp_path.resolve()}/data/mlflow.db"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://cfg:1"), Path("d")) == "http://cfg:1"
    assert (
        resolve_tracking_uri(TrackingConfig(tracking_uri="http://cfg:1"), Path("d"), "http://cli:2")
        == "http://cli:2"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:3")
    assert resolve_tracking_uri(TrackingConfig(), Path("d")) == "http://env:3"
    assert (
        default_artifact_location(default, TrackingConfig(), Path("data"))
        == (tmp_path / "data/mlartifacts").as_uri()
    )
    assert default_artifact_location("http://x:1", TrackingConfig(), Path("data")) is None


def test_unreachable_server_fails_fast_with_the_uri():
    from servers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=uri.replace(".", r"\.")) as info:
        start_pipeline_run(uri, "x", "r", "a: 1\n", Path("/nonexistent-never-read"), check_timeout_s=2)
    assert time.monotonic() - started < 5
    assert "unreachable" in str(info.value) and "--tracking-uri" in str(info.value)


def test_unwritable_local_store_is_reported(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ServiceUnavailable, match="not writable"):
        check_tracking_server(f"sqlite:///{blocker}/sub/mlflow.db")


def test_fingerprint_follows_the_bytes_not_the_location(dataset: Path, tmp_path: Path):
    before = data_fingerprint(dataset)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in dataset.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    assert data_fingerprint(moved) == before
    (moved / ".events.parquet.tmp").write_bytes(b"temp file of an atomic write")
    assert data_fingerprint(moved) == before
    (moved / "events.parquet").write_bytes(b"events-bytes" * 99 + b"events-byteZ")
    assert data_fingerprint(moved) != before
    (moved / "events.parquet").write_bytes(b"events-bytes" * 100)
    (moved / "items.parquet").rename(moved / "items2.parquet")
    assert data_fingerprint(moved) != before
    with pytest.raises(DataError, match="does not exist"):
        data_fingerprint(tmp_path / "missing")


def test_pipeline_run_records_config_data_code_and_libraries(mlflow_uri: str, dataset: Path, tmp_path: Path):
    config_yaml = dump_config(load_config(overrides=["simulator.users=77"]))
    with start_pipeline_run(
        mlflow_uri, "test-tracking", "params", config_yaml, dataset, pipeline_name="training"
    ) as run:
        pass
    client = tracking_client(mlflow_uri)
    got = client.get_run(run.run_id)
    params, tags = got.data.params, got.data.tags
    assert params["simulator.users"] == "77"
    assert params["validation.max_bad_share"] == "0.01"
    assert params["data.fingerprint"] == data_fingerprint(dataset) == run.data_fingerprint
    assert params["lib.mlflow"] == mlflow.__version__
    assert {
        "lib.tensorflow",
        "lib.tensorflow-recommenders",
        "lib.tf-agents",
        "lib.kfp",
        "lib.apache-beam",
        "lib.numpy",
        "lib.pandas",
        "lib.tensorflow-transform",
    } <= set(params)
    assert params["code.version"] == run.code_version and params["code.version"]
    if tags.get("mlflow.source.git.commit"):
        assert params["code.version"].startswith(tags["mlflow.source.git.commit"])
    assert tags["recflow.pipeline"] == "training" and tags["recflow.kind"] == "pipeline"
    assert got.info.status == "FINISHED" and got.info.run_name == "params"
    logged = tracking_client(mlflow_uri).download_artifacts(run.run_id, "config/config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(logged).read_text())["simulator"]["users"] == 77
    assert "pipeline_seconds" in got.data.metrics


def test_steps_are_nested_runs_with_wall_time_and_failures(mlflow_uri: str, dataset: Path):
    run = _start(mlflow_uri, dataset, "nested")
    with component_run(mlflow_uri, run.run_id, "transform") as step:
        step.log_metrics({"rows": 10})
        time.sleep(0.05)
    with pytest.raises(RuntimeError, match="boom"), component_run(mlflow_uri, run.run_id, "train"):
        raise RuntimeError("boom")
    logged = finish_pipeline_run(mlflow_uri, run.run_id, "FAILED", {"ndcg@10": 0.25})
    children = {c.data.tags["recflow.step"]: c for c in child_runs(mlflow_uri, run.run_id)}
    assert set(children) == {"transform", "train"}
    assert children["transform"].info.status == "FINISHED"
    assert children["transform"].data.tags["mlflow.parentRunId"] == run.run_id
    assert children["transform"].data.metrics["step_seconds"] >= 0.05
    assert children["transform"].data.metrics["rows"] == 10
    assert children["train"].info.status == "FAILED"
    assert "boom" in children["train"].data.tags["recflow.error"]
    parent = tracking_client(mlflow_uri).get_run(run.run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["ndcg_at_10"] == 0.25 == logged["ndcg_at_10"]
    assert parent.data.metrics["step_seconds.transform"] == children["transform"].data.metrics["step_seconds"]
    assert "step_seconds.train" in parent.data.metrics


def test_component_run_works_from_another_process(mlflow_uri: str, dataset: Path):
    run = _start(mlflow_uri, dataset, "subprocess")
    code = textwrap.dedent(f"""
        import recflow
        from recflow.tracking import component_run
        with component_run({mlflow_uri!r}, {run.run_id!r}, "evaluate") as step:
            step.log_metrics({{"recall@50": 0.5}})
            step.log_params({{"k": 50}})
        print(step.run_id)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    child = tracking_client(mlflow_uri).get_run(proc.stdout.strip().splitlines()[-1])
    assert child.data.tags["mlflow.parentRunId"] == run.run_id
    assert child.data.metrics["recall_at_50"] == 0.5 and child.data.params["k"] == "50"
    finish_pipeline_run(mlflow_uri, run.run_id)


def test_metrics_and_artifacts_are_logged(mlflow_uri: str, dataset: Path, tmp_path: Path):
    run = _start(mlflow_uri, dataset, "artifacts")
    assert log_metrics(mlflow_uri, run.run_id, {"ndcg@10": 0.1, "coverage%": 12.0}) == {
        "ndcg_at_10": 0.1,
        "coverage_pct": 12.0,
    }
    report = tmp_path / "report"
    (report / "plots").mkdir(parents=True)
    (report / "evaluation.json").write_text('{"ndcg@10": 0.1}')
    (report / "plots" / "lift.txt").write_text("lift")
    log_artifacts(mlflow_uri, run.run_id, report, "evaluation")
    with pytest.raises(DataError, match="does not exist"):
        log_artifacts(mlflow_uri, run.run_id, tmp_path / "missing", "x")
    finish_pipeline_run(mlflow_uri, run.run_id)
    got = tracking_client(mlflow_uri).get_run(run.run_id)
    assert got.data.metrics["ndcg_at_10"] == 0.1 and got.data.metrics["coverage_pct"] == 12.0
    (tmp_path / "dl").mkdir()
    downloaded = Path(
        tracking_client(mlflow_uri).download_artifacts(run.run_id, "evaluation", str(tmp_path / "dl"))
    )
    assert (downloaded / "plots" / "lift.txt").read_text() == "lift"
    assert (downloaded / "evaluation.json").read_text() == '{"ndcg@10": 0.1}'


def test_default_local_store_keeps_everything_under_the_data_dir(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    config = TrackingConfig()
    uri = resolve_tracking_uri(config, data_dir)
    with start_pipeline_run(
        uri,
        config.experiment,
        "local",
        "a: {b: 1}\n",
        dataset,
        artifact_location=default_artifact_location(uri, config, data_dir),
    ) as run:
        run.log_artifacts(dataset / "items.parquet", "data")
    assert (data_dir / "mlflow.db").is_file()
    assert list((data_dir / "mlartifacts").rglob("items.parquet"))
    assert not (tmp_path / "mlruns").exists()
    assert tracking_client(uri).get_run(run.run_id).data.params["a.b"] == "1"


def test_fingerprint_covers_the_data_tables_not_the_generation_metadata(tmp_path: Path):
    """Two generations of one seed into different directories (different simulator.json: time, path) have one
    fingerprint; changing one event changes it."""
    import pyarrow.parquet as pq

    from recflow.simulator import SimulatorConfig, generate_dataset

    config = SimulatorConfig(users=60, items=40, days=2, seed=3)
    first, second = tmp_path / "first", tmp_path / "nested" / "second"
    generate_dataset(config, first, progress=False)
    time.sleep(0.01)
    generate_dataset(config, second, progress=False)
    assert (first / "simulator.json").read_text() != (second / "simulator.json").read_text()
    assert data_fingerprint(first) == data_fingerprint(second)
    (second / "quarantine.parquet").write_bytes(b"not a table of the dataset")
    assert data_fingerprint(first) == data_fingerprint(second)

    events = pq.read_table(second / "events.parquet").to_pandas()
    events.loc[0, "item_id"] = events["item_id"].iloc[-1] if events["item_id"].iloc[0] != events[
        "item_id"].iloc[-1] else "i999999"
    from recflow.io import write_dataset

    write_dataset(second, events=events)
    assert data_fingerprint(first) != data_fingerprint(second)
    (first / "users.parquet").unlink()
    with_users = data_fingerprint(second)
    assert data_fingerprint(first) != with_users  # a missing table is part of the fingerprint
    with pytest.raises(DataError, match="no events table"):
        data_fingerprint(tmp_path / "nested")


def test_run_names_are_readable_or_given(mlflow_uri: str, dataset: Path):
    from datetime import UTC, datetime

    from recflow.tracking import default_run_name

    assert default_run_name("training", datetime(2026, 12, 3, 13, 5, 9, tzinfo=UTC)) == "training-20261203-130509"
    config_yaml = dump_config(load_config())
    with start_pipeline_run(mlflow_uri, "test-names", None, config_yaml, dataset, pipeline_name="training") as r:
        pass
    name = tracking_client(mlflow_uri).get_run(r.run_id).info.run_name
    assert re_fullmatch(r"training-\d{8}-\d{6}", name)
    with start_pipeline_run(mlflow_uri, "test-names", "nightly-42", config_yaml, dataset) as r:
        pass
    assert tracking_client(mlflow_uri).get_run(r.run_id).info.run_name == "nightly-42"


def re_fullmatch(pattern: str, text: str) -> bool:
    import re

    return re.fullmatch(pattern, text) is not None


def test_run_ids_resolve_by_full_id_unique_prefix_or_name(mlflow_uri: str, dataset: Path):
    from recflow.tracking import find_run

    client = tracking_client(mlflow_uri)
    exp = client.create_experiment(f"test-prefix-{time.time_ns()}")
    name = client.get_experiment(exp).name
    # 17 runs: two of them share a first hex digit (pigeonhole), so a 1-character prefix is ambiguous
    ids = [client.create_run(exp, run_name=f"r{i}").info.run_id for i in range(17)]
    for run_id in ids[:3]:
        assert find_run(mlflow_uri, run_id).info.run_id == run_id
        assert find_run(mlflow_uri, run_id[:12], name).info.run_id == run_id
        assert find_run(mlflow_uri, run_id[:12]).info.run_id == run_id  # every experiment
    assert find_run(mlflow_uri, "r5", name).info.run_id == ids[5]
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) >= 2)
    with pytest.raises(DataError, match="ambiguous") as info:
        find_run(mlflow_uri, shared, name)
    for run_id in (i for i in ids if i.startswith(shared)):
        assert run_id in str(info.value)
    # a name that is also another run's id prefix is ambiguous too
    client.create_run(exp, run_name=ids[0][:8])
    with pytest.raises(DataError, match="ambiguous"):
        find_run(mlflow_uri, ids[0][:8], name)
    with pytest.raises(DataError, match="not found"):
        find_run(mlflow_uri, "fffffffffffffffe", name)


def test_tracking_store_is_found_from_the_config_files_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from recflow.tracking import require_existing_store, tracking_data_dir

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    config_file = project / "recflow.yaml"
    config_file.write_text("paths:\n  data_dir: data\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert tracking_data_dir(Path("data"), config_file) == project / "data"
    assert tracking_data_dir(Path("data")) == elsewhere / "data"
    assert tracking_data_dir(tmp_path / "abs", config_file) == tmp_path / "abs"
    uri = resolve_tracking_uri(TrackingConfig(), Path("data"), config_path=config_file)
    assert uri == "sqlite:///" + str(project / "data" / "mlflow.db")
    with pytest.raises(DataError, match="no MLflow tracking store"):
        require_existing_store(uri)
    assert not (project / "data").exists()


def test_an_unblessed_evaluation_is_recorded_with_its_report_and_overrides(mlflow_uri: str, dataset: Path,
                                                                            tmp_path: Path):
    from recflow.tracking import TAG_BLESSED, TAG_FAILED_CHECKS, TAG_GATE_OVERRIDES, record_evaluation

    run = _start(mlflow_uri, dataset, "unblessed")
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "report.html").write_text("<html>NOT BLESSED</html>")
    (out / "metrics.json").write_text('{"methods": {}}')
    (out / "blessing.json").write_text(json.dumps({
        "blessed": False, "reasons": ["ndcg@10 0.081 < floor 0.100"],
        "overrides": ["evaluator.thresholds.min_lift_over_popularity = null (default 0.0)"]}))
    tags = record_evaluation(mlflow_uri, [run.run_id], out)
    finish_pipeline_run(mlflow_uri, run.run_id)
    client = tracking_client(mlflow_uri)
    got = client.get_run(run.run_id)
    assert got.data.tags[TAG_BLESSED] == "false" == tags[TAG_BLESSED]
    assert got.data.tags[TAG_FAILED_CHECKS] == "ndcg@10 0.081 < floor 0.100"
    assert "min_lift_over_popularity = null" in got.data.tags[TAG_GATE_OVERRIDES]
    names = {a.path for a in client.list_artifacts(run.run_id, "evaluation")}
    assert names == {"evaluation/report.html", "evaluation/blessing.json", "evaluation/metrics.json"}
