"""configs/shop_scale.yaml (issue 17): it loads, and it changes only the engines and the training budgets --
never the data, a model's architecture or a release gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from recflow.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "shop_scale.yaml"

#: The only settings the preset may change (engines and seeded training budgets).
ALLOWED = {
    ("example_gen", "engine"),
    ("transform", "prepare_engine"),
    ("trainer", "sequence_max_train_examples"),
    ("trainer", "sequence_max_eval_examples"),
    ("trainer", "ranking_max_train_impressions"),
    ("trainer", "ranking_max_eval_impressions"),
    ("trainer", "history_ranking_max_train_impressions"),
    ("trainer", "history_ranking_max_eval_impressions"),
    ("policy", "max_decisions"),
}


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in data.items():
        out |= _leaves(value, (*prefix, key)) if isinstance(value, dict) else {(*prefix, key)}
    return out


def test_the_preset_loads_and_sets_only_engines_and_budgets():
    assert _leaves(yaml.safe_load(PRESET.read_text(encoding="utf-8"))) == ALLOWED
    config = load_config(PRESET)
    default = load_config(None)
    assert config.example_gen.engine == "beam" and config.transform.prepare_engine == "beam"
    assert config.trainer.sequence_max_train_examples and config.policy.max_decisions
    # everything else, the world, the gates and the release rules included, is the default
    for section in ("simulator", "evaluator", "release", "serving", "monitoring", "tracking"):
        assert getattr(config, section) == getattr(default, section), section


def test_overrides_still_win_over_the_preset():
    config = load_config(PRESET, ["trainer.sequence_max_train_examples=null", "example_gen.engine=pandas"])
    assert config.trainer.sequence_max_train_examples is None and config.example_gen.engine == "pandas"
