"""The Evaluator's compact train split (issue 17): train's string columns held as categoricals give exactly what
the object columns give: the frame's values, the exclusions and relevant items, the interaction counts, every
baseline's fitted lists and the baseline tuning's choices and scores; and string codes of a categorical (with
unused categories and nulls) equal those of its strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from example_data import write_taste_group_examples

from recflow.baseline_tuning import tune_baselines
from recflow.baselines import (
    COUNT_EVENT_WEIGHTS,
    DEFAULT_EVENT_WEIGHTS,
    make_baseline,
    string_codes,
    weighted_rows,
)
from recflow.evaluation.beyond_accuracy import interaction_counts
from recflow.evaluation.config import EvaluatorConfig
from recflow.evaluation.evaluator import (
    _TRAIN_COLUMNS,
    _population,
    load_examples,
    read_split_compact,
    read_split_objects,
    str_column,
)
from recflow.evaluation.metrics import interacted_items, relevant_by_user, sampled_exclusions, str_isin
from recflow.training.columnar import object_values

T0 = pd.Timestamp("2026-01-05", tz="UTC")
KINDS = ["view", "click", "add_to_cart", "purchase", "impression", "remove_from_cart"]


def _split(root: Path, seed: int = 0, n: int = 4000) -> Path:
    """A train split with sessions (30% null), a few null item ids, user ids and event types, ties in time and
    rows out of time order (the reader sorts them)."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{u}" for u in rng.integers(0, 200, n)], dtype=object)
    items = np.array([f"i{i}" for i in rng.integers(0, 150, n)], dtype=object)
    sessions = np.array([f"s{s}" for s in rng.integers(0, 600, n)], dtype=object)
    sessions[rng.random(n) < 0.3] = None
    users[rng.random(n) < 0.005] = None
    items[rng.random(n) < 0.005] = None
    kinds = rng.choice(KINDS, n, p=[0.35, 0.2, 0.1, 0.05, 0.25, 0.05]).astype(object)
    kinds[rng.random(n) < 0.005] = None
    frame = pd.DataFrame({
        "event_id": [f"e{i:06d}" for i in rng.permutation(n)],
        "user_id": users,
        "item_id": items,
        "event_type": kinds,
        "timestamp": T0 + pd.to_timedelta(rng.integers(0, 500, n) * 7, unit="m"),
        "session_id": sessions,
    })
    root.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / "train.parquet", index=False)
    return root / "train.parquet"


def _as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = object_values(out[name])
    return out


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    return write_taste_group_examples(tmp_path_factory.mktemp("examples"))


def test_compact_split_holds_the_object_split_values(tmp_path):
    path = _split(tmp_path)
    compact = read_split_compact(path, _TRAIN_COLUMNS)
    objects = read_split_objects(path, _TRAIN_COLUMNS)
    assert all(isinstance(compact[c].dtype, pd.CategoricalDtype)
               for c in ("user_id", "item_id", "event_type", "session_id"))
    pd.testing.assert_frame_equal(_as_objects(compact), objects)
    assert compact.memory_usage(deep=False).sum() < objects.memory_usage(deep=False).sum() * 0.7
    for column in ("user_id", "item_id"):  # the ids as the Evaluator reads them: missing ones are "None"
        as_str = str_column(compact[column])
        assert isinstance(as_str.dtype, pd.CategoricalDtype)
        assert object_values(as_str).tolist() == objects[column].astype(str).tolist()
        assert list(as_str.cat.categories) == sorted(as_str.cat.categories)


def test_string_codes_of_a_categorical_equal_those_of_its_strings(tmp_path):
    compact = read_split_compact(_split(tmp_path), _TRAIN_COLUMNS)
    rows = np.flatnonzero(compact["event_type"].isin(["view", "click"]).to_numpy())  # leaves categories unused
    for column in ("user_id", "item_id", "event_type", "session_id"):
        values = compact[column].iloc[rows]
        codes, ids = string_codes(values)
        expected_codes, expected_ids = string_codes(object_values(values))
        np.testing.assert_array_equal(codes, expected_codes)
        np.testing.assert_array_equal(ids, expected_ids)
    for weights in (DEFAULT_EVENT_WEIGHTS, COUNT_EVENT_WEIGHTS, {"view": 1.0, "click": 2.0, "purchase": 3.0}):
        rows, values = weighted_rows(compact["event_type"], weights)
        expected = _as_objects(compact)["event_type"].map(weights).fillna(0.0).to_numpy(np.float64)
        np.testing.assert_array_equal(rows, np.flatnonzero(expected > 0))
        np.testing.assert_array_equal(values, expected[expected > 0])
        for got, want in zip(weighted_rows(_as_objects(compact)["event_type"], weights), (rows, values), strict=True):
            np.testing.assert_array_equal(got, want)
    wanted = pd.Index(["u1", "u7", "None", "u150"])
    np.testing.assert_array_equal(str_isin(compact["user_id"], wanted),
                                  np.isin(object_values(compact["user_id"]).astype(str), wanted))


def test_exclusions_counts_and_relevant_items_are_the_same(examples):
    compact, held_out, _ = load_examples(examples, "test", _TRAIN_COLUMNS, compact=True)
    objects, _, _ = load_examples(examples, "test", _TRAIN_COLUMNS)
    assert isinstance(compact["user_id"].dtype, pd.CategoricalDtype)
    users = sorted(held_out["user_id"].unique())
    assert interacted_items(compact) == interacted_items(objects)
    assert interacted_items(compact, users=users[:15]) == interacted_items(objects, users=users[:15])
    assert sampled_exclusions(compact, users) == sampled_exclusions(objects, users)
    assert relevant_by_user(compact, held_out, True, users_per_chunk=7) == relevant_by_user(objects, held_out, True)
    pd.testing.assert_series_equal(interaction_counts(compact, ["i000", "zzz"]),
                                   interaction_counts(objects, ["i000", "zzz"]))


def test_population_train_is_compact_and_samples_as_before(examples):
    config = EvaluatorConfig(max_users=25, seed=5)
    pop = _population(examples, config)
    assert isinstance(pop.train["item_id"].dtype, pd.CategoricalDtype)
    objects, held_out, _ = load_examples(examples, config.split, _TRAIN_COLUMNS)
    truth = relevant_by_user(objects, held_out, True)
    assert pop.eligible == len(truth)
    assert pop.truth == [truth[u] for u in pop.users]
    assert pop.exclude == sampled_exclusions(objects, pop.users)


@pytest.mark.parametrize("name", ["popularity", "als", "item_knn", "content", "bpr", "ease", "most_viewed",
                                  "most_recent", "coview"])
def test_every_baseline_fits_the_same_on_the_compact_split(examples, tmp_path, name):
    compact, held_out, items = load_examples(examples, "test", _TRAIN_COLUMNS, compact=True)
    objects, _, _ = load_examples(examples, "test", _TRAIN_COLUMNS)
    users = sorted(held_out["user_id"].unique()) + ["nobody"]
    exclude = sampled_exclusions(objects, users)
    params = {"half_life_days": 3.0} if name == "popularity" else {}
    a = make_baseline(name, seed=1, **params).fit(compact, items).recommend(users, 10, exclude)
    b = make_baseline(name, seed=1, **params).fit(objects, items).recommend(users, 10, exclude)
    assert a == b


def test_every_baseline_fits_the_same_on_a_log_with_sessions_and_nulls(tmp_path):
    path = _split(tmp_path, seed=3)
    compact = read_split_compact(path, _TRAIN_COLUMNS)
    compact["user_id"], compact["item_id"] = str_column(compact["user_id"]), str_column(compact["item_id"])
    objects = read_split_objects(path, _TRAIN_COLUMNS).astype({"user_id": str, "item_id": str})
    users = [f"u{u}" for u in range(0, 210, 3)]
    for name in ("popularity", "als", "item_knn", "most_viewed", "most_recent", "coview"):
        a = make_baseline(name, seed=1).fit(compact, None).recommend(users, 10, {})
        b = make_baseline(name, seed=1).fit(objects, None).recommend(users, 10, {})
        assert a == b, name


def test_tuning_chooses_and_scores_the_same_on_the_compact_split(examples):
    compact, _, items = load_examples(examples, "test", _TRAIN_COLUMNS, compact=True)
    objects, _, _ = load_examples(examples, "test", _TRAIN_COLUMNS)
    _, validation, _ = load_examples(examples, "eval", ("user_id", "item_id", "event_type"))
    names = ("als", "item_knn", "coview")
    a = tune_baselines(compact, validation, items, names=names, budget=3, seed=2, k=10)
    b = tune_baselines(objects, validation, items, names=names, budget=3, seed=2, k=10)
    assert {n: r.to_dict() | {"seconds": 0} for n, r in a.items()} == \
        {n: r.to_dict() | {"seconds": 0} for n, r in b.items()}
