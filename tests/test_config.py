from pathlib import Path

import pytest
import yaml

from recflow.config import RecflowConfig, default_config_text, dump_config, load_config, parse_override
from recflow.errors import ConfigError


def _keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_defaults_file_matches_the_typed_defaults():
    """The shipped YAML documents every key, with the same value the model would default to."""
    shipped = yaml.safe_load(default_config_text())
    model = RecflowConfig().model_dump(mode="json")
    assert set(_keys(shipped)) == set(_keys(model))
    assert RecflowConfig.model_validate(shipped) == RecflowConfig()


def test_user_file_is_deep_merged_over_defaults(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("simulator:\n  users: 77\n")
    cfg = load_config(f)
    assert cfg.simulator.users == 77
    assert cfg.simulator.items == RecflowConfig().simulator.items


def test_overrides_win_and_are_parsed_as_yaml(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("simulator:\n  users: 77\n")
    cfg = load_config(f, ["simulator.users=12", "validation.max_bad_share=0.5"])
    assert cfg.simulator.users == 12
    assert cfg.validation.max_bad_share == 0.5
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("simulator:\n  userz: 5\n", "simulator.userz: unknown key"),
        ("simulator:\n  users: -5\n", "simulator.users: Input should be greater than 0"),
        ("simulator:\n  users: many\n", "simulator.users"),
        ("simulator: [1, 2\n", "not valid YAML (line"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("validation:\n  max_bad_share: 2\n", "validation.max_bad_share"),
    ],
)
def test_bad_config_gives_a_clear_error_naming_file_and_key(tmp_path: Path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(f) in str(err.value)
    assert expected in str(err.value)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/recflow.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["simulator.users"])


def test_dump_round_trips():
    cfg = load_config(None, ["simulator.seed=7"])
    assert RecflowConfig.model_validate(yaml.safe_load(dump_config(cfg))) == cfg


def _path_settings(cfg: RecflowConfig) -> dict[str, str]:
    return {"data_dir": str(cfg.paths.data_dir), "cache_dir": str(cfg.paths.resolved_cache_dir()),
            "model_store": str(cfg.model_store.path), "tracking_uri": str(cfg.tracking.tracking_uri),
            "artifact_location": str(cfg.tracking.artifact_location), "pipeline_root": cfg.pipeline.pipeline_root,
            "temp_dir": str(cfg.transform.temp_dir), "feedback_dir": str(cfg.serving.feedback_dir),
            "state_dir": str(cfg.monitoring.watch.state_dir)}


def test_relative_paths_in_a_config_file_resolve_against_its_directory_from_any_cwd(tmp_path: Path, monkeypatch):
    """`recflow --config /elsewhere/cfg.yaml ...` reads and writes the same places from any working directory;
    a path given with --set stays relative to the working directory."""
    from recflow.tracking import resolve_tracking_uri, tracking_data_dir

    project = (tmp_path / "project").resolve()
    project.mkdir()
    config = project / "cfg.yaml"
    config.write_text(
        "paths:\n  data_dir: work\n  cache_dir: ../shared/cache\nmodel_store:\n  path: ./models\n"
        "tracking:\n  tracking_uri: sqlite:///work/mlflow.db\n  artifact_location: mlartifacts/here\n"
        "pipeline:\n  pipeline_root: runs\ntransform:\n  temp_dir: tmp\nserving:\n  feedback_dir: feedback\n"
        "monitoring:\n  watch:\n    state_dir: ~/recflow-state\n")
    seen = []
    for cwd, path in ((tmp_path, config), (project, Path("cfg.yaml")), (tmp_path / "a" / "b", config)):
        cwd.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(cwd)
        cfg = load_config(path)
        seen.append(_path_settings(cfg))
        # the local tracking store the CLI derives from it is the same one too
        seen[-1]["default_store"] = resolve_tracking_uri(cfg.tracking.model_copy(update={"tracking_uri": None}),
                                                         tracking_data_dir(cfg.paths.data_dir))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0] == {
        "data_dir": str(project / "work"), "cache_dir": str(tmp_path.resolve() / "shared" / "cache"),
        "model_store": str(project / "models"), "tracking_uri": f"sqlite:///{project}/work/mlflow.db",
        "artifact_location": str(project / "mlartifacts" / "here"), "pipeline_root": str(project / "runs"),
        "temp_dir": str(project / "tmp"), "feedback_dir": str(project / "feedback"),
        "state_dir": str(Path("~/recflow-state").expanduser()),
        "default_store": f"sqlite:///{project}/work/mlflow.db"}
    # the defaults a file builds on are anchored too: a file that sets no path puts DATA_DIR beside it
    bare = project / "bare.yaml"
    bare.write_text("simulator:\n  users: 77\n")
    assert load_config(bare).paths.data_dir == project / "data"
    # URLs, absolute paths and a bare tracking URI scheme are left alone; --set paths are relative to the cwd
    elsewhere = tmp_path / "a" / "b"
    cfg = load_config(config, ["paths.data_dir=mine", "model_store.path=gs://bucket/models",
                               "tracking.tracking_uri=databricks", "pipeline.pipeline_root=/abs/runs"])
    assert cfg.paths.data_dir == elsewhere.resolve() / "mine"
    assert (cfg.model_store.path, cfg.tracking.tracking_uri) == ("gs://bucket/models", "databricks")
    assert cfg.pipeline.pipeline_root == "/abs/runs"
    # without a config file nothing is anchored: relative paths are the working directory's
    assert load_config(None, ["model_store.path=models"]).model_store.path == "models"
    assert load_config(None).paths.data_dir == Path("data")
