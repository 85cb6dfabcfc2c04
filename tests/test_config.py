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
