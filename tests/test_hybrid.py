"""Hybrid retrieval scores (recflow.models.hybrid): row standardisation, the convex blend, the weight choice."""

import numpy as np
import pytest

from recflow.errors import DataError
from recflow.models.hybrid import blend_scores, choose_blend_weight, zscore_rows


def test_rows_are_standardised_over_their_finite_scores():
    s = np.array([[1.0, 2.0, 3.0, -np.inf], [5.0, 5.0, 5.0, 5.0]])
    z = zscore_rows(s)
    finite = z[0, :3]
    assert finite.mean() == pytest.approx(0.0) and finite.std() == pytest.approx(1.0)
    assert z[0, 3] == pytest.approx(finite.min())  # an unscorable item ties with the worst scored one
    np.testing.assert_array_equal(z[1], 0.0)  # a constant row carries no preference
    np.testing.assert_allclose(zscore_rows(3.0 * s[:1, :3] + 7.0), zscore_rows(s[:1, :3]))  # scale-free


def test_the_blend_interpolates_between_the_two_models():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6)) * 100
    np.testing.assert_allclose(blend_scores(a, b, 0.0), zscore_rows(a), atol=1e-8)
    np.testing.assert_allclose(blend_scores(a, b, 1.0), zscore_rows(b), atol=1e-8)
    np.testing.assert_allclose(blend_scores(a, b, 0.25), 0.75 * zscore_rows(a) + 0.25 * zscore_rows(b), atol=1e-8)
    # ties of the blend go to the sequence model's order; a row without item-item preference is the sequence's
    tied = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    seq = np.array([[0.1, 0.9, 0.5], [0.3, 0.1, 0.2]])
    got = blend_scores(seq, tied, 1.0)
    assert np.argsort(-got[0]).tolist() == [1, 0, 2]
    np.testing.assert_allclose(got[1], zscore_rows(seq[1:])[0])
    np.testing.assert_allclose(blend_scores(seq, np.full((2, 3), np.nan), 0.7), zscore_rows(seq))
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        blend_scores(a, b, 1.5)
    with pytest.raises(DataError, match="differ in shape"):
        blend_scores(a, b[:, :5], 0.5)


def test_the_weight_is_the_one_that_ranks_the_validation_items_best():
    # 3 users x 5 items; the relevant item is 0 for everyone. The sequence model puts it 2nd, the item-item
    # model 3rd, but their errors differ, so a blend puts it 1st.
    seq = np.array([[0.9, 1.0, 0.1, 0.0, 0.2]] * 3)
    item_item = np.array([[0.8, 0.0, 1.0, 0.9, 0.1]] * 3)
    relevant = [np.array([0])] * 3
    weight, scores = choose_blend_weight(seq, item_item, relevant, None, k=1, grid=(0.0, 0.5, 1.0))
    assert weight == 0.5 and scores == {0.0: 0.0, 0.5: 1.0, 1.0: 0.0}
    # ties go to the smaller weight (the sequence model alone when nothing is gained)
    assert choose_blend_weight(seq, seq, relevant, None, k=2, grid=(0.0, 0.5, 1.0))[0] == 0.0
    # excluded items are never ranked
    excluded = [np.array([1])] * 3
    assert choose_blend_weight(seq, item_item, relevant, excluded, k=1, grid=(0.0,))[1][0.0] == 1.0


# ------------------------------------------------------------------ the blend in a bundle (trainer and readers)

def _group_world(path, n_users: int = 120, n_groups: int = 6, per_group: int = 10, seed: int = 0):
    """An examples directory where each user views items of one group (train), then more of it (eval): the
    items a user will choose co-occur with their history, which EASE reads and a popularity model does not.
    Item ``i999`` is in the catalog but has no train event."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    items = [f"i{g}{j}" for g in range(n_groups) for j in range(per_group)] + ["i999"]
    rows = {"train": [], "eval": []}
    t = pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(n_users):
        g = u % n_groups
        # a popular head (item 0 of group 0) that everyone views, so popularity alone is a poor guess
        picked = rng.choice(per_group, 7, replace=False)
        seq = ["i00"] + [f"i{g}{j}" for j in picked[:5]]
        for n, item in enumerate(seq):
            rows["train"].append((f"u{u:03d}", item, "view", t + pd.Timedelta(minutes=u * 100 + n)))
        for n, j in enumerate(picked[5:]):
            rows["eval"].append((f"u{u:03d}", f"i{g}{j}", "click", t + pd.Timedelta(days=30, minutes=u * 100 + n)))
    path.mkdir(parents=True, exist_ok=True)
    for split, data in rows.items():
        pd.DataFrame(data, columns=["user_id", "item_id", "event_type", "timestamp"]).to_parquet(
            path / f"{split}.parquet", index=False)
    return items


def _popularity_scorer(examples_dir, items):
    """A sequence model stand-in that ignores the history: train popularity plus a tiny per-user jitter."""
    import pandas as pd

    train = pd.read_parquet(examples_dir / "train.parquet")
    counts = train["item_id"].value_counts().reindex(items).fillna(0.0).to_numpy(float)

    def score(histories: pd.DataFrame) -> np.ndarray:
        rng = np.random.default_rng(1)
        return counts[None, :] + 0.01 * rng.normal(size=(len(histories), len(items)))

    return score


def test_the_trainer_stage_writes_the_matrix_and_a_weight_from_the_grid(tmp_path):
    import json

    from recflow.models.hybrid import load_hybrid
    from recflow.training.hybrid import HybridConfig, fit_hybrid

    ex = tmp_path / "ex"
    items = _group_world(ex)
    out = tmp_path / "model"
    out.mkdir()
    config = HybridConfig(l2_grid=(1.0, 100.0))
    result = fit_hybrid(ex, items, _popularity_scorer(ex, items), 20, config, {"view": 1.0, "click": 1.0}, out)
    info = json.loads((out / "hybrid.json").read_text())
    assert info == result.info and info["skipped"] is None
    assert info["weight"] in config.weight_grid and info["weight"] > 0  # the history matters here
    assert info["l2"] in config.l2_grid and set(info["l2_candidates"]) == {"1.0", "100.0"}
    assert set(info["weight_candidates"]) == {str(w) for w in config.weight_grid}
    assert info["validation"]["blend"] == max(info["weight_candidates"].values())
    assert info["validation"]["blend"] > info["validation"]["sequence"] + 0.1
    assert info["items"] == len(items) and info["history_max_len"] == 20 and info["validation_users"] == 120
    assert result.metrics["hybrid_weight"] == info["weight"] and "hybrid_eval_ndcg@10" in result.metrics
    matrix = np.load(out / "item_item.npy")
    assert matrix.dtype == np.float32 and matrix.shape == (len(items), len(items))
    unseen = items.index("i999")
    assert np.isnan(matrix[:unseen, unseen]).all() and (matrix[unseen, :unseen] == 0).all()
    # EASE's item-item weights in the catalog's order: items of one group explain each other
    a, b, c = items.index("i11"), items.index("i12"), items.index("i21")
    assert matrix[a, b] > matrix[a, c]
    blend = load_hybrid(out, len(items))
    assert blend is not None and blend.weight == info["weight"] and blend.history_max_len == 20


def test_the_stage_is_off_with_a_reason_above_max_items_with_an_ann_index_or_when_disabled(tmp_path):
    import json

    from recflow.training.hybrid import HybridConfig, fit_hybrid

    ex = tmp_path / "ex"
    items = _group_world(ex, n_users=12)
    scorer = _popularity_scorer(ex, items)
    cases = [(HybridConfig(max_items=10), "brute_force", "61 items > trainer.hybrid.max_items 10"),
             (HybridConfig(), "hnsw", "trainer.index.kind is hnsw"),
             (HybridConfig(enabled=False), "brute_force", "trainer.hybrid.enabled is false")]
    for n, (config, kind, reason) in enumerate(cases):
        out = tmp_path / f"model{n}"
        out.mkdir()
        result = fit_hybrid(ex, items, scorer, 20, config, {"view": 1.0}, out, index_kind=kind)
        info = json.loads((out / "hybrid.json").read_text())
        assert reason in info["skipped"] and info["weight"] == 0.0
        assert not (out / "item_item.npy").exists()
        assert all(reason in note for note in result.notes) and (len(result.notes) == (0 if n == 2 else 1))


def test_weight_zero_is_the_sequence_model_and_scores_equal_the_blend_by_hand(tmp_path):
    import json

    from recflow.models.hybrid import hybrid_scores, item_item_scores, load_hybrid

    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(5, 5)).astype(np.float32)
    seq = rng.normal(size=(3, 6))  # a sixth item was added to the catalog after training
    histories = [np.array([0, 2, 2]), np.array([], np.int64), np.array([4, 7])]
    by_hand = np.full((3, 6), np.nan)
    by_hand[0, :5] = matrix[0] + matrix[2]  # the history as a set: item 2 counts once
    by_hand[2, :5] = matrix[4]  # rows the matrix does not know say nothing
    np.testing.assert_allclose(item_item_scores(matrix, histories, 6), by_hand, rtol=1e-6)
    got = hybrid_scores(seq, matrix, histories, 0.3)
    np.testing.assert_allclose(got, blend_scores(seq, by_hand, 0.3))
    assert np.argmax(got[0]) != 5 and np.argmin(got[0]) == 5  # the added item: no item-item score, lowest
    np.testing.assert_array_equal(np.argsort(-got[1]), np.argsort(-seq[1]))  # no history: the sequence order
    np.testing.assert_array_equal(np.argsort(-hybrid_scores(seq, matrix, histories, 0.0), axis=1),
                                  np.argsort(-seq, axis=1))
    # a chosen weight of 0 writes no matrix and loads as no blend: the sequence model exactly
    (tmp_path / "hybrid.json").write_text(json.dumps({"skipped": None, "weight": 0.0, "history_max_len": 20}))
    assert load_hybrid(tmp_path, 5) is None


@pytest.mark.parametrize("case, message", [
    ("no_json", "hybrid.json: missing, but item_item.npy is there"),
    ("bad_json", "hybrid.json: cannot be read as JSON"),
    ("bad_weight", "hybrid.json: field 'weight' must be a number in \\[0, 1\\], got 1.5"),
    ("bad_window", "hybrid.json: field 'history_max_len' must be a positive integer"),
    ("no_matrix", "item_item.npy: missing"),
    ("bad_shape", "item_item.npy: expected a float \\[4, 4\\] matrix"),
    ("not_npy", "item_item.npy: cannot be read as a .npy array"),
])
def test_a_bad_or_missing_hybrid_file_is_a_clear_error_naming_it(tmp_path, case, message):
    import json

    from recflow.models.hybrid import load_hybrid

    good = {"skipped": None, "weight": 0.4, "history_max_len": 20}
    info = {"bad_weight": {**good, "weight": 1.5}, "bad_window": {**good, "history_max_len": 0}}.get(case, good)
    if case != "no_json":
        (tmp_path / "hybrid.json").write_text("{not json" if case == "bad_json" else json.dumps(info))
    if case == "not_npy":
        (tmp_path / "item_item.npy").write_text("garbage")
    elif case != "no_matrix":
        np.save(tmp_path / "item_item.npy", np.zeros((3, 3) if case == "bad_shape" else (4, 4), np.float32))
    with pytest.raises(DataError, match=message):
        load_hybrid(tmp_path, 4)


def test_top_items_breaks_ties_by_the_lower_index_and_skips_unscorable_items():
    from recflow.models.hybrid import top_items

    scores = np.array([0.5, 1.0, 0.5, -np.inf, 1.0, 0.5, np.nan])
    np.testing.assert_array_equal(top_items(scores, 4), [1, 4, 0, 2])
    np.testing.assert_array_equal(top_items(scores, 10), [1, 4, 0, 2, 5])
    assert len(top_items(np.array([-np.inf, np.nan]), 3)) == 0
    np.testing.assert_array_equal(top_items(scores, 3, banned=[1, 0]), [4, 2, 5])  # banned rows never picked
    np.testing.assert_array_equal(top_items(scores, 4), [1, 4, 0, 2])  # and the caller's scores are untouched
