"""The Evaluator's bounded-memory paths (issue 17): columns read, exclusions for held-out users only, and the
seeded user sample of the off-policy estimates."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from example_data import write_taste_group_examples

from recflow.evaluation.config import EvaluatorConfig
from recflow.evaluation.evaluator import _TRAIN_COLUMNS, _population, load_examples
from recflow.evaluation.metrics import ground_truth, interacted_items
from recflow.evaluation.run import sample_request_users


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    return write_taste_group_examples(tmp_path_factory.mktemp("examples"))


def test_interacted_items_for_some_users_are_the_same_sets(examples):
    train, held_out, _ = load_examples(examples, "test")
    full = interacted_items(train)
    users = sorted(held_out["user_id"].unique())[:20]
    some = interacted_items(train, users=users)
    assert some == {u: s for u, s in full.items() if u in set(users)}
    assert 0 < len(some) < len(full)
    mine = held_out[held_out["user_id"].isin(users)]
    assert ground_truth(mine, some) == ground_truth(mine, full)


def test_load_examples_reads_only_the_asked_columns_it_has(examples):
    train, held_out, _ = load_examples(examples, "test", (*_TRAIN_COLUMNS, "no_such_column"))
    everything, _, _ = load_examples(examples, "test")
    assert set(train.columns) == {c for c in everything.columns if c in _TRAIN_COLUMNS}
    pd.testing.assert_frame_equal(train, everything[list(train.columns)])
    assert "event_id" in everything.columns and "event_id" not in held_out.columns


def test_population_exclusions_are_those_of_the_sampled_users(examples):
    config = EvaluatorConfig(max_users=10, seed=3)
    pop = _population(examples, config)
    train, _, _ = load_examples(examples, config.split)
    full = interacted_items(train)
    assert len(pop.users) == 10 and set(pop.exclude) <= set(pop.users)
    assert pop.exclude == {u: full[u] for u in pop.users if u in full}
    assert _population(examples, config).users == pop.users  # seeded
    assert pop.eligible > 10 and f"sample of 10 of {pop.eligible:,} held-out users" in pop.sample_note(config)
    whole = _population(examples, EvaluatorConfig(max_users=pop.eligible, seed=3))
    assert whole.sample_note(config) == "" and len(whole.users) == pop.eligible


def test_a_binding_user_sample_is_stated_in_the_report(examples, tmp_path):
    import json

    from recflow.baselines import PopularityRecommender
    from recflow.evaluation.evaluator import evaluate_recommenders
    from recflow.evaluation.report import METRICS_NAME, write_report

    train, _, items = load_examples(examples, "test")
    candidate = PopularityRecommender().fit(train, items)
    config = EvaluatorConfig(max_users=10, seed=3, baselines=("popularity",), baseline_tuning_trials=0)
    result = evaluate_recommenders(examples, candidate, config)
    assert result.n_users == 10 and result.eligible_users > 10
    write_report(tmp_path, result)
    doc = json.loads((tmp_path / METRICS_NAME).read_text())
    assert doc["eligible_users"] == result.eligible_users and "evaluator.max_users" in doc["user_sample"]
    assert "seeded sample of 10 of" in (tmp_path / "report.html").read_text()
    everyone = evaluate_recommenders(examples, candidate, config.model_copy(update={"max_users": None}))
    assert everyone.user_sample_note == "" and everyone.n_users == everyone.eligible_users


def _log(path: Path, n_users: int = 40, seed: int = 0, propensity: bool = True) -> pd.DataFrame:
    """A held-out log: each user sees 1-3 slates of 3 items and clicks some."""
    rng = np.random.default_rng(seed)
    rows = []
    t = pd.Timestamp("2026-01-01", tz="UTC")
    for u in range(n_users):
        for r in range(int(rng.integers(1, 4))):
            request = f"u{u}-r{r}"
            for pos in range(3):
                t += pd.Timedelta(seconds=1)
                item = f"i{int(rng.integers(0, 20))}"
                rows.append({"event_type": "impression", "timestamp": t, "user_id": f"u{u}", "item_id": item,
                             "request_id": request, "position": pos,
                             "propensity": 0.25 if propensity else None})
                if rng.random() < 0.3:
                    rows.append({"event_type": "click", "timestamp": t + pd.Timedelta(milliseconds=1),
                                 "user_id": f"u{u}", "item_id": item, "request_id": request, "position": pos,
                                 "propensity": None})
    frame = pd.DataFrame(rows)
    frame.to_parquet(path, index=False)
    return frame


def test_request_sample_only_when_the_pairs_bind(tmp_path):
    log = _log(tmp_path / "test.parquet")
    impressions = log[log["event_type"] == "impression"]
    decisions = len(impressions)
    assert sample_request_users(tmp_path / "test.parquet", 20, decisions * 20, seed=1) == (None, None, None)
    assert sample_request_users(tmp_path / "test.parquet", 20, None, seed=1) == (None, None, None)

    sample, chosen, note = sample_request_users(tmp_path / "test.parquet", 20, 30 * 20, seed=1)
    assert sample is not None and chosen is not None and note is not None
    assert "ope_max_scored_pairs" in note and f"of {decisions:,} decisions" in note
    assert 0 < int(impressions["request_id"].isin(chosen).sum()) <= 30  # the budget of decisions
    users = set(impressions.loc[impressions["request_id"].isin(chosen), "user_id"])
    assert set(sample["user_id"]) == users  # the chosen requests' users, with all their events
    whole = log[log["user_id"].isin(users)].sort_values("timestamp", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(sample[whole.columns], whole, check_dtype=False)
    again, again_chosen, _ = sample_request_users(tmp_path / "test.parquet", 20, 30 * 20, seed=1)
    pd.testing.assert_frame_equal(again, sample)  # seeded
    assert again_chosen is not None and list(again_chosen) == list(chosen)
    _, other, _ = sample_request_users(tmp_path / "test.parquet", 20, 30 * 20, seed=2)
    assert other is not None and set(other) != set(chosen)


def test_request_sample_needs_logged_propensities_and_request_ids(tmp_path):
    _log(tmp_path / "test.parquet", propensity=False)
    assert sample_request_users(tmp_path / "test.parquet", 20, 30 * 20, seed=1) == (None, None, None)
    log = _log(tmp_path / "test.parquet")
    log.loc[0, "request_id"] = None
    log.to_parquet(tmp_path / "test.parquet", index=False)
    assert sample_request_users(tmp_path / "test.parquet", 20, 30 * 20, seed=1) == (None, None, None)


def test_users_in_split_streams_the_train_users(examples):
    from recflow.evaluation.run import users_in_split
    from recflow.evaluation.slices import ranking_examples

    train, held_out, items = load_examples(examples, "test")
    asked = [*sorted(held_out["user_id"].unique())[:30], "nobody"]
    expected = set(asked) & set(train["user_id"])
    assert users_in_split(examples, "train", asked, batch_rows=7) == expected
    assert users_in_split(examples, "train", asked) == expected
    assert users_in_split(examples, "train", []) == set()
    # the slices' user types, computed for the pairs alone, are those of the whole train split
    pairs = ranking_examples(held_out, items, train)
    returning = users_in_split(examples, "train", pairs["user_id"].unique(), batch_rows=50)
    assert (np.where(pairs["user_id"].isin(returning), "returning", "new") == pairs["user_type"]).all()
    assert {"new", "returning"} == set(pairs["user_type"])


def test_the_slice_sample_size_is_configured_and_validated():
    from pydantic import ValidationError

    from recflow.config import load_config

    assert load_config(None, []).evaluator.max_slice_examples == 20_000  # defaults.yaml == the model's default
    assert load_config(None, ["evaluator.max_slice_examples=500"]).evaluator.max_slice_examples == 500
    with pytest.raises(ValidationError):
        EvaluatorConfig(max_slice_examples=0)


def test_request_sample_picks_the_requests_of_the_per_impression_draw(tmp_path):
    """The requests chosen from Arrow's distinct request ids are those the draw over every impression's id
    (np.unique of them, sorted, with their sizes) chooses: the same seeded sample as before."""
    log = _log(tmp_path / "test.parquet")
    impressions = log[log["event_type"] == "impression"]
    for seed, budget in ((1, 30), (2, 30), (3, 7), (4, 1)):
        _, chosen, _ = sample_request_users(tmp_path / "test.parquet", 20, budget * 20, seed=seed)
        requests, sizes = np.unique(impressions["request_id"].astype(str).to_numpy(), return_counts=True)
        order = np.random.default_rng(seed).permutation(len(requests))
        taken = max(1, int(np.searchsorted(np.cumsum(sizes[order]), budget, side="right")))
        assert chosen is not None and chosen.tolist() == requests[order[:taken]].tolist()


def test_the_tuning_reads_only_the_eval_event_columns_and_tunes_as_on_the_whole_split(examples, monkeypatch):
    from recflow.baseline_tuning import tune_baselines
    from recflow.evaluation import evaluator
    from recflow.evaluation.evaluator import _EVENT_COLUMNS, configured_params, tune_configured_baselines
    from recflow.examplegen import read_split

    config = EvaluatorConfig(baselines=("popularity", "item_knn"), tuned_baselines=("item_knn",),
                             baseline_tuning_trials=2, max_users=30, seed=4)
    train, _, items = load_examples(examples, config.split, _TRAIN_COLUMNS)
    whole = read_split(examples, "eval")  # every column, as the tuning read it before
    assert set(whole.columns) > set(_EVENT_COLUMNS)
    whole["user_id"], whole["item_id"] = whole["user_id"].astype(str), whole["item_id"].astype(str)
    want = tune_baselines(train, whole, items, names=["item_knn"], budget=2, seed=4, k=config.k,
                          exclude_train_items=config.exclude_train_items, metric=config.metric_key(),
                          max_users=30, initial_params=configured_params(config))
    reads = []
    real_read = evaluator._read_table

    def recording_read(path, required, columns=None):
        reads.append((Path(path).name, None if columns is None else tuple(columns)))
        return real_read(path, required, columns)

    monkeypatch.setattr(evaluator, "_read_table", recording_read)
    got, note = tune_configured_baselines(examples, train, items, config)
    assert reads == [("eval.parquet", _EVENT_COLUMNS)]
    assert note == "" and set(got) == {"item_knn"}
    assert got["item_knn"]["best_params"] == want["item_knn"].best_params
    assert got["item_knn"]["best_score"] == want["item_knn"].best_score
    assert [t["score"] for t in got["item_knn"]["trials"]] == [t["score"] for t in want["item_knn"].trials]
