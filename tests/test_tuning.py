"""Hyperparameter search: the config, applying the best parameters, the tuner in the compiled DAG only when
enabled, and a real two-trial Optuna search on transformed data whose result overrides the trainer config."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kfp import compiler
from test_examplegen import write_world

from recflow.config import RecflowConfig, ValidationConfig, dump_config
from recflow.errors import ConfigError, DataError
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.features.transform import TransformConfig, run_transform
from recflow.pipeline_config import PipelineConfig
from recflow.training.tfrs_trainer import TrainerConfig
from recflow.tuning import (
    BEST_PARAMS_NAME,
    TuningConfig,
    apply_best_params,
    read_best_params,
    trial_config,
    tuned_config_yaml,
)


def test_config_defaults_off_and_rejects_bad_spaces():
    assert TuningConfig().enabled is False
    with pytest.raises(ValueError, match="learning_rate"):
        TuningConfig(learning_rate=(0.5, 0.1))
    with pytest.raises(ValueError, match="batch_sizes"):
        TuningConfig(batch_sizes=())
    with pytest.raises(ValueError, match="extra"):
        TuningConfig(n_trails=3)


def test_best_params_override_only_the_tuned_fields(tmp_path: Path):
    trainer = TrainerConfig(epochs=7, seed=5)
    params = {"learning_rate": 0.123, "batch_size": 256, "embedding_dim": 16, "temperature": 0.3}
    (tmp_path / BEST_PARAMS_NAME).write_text(json.dumps({"params": params}))
    tuned = apply_best_params(trainer, tmp_path)
    assert tuned.model_dump() == {**trainer.model_dump(), **params}
    assert trial_config(trainer, params, epochs=2).epochs == 2 and trial_config(trainer, params, 99).epochs == 7
    with pytest.raises(ConfigError, match="not tunable"):
        apply_best_params(trainer, {"seed": 3})
    with pytest.raises(ConfigError, match="invalid"):
        apply_best_params(trainer, {"batch_size": 0})
    with pytest.raises(DataError, match="no tuning result"):
        read_best_params(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        read_best_params(tmp_path / "bad.json")
    text = tuned_config_yaml(dump_config(RecflowConfig()), tmp_path / BEST_PARAMS_NAME)
    tuned_all = RecflowConfig.model_validate(yaml.safe_load(text))
    assert tuned_all.trainer.learning_rate == 0.123 and tuned_all.trainer.embedding_dim == 16
    assert tuned_all.evaluator == RecflowConfig().evaluator


def _tasks(tmp_path: Path, tuning: TuningConfig | None) -> dict:
    from pipelines.definition import build_pipeline

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline(PipelineConfig(), tuning), package_path=str(out))
    spec, *platform = yaml.safe_load_all(out.read_text())
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():  # the exit handler's and the blessed branch's sub-DAGs
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {"tasks": tasks, "platform": platform}


def test_compiled_dag_has_the_tuner_only_when_enabled(tmp_path: Path):
    default = _tasks(tmp_path, None)["tasks"]
    steps = {"example-gen", "transform", "tfrs-trainer", "agents-trainer", "evaluator", "pusher"}
    assert "tuner" not in default and steps <= set(default)
    assert "tuner" not in _tasks(tmp_path, TuningConfig(enabled=False))["tasks"]
    compiled = _tasks(tmp_path, TuningConfig(enabled=True))
    tasks = compiled["tasks"]
    assert set(tasks["tuner"]["dependentTasks"]) == {"example-gen", "transform"}
    trainer = tasks["tfrs-trainer"]
    assert "tuner" in trainer["dependentTasks"]
    assert trainer["inputs"]["parameters"]["trainer_config"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "tuner"}}
    # everything else still gets the pipeline's own config sections
    assert "componentInputParameter" in tasks["agents-trainer"]["inputs"]["parameters"]["policy_config"]
    executors = compiled["platform"][0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "exec-tuner" in executors  # placed on the GPU pool like the trainer


@pytest.fixture(scope="module")
def transformed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tuning")
    src = write_world(base / "src", n_users=80, sessions=4)
    run_example_gen(src, base / "ex", ExampleGenConfig(), ValidationConfig())
    run_transform(base / "ex", base / "tf", TransformConfig())
    return base


@pytest.mark.slow
def test_two_trial_search_tracks_trials_and_feeds_the_trainer(
    transformed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import recflow.tuning as tuning_module
    from components.step_run import STATUS_DIR_ENV, Tracking, publish_record
    from components.tuner.component import tuner
    from recflow import tracking

    base = transformed
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.tracking_client(uri)
    experiment = tracking.get_or_create_experiment(client, "tuning-test", (tmp_path / "art").as_uri())
    assert experiment
    parent = tracking.open_pipeline_run(uri, "tuning-test", "run-key-1")
    settings = TuningConfig(enabled=True, n_trials=2, epochs=1, seed=7, startup_trials=1,
                            batch_sizes=(256,), embedding_dims=(8, 16))
    config = RecflowConfig().model_copy(update={"trainer": TrainerConfig(epochs=4)})
    artifact = SimpleNamespace(path=str(tmp_path / "tuning"), metadata={})
    status = tmp_path / "status"

    # Until the lead wires the section into RecflowConfig, the component falls back to TuningConfig():
    # make that fallback the tiny search.
    monkeypatch.setattr(tuning_module, "TuningConfig", lambda: settings)
    monkeypatch.setenv(STATUS_DIR_ENV, str(status))
    record = SimpleNamespace(path=str(tmp_path / "record"))
    tuned = tuner(SimpleNamespace(path=str(base / "ex")), SimpleNamespace(path=str(base / "tf")),
                  config.trainer.model_dump(mode="json"), settings.model_dump(mode="json"), artifact, record)
    # The heavy step writes its record; the light track task after it logs the record as the nested run.
    publish_record(record.path, {"experiment": "tuning-test"}, Tracking(uri, "run-key-1"))

    doc = json.loads((tmp_path / "tuning" / BEST_PARAMS_NAME).read_text())
    assert doc["n_trials"] == 2 and len(doc["trials"]) == 2
    best = doc["params"]
    assert doc["best_value"] == max(t["value"] for t in doc["trials"]) and 0.0 < doc["best_value"] <= 1.0
    assert best["batch_size"] == 256 and best["embedding_dim"] in (8, 16)
    assert 0.005 <= best["learning_rate"] <= 0.5 and 0.02 <= best["temperature"] <= 1.0
    assert artifact.metadata["best_value"] == doc["best_value"]

    # the override is applied: the trainer's config is the tuned one, full epochs kept
    trainer = TrainerConfig.model_validate(tuned)
    assert trainer.model_dump() == {**config.trainer.model_dump(), **best} and trainer.epochs == 4

    # the step is a nested run of the pipeline run, each trial a nested run of the step
    steps = tracking.child_runs(uri, parent)
    assert [r.data.tags[tracking.TAG_STEP] for r in steps] == ["tuner"]
    trials = tracking.child_runs(uri, steps[0].info.run_id)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.params["embedding_dim"] for r in trials} <= {"8", "16"}
    assert {r.data.params["epochs"] for r in trials} == {"1"}
    assert sorted(r.data.metrics["objective"] for r in trials) == sorted(t["value"] for t in doc["trials"])
    record = json.loads((status / "tuner.json").read_text())
    assert record["status"] == "succeeded" and record["metrics"]["trials"] == 2.0
