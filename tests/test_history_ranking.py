"""The history-aware ranking model: its features, numpy == Keras, saving, and that it learns what it should."""

from __future__ import annotations

import numpy as np
import pytest

import recflow  # noqa: F401  (sets the Keras flavour before TensorFlow loads)

# isort: split
from recflow.errors import DataError
from recflow.models.history_ranking import (
    MAX_POSITIONS,
    N_DENSE,
    HistoryRanker,
    RankerInputs,
    build_keras_ranker,
    click_loss,
    export_ranker,
    history_features,
    numpy_click_logits,
    save_ranker,
)


def test_history_features_by_hand() -> None:
    hist = np.array([-1, 3, 5, 3])  # left-padded, most recent last
    feats = history_features(hist, np.array([3, 5, 7, -1]))
    assert feats.shape == (4, 3)
    assert np.allclose(feats[0], [np.log1p(2), 1.0, 1.0])  # twice, the last item
    assert np.allclose(feats[1], [np.log1p(1), 0.0, 0.5])  # once, one event before the last
    assert np.allclose(feats[2], [0.0, 0.0, 0.0])  # never
    assert np.allclose(feats[3], [0.0, 0.0, 0.0])  # an unknown candidate never matches the padding
    batch = history_features(np.array([[-1, 3, 5, 3], [5, 5, 5, 2]]), np.array([5, 5]))
    assert np.allclose(batch, [[np.log1p(1), 0.0, 0.5], [np.log1p(3), 0.0, 0.5]])
    assert np.allclose(history_features(np.zeros(0, np.int64), np.array([3, 7])), 0.0)  # an empty history
    per_row = history_features(np.array([[-1, 3, 5, 3]]), np.array([[3, 7]]))
    assert per_row.shape == (1, 2, 3) and np.allclose(per_row[0, 0], feats[0])


def _random_inputs(rng: np.random.Generator, n: int, n_items: int, dim: int, sizes: list[int]) -> RankerInputs:
    return RankerInputs(
        state=rng.normal(size=(n, dim)).astype(np.float32),
        item=rng.integers(0, n_items + 1, n),
        dense=rng.normal(size=(n, N_DENSE)).astype(np.float32),
        context=(np.stack([rng.integers(0, s + 1, n) for s in sizes], axis=1) if sizes
                 else np.zeros((n, 0), np.int64)),
        position=rng.integers(0, MAX_POSITIONS, n))


def test_numpy_forward_pass_equals_keras() -> None:
    rng = np.random.default_rng(0)
    sizes = [24, 7, 3]
    model = build_keras_ranker(n_items=12, state_dim=5, context_sizes=sizes)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    inputs = _random_inputs(rng, 64, 12, 5, sizes)
    keras = model.predict(inputs.as_dict(), verbose=0)
    ours = numpy_click_logits(export_ranker(model, len(sizes)), inputs)
    assert np.allclose(ours, keras, atol=1e-4)
    # without context columns too
    bare = build_keras_ranker(n_items=4, state_dim=3, context_sizes=[])
    bare.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in bare.get_weights()])
    plain = _random_inputs(rng, 16, 4, 3, [])
    assert np.allclose(numpy_click_logits(export_ranker(bare, 0), plain), bare.predict(plain.as_dict(), verbose=0),
                       atol=1e-4)


def test_saved_ranker_scores_a_request_as_the_model_does(tmp_path) -> None:
    rng = np.random.default_rng(1)
    model = build_keras_ranker(n_items=3, state_dim=4, context_sizes=[2])
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    weights = export_ranker(model, 1)
    meta = {"item_ids": ["a", "b", "c"], "context_columns": ["device"], "context_vocabularies": [["app", "web"]],
            "score_mean": 1.0, "score_std": 2.0}
    save_ranker(tmp_path, weights, meta)
    ranker = HistoryRanker.load(tmp_path)
    assert ranker is not None and HistoryRanker.load(tmp_path / "none") is None
    state = rng.normal(size=4).astype(np.float32)
    hist = np.array([10, 11, 10])  # encoder rows
    ids, cand, scores = ["a", "c", "zz"], np.array([10, 12, -1]), np.array([3.0, 1.0, -1.0])
    prob = ranker.click_probabilities(state, hist, ids, cand, scores, {"device": "web"})
    dense = np.zeros((3, N_DENSE), np.float32)
    dense[:, 0] = (scores - 1.0) / 2.0
    dense[:, 1:] = history_features(hist, cand)
    expected = RankerInputs(np.tile(state, (3, 1)), np.array([0, 2, 3]), dense, np.array([[2], [2], [2]]),
                            np.zeros(3, np.int64))
    logits = model.predict(expected.as_dict(), verbose=0)
    assert np.allclose(prob, 1 / (1 + np.exp(-logits)), atol=1e-5)
    # an unseen context value takes the unknown row
    assert ranker.context_codes({"device": "tv"})[0] == 0 and ranker.context_codes({"device": "app"})[0] == 1
    (tmp_path / "history_ranker.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="unreadable history ranker"):
        HistoryRanker.load(tmp_path)


def test_learns_item_appeal_and_the_history_signal_close_to_the_oracle() -> None:
    """Clicks depend on a per-item appeal, the user's taste for the item and whether the user viewed it: the
    ranker's held-out AUC comes close to the true model's, far above the retrieval score alone."""
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    n_items, dim, n = 20, 6, 60_000
    appeal = rng.normal(0.0, 1.0, n_items)
    click_taste = rng.normal(0.0, 1.0, (n_items, dim))
    inputs = _random_inputs(rng, n, n_items - 1, dim, [])
    inputs.item = rng.integers(0, n_items, n)
    seen = rng.random(n) < 0.3
    inputs.dense[:, 1:] = 0.0
    inputs.dense[:, 1] = np.where(seen, np.log1p(1), 0.0)
    inputs.position = np.zeros(n, np.int64)
    true_logit = (-3.0 + appeal[inputs.item] + 0.4 * np.einsum("nd,nd->n", inputs.state, click_taste[inputs.item])
                  + 1.5 * seen)
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.float32)
    train, test = slice(0, 45_000), slice(45_000, n)
    tf.keras.utils.set_random_seed(0)
    model = build_keras_ranker(n_items, dim, [])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02), loss=click_loss)
    feats = {k: v[train] for k, v in inputs.as_dict().items()}
    weights = np.ones(n, np.float32)  # per-example weights, as the trainer's inverse propensities
    model.fit(feats, labels[train], sample_weight=weights[train], batch_size=512, epochs=4, verbose=0)
    test_inputs = RankerInputs(*(getattr(inputs, f)[test] for f in ("state", "item", "dense", "context",
                                                                   "position")))
    learned = numpy_click_logits(export_ranker(model, 0), test_inputs)
    oracle = roc_auc_score(labels[test], true_logit[test])
    ours = roc_auc_score(labels[test], learned)
    score_alone = roc_auc_score(labels[test], inputs.dense[test, 0])
    assert ours > oracle - 0.02, (ours, oracle)
    assert ours > score_alone + 0.15, (ours, score_alone)


def test_event_times_are_epoch_seconds_whatever_the_parquet_resolution(tmp_path) -> None:
    """Parquet hands back datetime64[ms]; the sequence model's event times must still be seconds (a gap of a
    minute is 60, as in a request's history), not the stored unit divided by 1e9."""
    import pandas as pd

    from recflow.io import epoch_seconds
    from recflow.training.sequence_retrieval import load_events

    times = pd.to_datetime(["2026-01-05T00:00:00.000Z", "2026-01-05T00:01:00.500Z"], utc=True, format="ISO8601")
    for unit in ("ms", "us", "ns"):
        assert np.allclose(epoch_seconds(pd.Series(times).astype(f"datetime64[{unit}, UTC]")),
                           [t.timestamp() for t in times])
    frame = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "event_type": ["view", "view"],
                          "timestamp": pd.Series(times).astype("datetime64[ms, UTC]")})
    frame.to_parquet(tmp_path / "train.parquet")
    data = load_events(tmp_path, ("train",), {"a": 0, "b": 1}, 2, {"view": 1.0})
    assert np.allclose(np.diff(data.seconds), 60.5) and np.isclose(data.seconds[0], times[0].timestamp())


def test_policy_decisions_use_the_point_in_time_state_where_there_is_one() -> None:
    import pandas as pd

    from recflow.policy.config import PolicyConfig
    from recflow.policy.logged_data import build_bandit_data

    t0 = pd.Timestamp("2026-01-05T10:00:00Z")
    events = pd.DataFrame({
        "event_type": ["impression", "impression", "click"],
        "user_id": ["u1", "u1", "u1"], "item_id": ["a", "b", "a"],
        "timestamp": [t0, t0 + pd.Timedelta(minutes=5), t0 + pd.Timedelta(seconds=3)],
        "request_id": ["r1", "r2", "r1"], "position": [0, 0, None], "propensity": [0.5, 0.5, None]})
    items = np.array(["a", "b", "c"], dtype=object)
    item_emb = np.eye(3, dtype=np.float32)
    final = np.array([[9.0, 9.0, 9.0]], np.float32)  # the user's final state (after the click)
    states = pd.DataFrame({"user_id": ["u1"], "seconds": [t0.timestamp()],
                           "embedding": [np.array([1.0, 0.0, 0.0], np.float32)]})
    config = PolicyConfig(num_arms=2)
    data = build_bandit_data(events, items, item_emb, np.array(["u1"], dtype=object), final, config,
                             decision_states=states)
    by_request = dict(zip(data.request_ids, data.user_embeddings.tolist(), strict=True))
    assert by_request["r1"] == [1.0, 0.0, 0.0]  # the state before the first impression
    assert by_request["r2"] == [9.0, 9.0, 9.0]  # no point-in-time state: the final one
    assert any("point-in-time" in n for n in data.notes)


def test_one_standard_error_rule_prefers_the_simplest_candidate_within_noise() -> None:
    from recflow.training.history_ranking import one_standard_error_choice

    rng = np.random.default_rng(0)
    base = rng.exponential(0.05, 400)
    # the second candidate is better on average, but by far less than the noise of the difference
    noisy_better = base - 0.001 + rng.normal(0.0, 0.05, 400)
    pick, stats = one_standard_error_choice([base, noisy_better])
    assert pick == 0 and stats[0]["difference_to_best"] <= stats[0]["standard_error"]
    # a clear improvement (a constant gain far above its standard error) is kept
    clearly_better = base - 0.02 + rng.normal(0.0, 0.001, 400)
    pick, stats = one_standard_error_choice([base, clearly_better])
    assert pick == 1 and stats[0]["difference_to_best"] > stats[0]["standard_error"]
    assert stats[1]["difference_to_best"] == 0.0


def test_personal_off_freezes_the_item_vectors_at_zero() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(1)
    inputs = _random_inputs(rng, 256, 5, 4, [3])
    labels = (rng.random(256) < 0.3).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = build_keras_ranker(n_items=6, state_dim=4, context_sizes=[3], personal=False, dense_l2=0.0)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss=click_loss)
    model.fit(inputs.as_dict(), labels, batch_size=64, epochs=2, verbose=0)
    weights = export_ranker(model, 1)
    assert not weights["item_vector"].any() and not weights["item_context"].any()
    assert np.abs(weights["dense_kernel"]).sum() > 0  # the history features still learn


def test_a_masked_dense_feature_never_reaches_the_logit() -> None:
    """score_only reads the score alone: the other dense columns change neither the Keras logits nor the
    exported model's (their exported weights are 0)."""
    rng = np.random.default_rng(4)
    mask = [1.0, 0.0, 0.0, 0.0]
    model = build_keras_ranker(n_items=5, state_dim=3, context_sizes=[], dense_mask=mask)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    inputs = _random_inputs(rng, 32, 5, 3, [])
    exported = export_ranker(model, 0, mask)
    assert np.all(exported["dense_kernel"][1:] == 0.0) and exported["dense_kernel"][0] != 0.0
    other = RankerInputs(inputs.state, inputs.item, inputs.dense.copy(), inputs.context, inputs.position)
    other.dense[:, 1:] = rng.normal(size=(32, N_DENSE - 1))
    keras, keras_other = (model.predict(x.as_dict(), verbose=0) for x in (inputs, other))
    assert np.allclose(keras, keras_other, atol=1e-6)
    assert np.allclose(numpy_click_logits(exported, other), keras, atol=1e-4)


def test_centred_scores_leave_the_item_level_to_the_item_bias(tmp_path) -> None:
    """The score feature is the score less what the mean train state scores the item (score_offsets), both
    in training and in the saved ranker's click probabilities."""
    from recflow.training.history_ranking import score_offsets

    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(4, 3))  # encoder rows
    states = rng.normal(size=(50, 3))
    offset = score_offsets(states, vectors, ["a", "b", "zz"], {"a": 2, "b": 0})
    assert np.allclose(offset, [vectors[2] @ states.mean(0), vectors[0] @ states.mean(0), 0.0, 0.0])
    model = build_keras_ranker(n_items=3, state_dim=3, context_sizes=[])
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    save_ranker(tmp_path, export_ranker(model, 0, score_offset=offset),
                {"item_ids": ["a", "b", "zz"], "context_columns": [], "context_vocabularies": [],
                 "score_mean": 0.5, "score_std": 2.0})
    ranker = HistoryRanker.load(tmp_path)
    assert ranker is not None
    state = states[0]
    ids, cand = ["a", "b", "zz", "new"], np.array([2, 0, -1, -1])
    scores = np.array([vectors[2] @ state, vectors[0] @ state, 0.3, 0.1])
    prob = ranker.click_probabilities(state, np.array([0, 2]), ids, cand, scores, {})
    item = np.array([0, 1, 2, 3])
    dense = np.zeros((4, N_DENSE), np.float32)
    dense[:, 0] = (scores - offset[item] - 0.5) / 2.0
    dense[:, 1:] = history_features(np.array([0, 2]), cand)
    logits = model.predict(RankerInputs(np.tile(state, (4, 1)), item, dense, np.zeros((4, 0), np.int64),
                                        np.zeros(4, np.int64)).as_dict(), verbose=0)
    assert np.allclose(prob, 1 / (1 + np.exp(-logits)), atol=1e-5)
    # a ranker saved without offsets (an older bundle) reads the raw score
    save_ranker(tmp_path, export_ranker(model, 0), dict(ranker.meta))
    plain = HistoryRanker.load(tmp_path)
    assert plain is not None
    dense[:, 0] = (scores - 0.5) / 2.0
    logits = model.predict(RankerInputs(np.tile(state, (4, 1)), item, dense, np.zeros((4, 0), np.int64),
                                        np.zeros(4, np.int64)).as_dict(), verbose=0)
    assert np.allclose(plain.click_probabilities(state, np.array([0, 2]), ids, cand, scores, {}),
                       1 / (1 + np.exp(-logits)), atol=1e-5)


def test_few_eval_clicks_fit_only_the_simplest_candidate() -> None:
    from recflow.training.history_ranking import PERSONAL_OFF, SCORE_ONLY, enough_eval_clicks, ranker_candidates
    from recflow.training.tfrs_trainer import TrainerConfig

    cfg = TrainerConfig(history_ranking_l2=(0.01, 1.0), history_ranking_min_eval_clicks=3)
    is_train = np.array([True, True, False, False, False, False])
    assert not enough_eval_clicks(np.array([1, 1, 1, 1, 0, 0], np.float32), is_train, cfg)  # 2 eval clicks < 3
    assert enough_eval_clicks(np.ones(6, np.float32), is_train, cfg)  # 4 eval clicks
    few = ranker_candidates(cfg, enough_eval=False)
    assert [(c.name, c.personal, c.dense_features) for c in few] == [(SCORE_ONLY, False, ("score",))]
    full = ranker_candidates(cfg, enough_eval=True)
    assert [c.name for c in full] == [SCORE_ONLY, PERSONAL_OFF, 1.0, 0.01]
    assert [c.personal for c in full] == [False, False, True, True]
    assert full[1].dense_features == ("score", "seen", "last", "recency")
    # personal_off is not fitted twice when its features are the score alone
    only_score = cfg.model_copy(update={"history_ranking_dense_features": ("score",)})
    assert [c.name for c in ranker_candidates(only_score, enough_eval=True)] == [SCORE_ONLY, 1.0, 0.01]


def test_score_centring_setting_is_a_bool_or_auto() -> None:
    from pydantic import ValidationError

    from recflow.config import load_config
    from recflow.training.tfrs_trainer import TrainerConfig

    assert load_config().trainer.history_ranking_center_score == "auto"
    assert load_config(overrides=["trainer.history_ranking_center_score=true"]).trainer.history_ranking_center_score \
        is True
    with pytest.raises(ValidationError):
        TrainerConfig(history_ranking_center_score="sometimes")


def test_ranker_rows_by_chunk_equal_the_histories_built_at_once() -> None:
    """The history ranker's point-in-time rows built a chunk of (user, time) keys at a time (bounded memory) are
    the ones of every key at once, whatever the chunk."""
    import pandas as pd

    from recflow.models.sequence import SequenceConfig, SequenceEncoder, history_at
    from recflow.training.history_ranking import ENCODER_BATCH, ranker_rows
    from recflow.training.sequence_retrieval import SequenceData

    rng = np.random.default_rng(3)
    n, n_users, n_items, max_len = 4000, 60, 25, 6
    user_rows = rng.integers(0, n_users, n)
    item_rows = rng.integers(0, n_items, n)
    seconds = rng.uniform(0, 1e5, n)
    types = rng.integers(0, 4, n)
    data = SequenceData(user_ids=np.array([f"u{u}" for u in user_rows], object), user_rows=user_rows,
                        item_ids=np.array([f"i{i}" for i in item_rows], object), item_rows=item_rows,
                        event_types=np.array(["view"] * n, object), type_codes=types, seconds=seconds,
                        weights=np.ones(n, np.float32), split=np.array(["train"] * n, object))
    m = 5000  # more keys than one encoder batch: several chunks
    imp = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users + 5, m)],  # some unknown users
                        "item_id": [f"i{i}" for i in rng.integers(0, n_items + 3, m)],
                        "_seconds": rng.uniform(0, 1e5, m)})
    encoder = SequenceEncoder(n_items + 1, SequenceConfig(embedding_dim=8, max_len=max_len, num_blocks=1,
                                                          num_heads=1))
    vectors = encoder.item_vectors()
    rows_of = {f"i{i}": i for i in range(n_items)}
    ids = [f"i{i}" for i in range(n_items + 3)]
    small_rows, small = ranker_rows(imp, data, encoder, vectors, rows_of, ids, max_len, chunk=ENCODER_BATCH)
    big_rows, big = ranker_rows(imp, data, encoder, vectors, rows_of, ids, max_len, chunk=ENCODER_BATCH * 4)
    np.testing.assert_array_equal(small_rows, big_rows)
    assert 0 < len(small_rows) < m
    for key in big:
        np.testing.assert_array_equal(small[key], big[key])
    users = imp["user_id"].str[1:].astype(int).to_numpy()[small_rows]
    at_once = history_at(user_rows, item_rows, types, seconds, users, imp["_seconds"].to_numpy()[small_rows],
                         max_len, strictly_before=True)
    np.testing.assert_array_equal(small["hist_rows"], at_once["hist_items"])


@pytest.mark.parametrize(("cap", "eval_cap"), [(None, None), (700, None), (700, 300), (None, 300)])
def test_sampling_before_building_equals_building_all_then_sampling(tmp_path, cap, eval_cap) -> None:
    """The ranker's inputs built only for the seeded train sample (and every eval impression) are the rows and
    arrays of building every impression's then sampling (:func:`ranker_rows` + :func:`cap_impressions`),
    and the decision-states file written a chunk at a time holds what :func:`write_decision_states` writes
    from every impression's state at once."""
    import pandas as pd
    import pyarrow.parquet as pq

    from recflow.models.sequence import SequenceConfig, SequenceEncoder
    from recflow.policy.logged_data import DECISION_STATES_FILE
    from recflow.training.history_ranking import (
        ENCODER_BATCH,
        cap_impressions,
        ranker_rows,
        sampled_ranker_rows,
        write_decision_states,
    )
    from recflow.training.sequence_retrieval import SequenceData

    rng = np.random.default_rng(5)
    n, n_users, n_items, max_len = 3000, 80, 25, 6
    user_rows = rng.integers(0, n_users, n)
    item_rows = rng.integers(0, n_items, n)
    seconds = rng.uniform(0, 1e5, n)
    data = SequenceData(user_ids=np.array([f"u{u}" for u in user_rows], object), user_rows=user_rows,
                        item_ids=np.array([f"i{i}" for i in item_rows], object), item_rows=item_rows,
                        event_types=np.array(["view"] * n, object), type_codes=rng.integers(0, 4, n),
                        seconds=seconds, weights=np.ones(n, np.float32), split=np.array(["train"] * n, object))
    m = 6000  # several chunks of keys; repeated (user, time) keys; unknown users; impressions before any history
    times = rng.choice(rng.uniform(0, 1e5, 2500), m)
    imp = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users + 5, m)],
                        "item_id": [f"i{i}" for i in rng.integers(0, n_items + 3, m)],
                        "_seconds": times, "_split": np.where(times < 8e4, "train", "eval")})
    imp.loc[::7, "_seconds"] = 0.5  # before nearly every user's first event: no history
    encoder = SequenceEncoder(n_items + 1, SequenceConfig(embedding_dim=8, max_len=max_len, num_blocks=1,
                                                          num_heads=1))
    vectors = encoder.item_vectors()
    rows_of = {f"i{i}": i for i in range(n_items)}
    ids = [f"i{i}" for i in range(n_items + 3)]
    rows, arr = ranker_rows(imp, data, encoder, vectors, rows_of, ids, max_len, chunk=ENCODER_BATCH)
    write_decision_states(tmp_path, imp["user_id"].to_numpy()[rows], imp["_seconds"].to_numpy()[rows],
                          arr["state"])
    sampled = cap_impressions(imp["_split"].to_numpy()[rows] == "train", cap, 11, eval_cap)
    assert (sampled is None) == (cap is None and eval_cap is None)
    keep = np.arange(len(rows)) if sampled is None else sampled.rows
    streamed_path = tmp_path / "streamed.parquet"
    got = sampled_ranker_rows(imp, data, encoder, vectors, rows_of, ids, max_len, cap, 11, streamed_path,
                              chunk=ENCODER_BATCH, eval_cap=eval_cap)
    assert got.n_with_history == len(rows) < m
    np.testing.assert_array_equal(got.rows, rows[keep])
    assert set(got.arrays) == set(arr)
    for key, value in arr.items():
        np.testing.assert_array_equal(got.arrays[key], value[keep], err_msg=key)
    if sampled is not None:
        assert got.sampled is not None
        np.testing.assert_array_equal(got.sampled.rows, sampled.rows)
        assert (got.sampled.train_of, got.sampled.eval_of, got.sampled.train_cap, got.sampled.eval_cap) == (
            sampled.train_of, sampled.eval_of, sampled.train_cap, sampled.eval_cap)
        assert len(got.rows) < len(rows)
    whole, streamed = pq.read_table(tmp_path / DECISION_STATES_FILE), pq.read_table(streamed_path)
    assert streamed.schema.equals(whole.schema) and streamed.num_rows > ENCODER_BATCH
    assert streamed.equals(whole)
    pd.testing.assert_frame_equal(pd.read_parquet(streamed_path), pd.read_parquet(tmp_path / DECISION_STATES_FILE))
    # the ranker's lean copy of the events (ranker_events: no per-event id, type, weight or split arrays) gives
    # the same rows, arrays and states file
    from recflow.training.history_ranking import RankerEvents, ranker_events

    lean = ranker_events(data)
    assert isinstance(lean, RankerEvents) and len(lean.row_user_ids) == int(user_rows.max()) + 1
    lean_path = tmp_path / "lean.parquet"
    again = sampled_ranker_rows(imp, lean, encoder, vectors, rows_of, ids, max_len, cap, 11, lean_path,
                                chunk=ENCODER_BATCH, eval_cap=eval_cap)
    np.testing.assert_array_equal(again.rows, got.rows)
    assert again.n_with_history == got.n_with_history
    for key, value in got.arrays.items():
        np.testing.assert_array_equal(again.arrays[key], value, err_msg=key)
    assert pq.read_table(lean_path).equals(streamed)
