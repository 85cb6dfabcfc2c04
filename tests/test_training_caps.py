"""Training budgets (recflow.training.caps) and the streamed transformed rows (recflow.training.transformed):
a capped model trains on a seeded sample that the report and notes state; the streamed rows equal the whole
split's at those rows; the sequence trainer's slim datasets hold the same ranking rows and item prior as the
whole splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_examplegen import write_world

from recflow import bundle_layout
from recflow.config import ValidationConfig
from recflow.errors import DataError
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.features.transform import TransformConfig, load_transformed, run_transform
from recflow.training.caps import STREAM_RANKING_EVAL, STREAM_RANKING_TRAIN, cap_mask, cap_rows_by_key, row_keys
from recflow.training.tfrs_trainer import TrainerConfig, load_inputs, train_tfrs
from recflow.training.transformed import load_transformed_rows, load_transformed_sample

pytestmark = pytest.mark.slow

SMALL = TrainerConfig(sequence={"epochs": 2, "embedding_dim": 16}, ranking_epochs=1, history_ranking=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("caps")
    src = write_world(base / "src")
    run_example_gen(src, base / "ex", ExampleGenConfig(), ValidationConfig())
    run_transform(base / "ex", base / "tf", TransformConfig())
    return base


def test_cap_mask_keeps_all_below_the_cap_and_a_seeded_sample_above() -> None:
    mask = np.arange(100) % 3 != 0  # 66 rows
    assert cap_mask(mask, None, 1, 1).mask is not None
    for cap in (None, 66, 1000):
        same = cap_mask(mask, cap, 1, 1)
        assert np.array_equal(same.mask, mask) and not same.binds and same.report() is None
    capped = cap_mask(mask, 10, 7, 1)
    assert capped.binds and capped.mask.sum() == 10 and not (capped.mask & ~mask).any()
    assert capped.report() == {"kept": 10, "of": 66, "cap": 10}
    assert "10 of 66" in capped.note("x", "some_key") and "trainer.some_key" in capped.note("x", "some_key")
    assert np.array_equal(cap_mask(mask, 10, 7, 1).mask, capped.mask)  # seeded
    assert not np.array_equal(cap_mask(mask, 10, 8, 1).mask, capped.mask)  # another seed, another sample
    assert not np.array_equal(cap_mask(mask, 10, 7, 2).mask, capped.mask)  # another model's stream
    with pytest.raises(ValueError, match=">= 1"):
        cap_mask(mask, 0, 7, 1)


def test_streamed_rows_equal_the_whole_split_at_those_rows(world: Path) -> None:
    graph = world / "tf" / bundle_layout.TRANSFORM_GRAPH_DIR
    split = world / "tf" / bundle_layout.TRANSFORMED_DIR / "train"
    whole = load_transformed(split, graph)
    imp = int(np.bincount(whole["event_code"]).argmax())  # any code with rows
    columns = ["event_code", "item_idx", "clicked"]
    for batch in (7, 65536):  # several batches and one
        rows = load_transformed_rows(split, graph, columns, lambda b: b["event_code"] == imp, batch=batch)
        keep = whole["event_code"] == imp
        assert keep.any() and set(rows) == {*columns, "row_id"}
        for c in rows:
            np.testing.assert_array_equal(rows[c], whole[c][keep])
    everything = load_transformed_rows(split, graph, columns, batch=5)
    np.testing.assert_array_equal(everything["row_id"], whole["row_id"])
    with pytest.raises(DataError, match="no_such_feature"):
        load_transformed_rows(split, graph, ["no_such_feature"])
    with pytest.raises(DataError, match="mask of shape"):
        load_transformed_rows(split, graph, columns, lambda b: np.ones(2, bool))


def test_sequence_inputs_hold_the_ranking_rows_and_the_same_item_prior(world: Path) -> None:
    slim = load_inputs(world / "ex", world / "tf", SMALL)
    whole = load_inputs(world / "ex", world / "tf", SMALL.model_copy(update={"retrieval_model": "two_tower"}))
    np.testing.assert_array_equal(slim.item_prob, whole.item_prob)
    imp = slim.spec["event_codes"]["impression"]
    for part, full in ((slim.train, whole.train), (slim.evald, whole.evald)):
        keep = full["event_code"] == imp
        assert keep.any()
        for c in part:
            np.testing.assert_array_equal(part[c], full[c][keep])
    assert not slim.pos_train.any() and len(slim.pos_train) == len(slim.train["row_id"])


def test_caps_bind_are_reported_and_noted(world: Path, tmp_path: Path) -> None:
    whole = train_tfrs(world / "ex", world / "tf", tmp_path / "whole", SMALL)
    n_seq = whole.history["retrieval"]["train_examples"]
    n_eval = whole.history["retrieval"]["eval_examples"]
    n_rank = whole.history["ranking"]["train_examples"]
    n_rank_eval = whole.history["ranking"]["eval_examples"]
    assert whole.history["retrieval"]["train_examples_sampled"] is None
    assert whole.history["ranking"]["train_impressions_sampled"] is None
    assert whole.history["ranking"]["eval_impressions_sampled"] is None
    caps = {"sequence_max_train_examples": n_seq // 2, "sequence_max_eval_examples": n_eval // 2,
            "ranking_max_train_impressions": n_rank // 2, "ranking_max_eval_impressions": n_rank_eval // 2}
    capped = train_tfrs(world / "ex", world / "tf", tmp_path / "capped", SMALL.model_copy(update=caps))
    retrieval, ranking = capped.history["retrieval"], capped.history["ranking"]
    assert retrieval["train_examples"] == n_seq // 2 and retrieval["eval_examples"] == n_eval // 2
    assert retrieval["train_examples_sampled"] == {"kept": n_seq // 2, "of": n_seq, "cap": n_seq // 2}
    assert retrieval["eval_examples_sampled"] == {"kept": n_eval // 2, "of": n_eval, "cap": n_eval // 2}
    assert ranking["train_examples"] == n_rank // 2
    assert ranking["train_impressions_sampled"] == {"kept": n_rank // 2, "of": n_rank, "cap": n_rank // 2}
    assert ranking["eval_examples"] == n_rank_eval // 2
    assert ranking["eval_impressions_sampled"] == {"kept": n_rank_eval // 2, "of": n_rank_eval,
                                                   "cap": n_rank_eval // 2}
    for key in caps:
        assert any(f"trainer.{key}" in n for n in capped.notes), (key, capped.notes)
    assert capped.metrics["retrieval_eval_top10_accuracy"] != whole.metrics["retrieval_eval_top10_accuracy"]


def test_row_key_sample_is_seeded_and_independent_of_order() -> None:
    ids = np.arange(1000, 1300)
    mask = ids % 2 == 0
    capped = cap_rows_by_key(mask, ids, 40, 5, 3)
    assert capped.binds and capped.mask.sum() == 40 and not (capped.mask & ~mask).any()
    assert capped.report() == {"kept": 40, "of": 150, "cap": 40}
    perm = np.random.default_rng(0).permutation(len(ids))  # the same rows in another order: the same sample
    shuffled = cap_rows_by_key(mask[perm], ids[perm], 40, 5, 3)
    assert set(ids[perm][shuffled.mask]) == set(ids[capped.mask])
    assert set(ids[cap_rows_by_key(mask, ids, 40, 6, 3).mask]) != set(ids[capped.mask])
    assert np.array_equal(row_keys(ids, 5, 3), row_keys(ids, 5, 3))
    assert not cap_rows_by_key(mask, ids, None, 5, 3).binds
    with pytest.raises(ValueError, match=">= 1"):
        cap_rows_by_key(mask, ids, 0, 5, 3)


def test_streamed_sample_equals_the_whole_split_sample(world: Path) -> None:
    graph = world / "tf" / bundle_layout.TRANSFORM_GRAPH_DIR
    split = world / "tf" / bundle_layout.TRANSFORMED_DIR / "train"
    whole = load_transformed(split, graph)
    code = int(np.bincount(whole["event_code"]).argmax())
    keep = whole["event_code"] == code
    cap = int(keep.sum()) // 4
    expected = cap_rows_by_key(keep, whole["row_id"], cap, 42, STREAM_RANKING_TRAIN).mask
    for batch in (5, 64, 65536):  # pruned many times, a few times, never
        rows, selected = load_transformed_sample(split, graph, ["event_code", "item_idx"],
                                                 lambda b: b["event_code"] == code, cap, 42, STREAM_RANKING_TRAIN,
                                                 batch=batch)
        assert selected == int(keep.sum())
        for c in rows:
            np.testing.assert_array_equal(rows[c], whole[c][expected])
    rows, selected = load_transformed_sample(split, graph, ["event_code"], lambda b: b["event_code"] == code,
                                             None, 42, STREAM_RANKING_TRAIN)
    np.testing.assert_array_equal(rows["row_id"], whole["row_id"][keep])


def test_ranking_cap_streamed_with_the_sequence_model_equals_the_two_tower_sample(world: Path) -> None:
    slim_all = load_inputs(world / "ex", world / "tf", SMALL)
    imp = slim_all.spec["event_codes"]["impression"]
    n_rank = int(((slim_all.train["event_code"] == imp) & (slim_all.train["clicked"] >= 0)).sum())
    config = SMALL.model_copy(update={"ranking_max_train_impressions": n_rank // 3})
    slim = load_inputs(world / "ex", world / "tf", config)
    assert slim.ranking_sample == {"kept": n_rank // 3, "of": n_rank, "cap": n_rank // 3}
    assert slim_all.ranking_sample is None
    whole = load_inputs(world / "ex", world / "tf", config.model_copy(update={"retrieval_model": "two_tower"}))
    eligible = (whole.train["event_code"] == imp) & (whole.train["clicked"] >= 0)
    expected = cap_rows_by_key(eligible, whole.train["row_id"], n_rank // 3, config.seed, STREAM_RANKING_TRAIN)
    for c in slim.train:
        np.testing.assert_array_equal(slim.train[c], whole.train[c][expected.mask])
    for c in slim.evald:  # the eval split whole
        np.testing.assert_array_equal(slim.evald[c], slim_all.evald[c])
    # an eval cap: the eval split's streamed sample is the two-tower path's whole-split sample, the train one unchanged
    n_eval = int(((slim_all.evald["event_code"] == imp) & (slim_all.evald["clicked"] >= 0)).sum())
    both = config.model_copy(update={"ranking_max_eval_impressions": n_eval // 3})
    slim_eval = load_inputs(world / "ex", world / "tf", both)
    assert slim_eval.ranking_eval_sample == {"kept": n_eval // 3, "of": n_eval, "cap": n_eval // 3}
    assert slim_eval.ranking_sample == slim.ranking_sample and slim.ranking_eval_sample is None
    for c in slim_eval.train:
        np.testing.assert_array_equal(slim_eval.train[c], slim.train[c])
    eligible_eval = (whole.evald["event_code"] == imp) & (whole.evald["clicked"] >= 0)
    expected_eval = cap_rows_by_key(eligible_eval, whole.evald["row_id"], n_eval // 3, config.seed,
                                    STREAM_RANKING_EVAL)
    for c in slim_eval.evald:
        np.testing.assert_array_equal(slim_eval.evald[c], whole.evald[c][expected_eval.mask])
