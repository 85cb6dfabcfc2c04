"""`recflow runs ...` and `recflow models ...` end to end through the CLI (real MLflow server, real store)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recflow.cli import main
from recflow.config import dump_config, load_config
from recflow.model_store import ModelStore, register_in_mlflow
from recflow.tracking import component_run, finish_pipeline_run, start_pipeline_run, tracking_client

pytest_plugins = ["servers"]

EXPERIMENT = "test-cli"


@pytest.fixture(scope="module")
def two_runs(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    data = tmp_path_factory.mktemp("data")
    (data / "events.parquet").write_bytes(b"e" * 100)
    ids = []
    for users, ndcg, name in ((100, 0.2, "baseline-run"), (200, 0.3, "candidate-run")):
        config = dump_config(load_config(overrides=[f"simulator.users={users}"]))
        run = start_pipeline_run(mlflow_uri, EXPERIMENT, name, config, data)
        with component_run(mlflow_uri, run.run_id, "train"):
            pass
        finish_pipeline_run(mlflow_uri, run.run_id, "FINISHED", {"ndcg@10": ndcg, "coverage": 0.5})
        ids.append(run.run_id)
    return ids[0], ids[1]


def _row(out: str, key: str) -> str:
    return next(line for line in out.splitlines() if re.search(rf"\s{re.escape(key)}\s", line))


def test_compare_marks_differences_with_delta_and_change(mlflow_uri: str, two_runs: tuple[str, str], capsys):
    a, b = two_runs
    assert main(["runs", "compare", a, b, "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    users = _row(out, "simulator.users")
    assert users.startswith("*") and "100" in users and "200" in users
    assert not _row(out, "simulator.seed").startswith("*")
    assert not _row(out, "data.fingerprint").startswith("*")
    ndcg = _row(out, "ndcg_at_10")
    assert ndcg.startswith("*") and "+0.1" in ndcg and "+50.0%" in ndcg
    coverage = _row(out, "coverage")
    assert not coverage.startswith("*") and "+0" in coverage
    assert "step_seconds.train" in out
    assert a in out and b in out


def test_compare_by_run_name_and_only_differences(mlflow_uri: str, two_runs: tuple[str, str], capsys):
    args = ["runs", "compare", "baseline-run", "candidate-run", "--experiment", EXPERIMENT, "--only-diff"]
    assert main([*args, "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    assert "simulator.users" in out and "ndcg_at_10" in out
    assert "simulator.seed" not in out and "lib.mlflow" not in out


def test_runs_list_shows_pipeline_runs(mlflow_uri: str, two_runs: tuple[str, str], capsys):
    assert main(["runs", "list", "--experiment", EXPERIMENT, "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    assert two_runs[0] in out and two_runs[1] in out and "FINISHED" in out
    assert "train" not in out
    assert main(["runs", "list", "--experiment", EXPERIMENT, "--all", "--tracking-uri", mlflow_uri]) == 0
    assert "train" in capsys.readouterr().out


def test_user_mistakes_are_messages_not_tracebacks(mlflow_uri: str, capsys):
    from servers import free_port

    assert main(["runs", "compare", "no-such-run", "nor-this", "--tracking-uri", mlflow_uri]) == 2
    err = capsys.readouterr().err
    assert "run 'no-such-run' not found" in err and "Traceback" not in err
    assert main(["runs", "list", "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 3
    assert "unreachable" in capsys.readouterr().err
    assert main(["runs", "list", "--experiment", "never-created", "--tracking-uri", mlflow_uri]) == 2
    assert "does not exist" in capsys.readouterr().err


def _push(store: ModelStore, tmp_path: Path, tag: str, ndcg: float, run_id: str | None = None):
    model = tmp_path / f"model-{tag}"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(tag.encode())
    evaluation = tmp_path / f"eval-{tag}"
    evaluation.mkdir()
    (evaluation / "blessing.json").write_text(json.dumps({"blessed": True, "metrics": {"ndcg@10": ndcg}}))
    return store.push({"model": model}, evaluation, {"mlflow_run_id": run_id})


def test_models_list_and_rollback_without_registry(tmp_path: Path, capsys):
    store = ModelStore(tmp_path / "store")
    root = str(tmp_path / "store")
    assert main(["models", "list", "--store", root]) == 0
    assert "empty" in capsys.readouterr().out
    for tag, ndcg in (("a", 0.21), ("b", 0.25)):
        _push(store, tmp_path, tag, ndcg)
    assert main(["models", "list", "--store", root]) == 0
    out = capsys.readouterr().out
    assert re.search(r"v0002\s+champion", out) and re.search(r"v0001\s+previous", out)
    assert "ndcg@10=0.25" in out and "ndcg@10=0.21" in out
    assert main(["models", "rollback", "--store", root, "--no-registry"]) == 0
    assert "champion: v0002 -> v0001" in capsys.readouterr().out
    assert store.champion().version == "v0001"
    assert main(["models", "rollback", "--store", root, "--no-registry"]) == 2
    assert "no previous champion" in capsys.readouterr().err
    assert main(["models", "rollback", "--to", "2", "--store", root, "--no-registry"]) == 0
    assert store.champion().version == "v0002"


def test_models_rollback_moves_the_registry_alias(mlflow_uri: str, tmp_path: Path, capsys):
    from recflow.tracking import get_or_create_experiment
    from serving.pyfunc import write_pyfunc_model

    name = "recflow-recommender"  # the default registered_model_name the CLI uses
    client = tracking_client(mlflow_uri)
    experiment_id = get_or_create_experiment(client, EXPERIMENT)
    store = ModelStore(tmp_path / "store")
    versions = []
    for tag, ndcg in (("a", 0.21), ("b", 0.25)):
        run_id = client.create_run(experiment_id, run_name=f"push-{tag}").info.run_id
        versions.append(  # registered the Pusher's way (a pyfunc model): the rollback moves the alias back to it
            register_in_mlflow(mlflow_uri, run_id, _push(store, tmp_path, tag, ndcg, run_id).bundle, name,
                               store=store, model_writer=write_pyfunc_model)
        )
    assert client.get_model_version_by_alias(name, "champion").version == versions[1]
    assert main(["models", "rollback", "--store", str(tmp_path / "store"), "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    assert "v0002 -> v0001" in out and f"alias champion -> version {versions[0]}" in out
    assert client.get_model_version_by_alias(name, "champion").version == versions[0]


def test_ids_match_across_commands_and_runs_list_shows_the_outcome(mlflow_uri: str, tmp_path: Path, capsys):
    """`models list` prints 12-character ids: `runs compare` takes them; `runs list` shows blessed, pushed
    version, data, NDCG@10 and lift; an unknown prefix is a message."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.parquet").write_bytes(b"e" * 10)
    experiment = "test-cli-ids"
    config = dump_config(load_config())
    blessed = start_pipeline_run(mlflow_uri, experiment, "nightly-1", config, data, pipeline_name="training")
    finish_pipeline_run(mlflow_uri, blessed.run_id, "FINISHED",
                        {"candidate.ndcg@10": 0.3, "popularity.ndcg@10": 0.2, "blessed": 1.0})
    tracking_client(mlflow_uri).set_tag(blessed.run_id, "recflow.bundle_version", "v0007")
    rejected = start_pipeline_run(mlflow_uri, experiment, None, config, data, pipeline_name="training")
    finish_pipeline_run(mlflow_uri, rejected.run_id, "FINISHED",
                        {"candidate.ndcg@10": 0.1, "popularity.ndcg@10": 0.2, "blessed": 0.0})
    args = ["--tracking-uri", mlflow_uri, "--experiment", experiment]
    assert main(["runs", "compare", blessed.run_id[:12], rejected.run_id[:12], *args]) == 0
    out = capsys.readouterr().out
    assert blessed.run_id in out and rejected.run_id in out
    assert main(["runs", "list", *args]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    for column in ("name", "status", "blessed", "pushed", "data", "ndcg@10", "lift"):
        assert column in header, column
    row_b = next(line for line in out.splitlines() if blessed.run_id in line).split()
    row_r = next(line for line in out.splitlines() if rejected.run_id in line).split()
    assert row_b[1:7] == ["nightly-1", "FINISHED", "yes", "v0007", blessed.data_fingerprint[:12], "0.3000"]
    assert row_b[7] == "+50.0%" and row_r[3:5] == ["no", "-"] and row_r[7] == "-50.0%"
    assert re.fullmatch(r"training-\d{8}-\d{6}", row_r[1])
    assert main(["runs", "compare", "0123456789ab", blessed.run_id, *args]) == 2
    err = capsys.readouterr().err
    assert "run '0123456789ab' not found" in err and "Traceback" not in err


def test_runs_are_found_from_another_directory_and_no_stray_store_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RECFLOW_CONFIG", raising=False)
    project = tmp_path / "project"
    (project / "ds").mkdir(parents=True)
    (project / "ds" / "events.parquet").write_bytes(b"e")
    config_file = project / "recflow.yaml"
    config_file.write_text("paths:\n  data_dir: data\n")
    from recflow.tracking import TrackingConfig, resolve_tracking_uri

    uri = resolve_tracking_uri(TrackingConfig(), Path("data"), config_path=config_file)
    run = start_pipeline_run(uri, "recflow", "from-project", "a: 1\n", project / "ds")
    finish_pipeline_run(uri, run.run_id)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["--config", str(config_file), "runs", "list"]) == 0
    assert run.run_id in capsys.readouterr().out
    assert main(["runs", "list"]) == 2  # no config file: ./data of this directory, which holds no store
    err = capsys.readouterr().err
    assert "no MLflow tracking store" in err and "--config" in err and "Traceback" not in err
    assert list(elsewhere.iterdir()) == []
