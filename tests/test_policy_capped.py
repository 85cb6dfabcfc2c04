"""The policy's training data read in chunks, with and without the seeded cap ``policy.max_decisions``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recflow.policy.config import PolicyConfig
from recflow.policy.logged_data import (
    DECISION_STATES_FILE,
    BanditData,
    build_bandit_data,
    load_bandit_data,
    load_capped_bandit_data,
)
from recflow.training.history_ranking import write_decision_states
from tests.test_policy import _events, _world

ARRAYS = ("request_ids", "user_ids", "item_ids", "positions", "propensities", "rewards", "clicks", "add_to_carts",
          "purchases", "global_features", "user_embeddings")


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    return _world()


def _write(world, root: Path, events: pd.DataFrame, states: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    events.to_parquet(root / "train.parquet", index=False)
    pd.DataFrame({"item_id": world["item_ids"][:-2], "embedding": list(world["items"][:-2])}).to_parquet(
        root / "item_embeddings.parquet", index=False)  # two shown items without an embedding: dropped
    pd.DataFrame({"user_id": world["user_ids"], "embedding": list(world["users"])}).to_parquet(
        root / "user_embeddings.parquet", index=False)
    if states:  # a point-in-time state for every other impression
        imp = events[events["event_type"] == "impression"].iloc[::2]
        seconds = (pd.to_datetime(imp["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        rng = np.random.default_rng(5)
        write_decision_states(root, imp["user_id"].to_numpy(), seconds.to_numpy(),
                              rng.normal(size=(len(imp), world["items"].shape[1])).astype(np.float32))
    return root / "train.parquet"


def _sorted(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _capped(world, path: Path, config: PolicyConfig, cap: int, batch_rows: int) -> BanditData | None:
    items = world["item_ids"][:-2], world["items"][:-2]
    states = path.parent / DECISION_STATES_FILE
    return load_capped_bandit_data(path, *items, world["user_ids"], world["users"], config, cap,
                                   states_path=states, batch_rows=batch_rows)


def _assert_rows_equal(part: BanditData, whole: BanditData, rows: np.ndarray) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[rows], err_msg=name)


@pytest.mark.parametrize("variant", ["logged", "estimated_no_request_ids", "decision_states"])
def test_chunked_reading_without_a_binding_cap_equals_the_whole_split(world, tmp_path, variant):
    events = _events(world, 60, seed=11, with_propensity=variant == "logged")
    if variant == "estimated_no_request_ids":
        events.loc[events.index % 3 == 0, "request_id"] = None  # impressions and feedback without a request
    events = _sorted(events)
    path = _write(world, tmp_path, events, states=variant == "decision_states")
    config = PolicyConfig(num_arms=4)
    whole = load_bandit_data(path, tmp_path, config)
    for batch_rows in (7, 64, 10_000):  # chunks splitting requests, and the whole split in one chunk
        part = _capped(world, path, config, cap=len(whole), batch_rows=batch_rows)
        assert part is not None
        _assert_rows_equal(part, whole, np.arange(len(whole)))
        np.testing.assert_array_equal(part.arm_rows, whole.arm_rows)
        np.testing.assert_array_equal(part.chosen_arms, whole.chosen_arms)
        assert part.notes == whole.notes and part.propensity_source == whole.propensity_source
        assert part.layout == whole.layout
    assert any("without an embedding dropped" in n for n in whole.notes)
    if variant == "decision_states":
        assert any("point-in-time" in n for n in whole.notes)
    # The default (no cap) path of load_bandit_data is unchanged: the same as building from the whole frame.
    direct = build_bandit_data(events, world["item_ids"][:-2], world["items"][:-2], world["user_ids"],
                               world["users"], config, decision_states=whole_states(tmp_path))
    _assert_rows_equal(direct, whole, np.arange(len(whole)))


def whole_states(root: Path) -> pd.DataFrame | None:
    path = root / DECISION_STATES_FILE
    return pd.read_parquet(path) if path.is_file() else None


def test_a_binding_cap_samples_seeded_decisions_and_says_so(world, tmp_path):
    events = _sorted(_events(world, 80, seed=12))
    path = _write(world, tmp_path, events, states=True)
    config = PolicyConfig(num_arms=4, seed=3)
    whole = load_bandit_data(path, tmp_path, config)
    cap = len(whole) // 3
    part = _capped(world, path, config, cap=cap, batch_rows=16)
    assert part is not None and len(part) == cap
    rows = np.sort(np.random.default_rng(3).choice(len(whole), cap, replace=False))
    _assert_rows_equal(part, whole, rows)  # the sampled decisions' features, rewards and propensities
    assert f"trained on {cap} of {len(whole)} decisions (policy.max_decisions, sampled with seed 3" in " ".join(
        part.notes)
    again = _capped(world, path, config, cap=cap, batch_rows=50)
    assert again is not None
    np.testing.assert_array_equal(again.request_ids, part.request_ids)
    np.testing.assert_array_equal(again.arm_rows, part.arm_rows)
    other = _capped(world, path, config.model_copy(update={"seed": 4}), cap=cap, batch_rows=16)
    assert other is not None and not np.array_equal(other.request_ids, part.request_ids)


def test_train_policy_records_the_cap_and_an_unordered_split_falls_back(world, tmp_path):
    from recflow.policy.trainer import train_policy

    config = PolicyConfig(num_arms=4, epochs=1, batch_size=32, hidden_units=(8,), max_decisions=50)
    for name, events in (("ordered", _sorted(_events(world, 60, seed=13))), ("unordered", _events(world, 60, 13))):
        root = tmp_path / name
        _write(world, root, events)
        result = train_policy(root, root, root / "out", config)
        meta = json.loads((root / "out" / "policy_meta.json").read_text())
        assert result.n_decisions == 50 == meta["metrics"]["n_decisions"]
        assert any("trained on 50 of" in n and "policy.max_decisions" in n for n in meta["notes"])
        capped = _capped(world, root / "train.parquet", config, cap=50, batch_rows=32)
        assert (capped is None) == (name == "unordered")  # out of time order: loaded whole, sampled after
