"""The sequence retrieval model: shapes, padding invariance, point-in-time training data, the numpy forward
pass against Keras, save/load, determinism, and a Markov world it must learn far better than popularity."""

from __future__ import annotations

import numpy as np
import pytest

from recflow.errors import DataError
from recflow.models.sequence import (
    EVENT_TYPE_CODES,
    SequenceConfig,
    SequenceEncoder,
    build_sequences,
    export_weights,
    gap_buckets,
    history_at,
    load_encoder_weights,
    numpy_item_vectors,
    numpy_user_state,
    save_encoder,
)
from recflow.training.id_sequence import SequenceValidation, fit_id_sequence, ndcg_at_k

SMALL = SequenceConfig(max_len=8, embedding_dim=16, num_blocks=2, num_heads=2, dropout=0.0)


def _random_inputs(rng: np.random.Generator, batch: int, length: int, n_items: int):
    items = rng.integers(0, n_items, (batch, length))
    lengths = rng.integers(0, length + 1, batch)
    for row, n in enumerate(lengths):
        items[row, : length - n] = -1  # left padding
    types = np.where(items >= 0, rng.integers(0, len(EVENT_TYPE_CODES), (batch, length)), 0)
    gaps = rng.uniform(-100, 1e7, (batch, length)).astype(np.float32)
    gaps[rng.random((batch, length)) < 0.1] = np.nan
    return items, types, gaps


def _keras(encoder, items, types, gaps):
    return encoder({"hist_items": items, "hist_types": types, "hist_gaps": gaps}).numpy()


def test_shapes_and_item_side_dimension():
    enc = SequenceEncoder(30, SMALL)
    items, types, gaps = _random_inputs(np.random.default_rng(0), 5, 8, 30)
    assert _keras(enc, items, types, gaps).shape == (5, 17)  # 16 + the constant-1 bias dimension
    assert enc.item_vectors().shape == (30, 17)
    no_bias = SequenceEncoder(30, SMALL.model_copy(update={"item_bias": False}))
    assert _keras(no_bias, items, types, gaps).shape == (5, 16)
    with pytest.raises(DataError, match="divisible"):
        SequenceEncoder(30, SMALL.model_copy(update={"num_heads": 3}))


def test_left_padding_does_not_change_the_user_state():
    enc = SequenceEncoder(30, SMALL)
    items, types, gaps = _random_inputs(np.random.default_rng(1), 6, 8, 30)
    base = _keras(enc, items, types, gaps)
    pad = 5
    padded = _keras(enc, np.hstack([np.full((6, pad), -1), items]),
                    np.hstack([np.zeros((6, pad), int), types]),
                    np.hstack([np.full((6, pad), -1, np.float32), gaps]))
    np.testing.assert_allclose(padded, base, atol=1e-5)
    # Different padded *content* (types/gaps at padding) is ignored too.
    noisy_types = np.where(items >= 0, types, 4)
    np.testing.assert_allclose(_keras(enc, items, noisy_types, gaps), base, atol=1e-5)


def test_history_order_and_event_features_matter():
    enc = SequenceEncoder(30, SMALL)
    items = np.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    types = np.full_like(items, EVENT_TYPE_CODES["view"])
    gaps = np.full(items.shape, 60.0, np.float32)
    base = _keras(enc, items, types, gaps)
    assert np.abs(_keras(enc, items[:, ::-1], types, gaps) - base).max() > 1e-3
    purchases = np.full_like(types, EVENT_TYPE_CODES["purchase"])
    assert np.abs(_keras(enc, items, purchases, gaps) - base).max() > 1e-3
    assert np.abs(_keras(enc, items, types, gaps * 1000) - base).max() > 1e-3


def test_gap_buckets_are_log_spaced_with_an_unknown_bucket():
    b = gap_buckets(np.array([-1.0, np.nan, 0.0, 0.5, 2.0, 100.0, 1e6, 1e12]), 16)
    assert b[0] == 0 and b[1] == 0
    assert (b[2:] >= 1).all() and (np.diff(b[2:]) >= 0).all() and b[-1] == 15


def test_numpy_forward_pass_equals_keras_in_batch_and_for_one_row():
    rng = np.random.default_rng(2)
    enc = SequenceEncoder(40, SMALL.model_copy(update={"embedding_dim": 32, "num_heads": 4}))
    items, types, gaps = _random_inputs(rng, 16, 8, 40)
    _keras(enc, items, types, gaps)  # builds the layers
    enc.item_vectors()
    # Non-trivial layer-norm/bias weights, so the check covers them.
    enc.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in enc.get_weights()])
    expected = _keras(enc, items, types, gaps)
    weights = export_weights(enc)
    np.testing.assert_allclose(numpy_user_state(weights, items, types, gaps), expected, atol=1e-4)
    one = numpy_user_state(weights, items[3], types[3], gaps[3])
    np.testing.assert_allclose(one, expected[3:4], atol=1e-4)
    np.testing.assert_allclose(numpy_item_vectors(weights), enc.item_vectors(), atol=1e-6)
    # An id-only request: types unknown, gaps unknown -- the defaults of both paths.
    np.testing.assert_allclose(numpy_user_state(weights, items),
                               _keras(enc, items, np.zeros_like(types), np.full(gaps.shape, -1, np.float32)),
                               atol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    enc = SequenceEncoder(20, SMALL)
    items, types, gaps = _random_inputs(np.random.default_rng(3), 4, 8, 20)
    expected = _keras(enc, items, types, gaps)
    save_encoder(enc, tmp_path / "bundle")
    weights, meta = load_encoder_weights(tmp_path / "bundle")
    assert meta["n_items"] == 20 and meta["config"]["max_len"] == 8
    assert meta["event_type_codes"] == EVENT_TYPE_CODES
    np.testing.assert_allclose(numpy_user_state(weights, items, types, gaps), expected, atol=1e-4)
    with pytest.raises(DataError, match="sequence_encoder.npz"):
        load_encoder_weights(tmp_path / "nothing")


def test_training_histories_hold_only_strictly_earlier_events_of_the_same_user():
    rng = np.random.default_rng(4)
    n = 400
    users = rng.integers(0, 7, n)
    items = rng.integers(0, 50, n)
    types = rng.integers(1, 7, n)
    times = rng.integers(0, 60, n).astype(float)  # many ties
    mask = rng.random(n) < 0.7
    out = build_sequences(users, items, types, times, 6, mask)
    assert (out["target_index"] == np.flatnonzero(mask)).all()
    for row, target in enumerate(out["target_index"]):
        earlier = np.flatnonzero((users == users[target]) & (times < times[target]))
        earlier = earlier[np.lexsort((times[earlier],))][-6:]  # the 6 latest, most recent last
        hist = out["hist_items"][row]
        real = hist >= 0
        assert real.sum() == len(earlier)
        assert not real[: 6 - len(earlier)].any()  # left-padded
        assert sorted(zip(times[earlier], items[earlier], strict=True)) == sorted(
            zip(times[target] - out["hist_gaps"][row][real], hist[real], strict=True))
        assert (out["hist_gaps"][row][real] > 0).all()  # strictly before: no tie with the target
        assert (np.diff(times[target] - out["hist_gaps"][row][real]) >= 0).all()  # time order, latest last


def test_history_at_is_the_history_up_to_the_query_time():
    users = np.array([0, 0, 0, 1, 0])
    items = np.array([5, 6, 7, 8, 9])
    times = np.array([10.0, 20.0, 30.0, 5.0, 40.0])
    h = history_at(users, items, None, times, [0, 1, 2], [30.0, 100.0, 0.0], 3)
    assert h["hist_items"].tolist() == [[5, 6, 7], [-1, -1, 8], [-1, -1, -1]]
    assert h["hist_gaps"][0].tolist() == [20.0, 10.0, 0.0]
    strict = history_at(users, items, None, times, [0], [30.0], 3, strictly_before=True)
    assert strict["hist_items"].tolist() == [[-1, 5, 6]]
    with pytest.raises(DataError, match="lengths differ"):
        build_sequences(users, items[:3], None, times, 3)


def _markov_world(seed: int, n_items: int = 60, n_users: int = 200, length: int = 12):
    """Each user walks a fixed random permutation: the next item is determined by the last one."""
    rng = np.random.default_rng(seed)
    nxt = rng.permutation(n_items)
    users, items, times = [], [], []
    for u in range(n_users):
        item = int(rng.integers(n_items))
        for step in range(length):
            users.append(u)
            items.append(item)
            times.append(1000.0 * u + 10.0 * step)
            item = int(nxt[item])
    return np.array(users), np.array(items), np.array(times), nxt


def test_learns_a_markov_world_far_above_popularity_and_is_deterministic():
    users, items, times, nxt = _markov_world(0)
    n_items = 60
    config = SequenceConfig(max_len=5, embedding_dim=32, num_blocks=1, dropout=0.0, epochs=10, batch_size=128,
                            learning_rate=0.01, temperature=0.1, seed=7)
    # Validation: fresh walks from random starts; the target is the true next item.
    rng = np.random.default_rng(5)
    starts = rng.integers(n_items, size=100)
    hist = np.stack([np.array([s, nxt[s], nxt[nxt[s]], nxt[nxt[nxt[s]]]]) for s in starts])
    target = nxt[hist[:, -1]]
    val = SequenceValidation(hist, np.full(hist.shape, EVENT_TYPE_CODES["view"]),
                             np.full(hist.shape, 10.0, np.float32), [np.array([t]) for t in target], None, 10)
    types = np.full(len(items), EVENT_TYPE_CODES["view"])
    model = fit_id_sequence(users, items, types, times, n_items, config, validation=val)
    scores = model.scores(hist, None, None)  # an id-only request (types and gaps unknown)
    recall = float(np.mean([t in np.argsort(-s)[:10] for s, t in zip(scores, target, strict=True)]))
    counts = np.bincount(items, minlength=n_items)
    pop_recall = float(np.mean(np.isin(target, np.argsort(-counts)[:10])))
    assert recall >= 0.8 and recall > pop_recall + 0.5, (recall, pop_recall)
    assert model.stats["validation_ndcg"] and model.stats["best_epoch"] >= 1
    again = fit_id_sequence(users, items, types, times, n_items, config, validation=val)
    np.testing.assert_allclose(again.item_vectors, model.item_vectors, atol=1e-6)
    assert again.stats["validation_ndcg"] == model.stats["validation_ndcg"]


def test_ndcg_helper_and_input_errors():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert ndcg_at_k(scores, [np.array([1]), np.array([2])], None, 2) == pytest.approx(0.5)
    assert ndcg_at_k(scores, [np.array([2]), np.array([2])], [np.array([1]), np.array([])], 1) == 0.5
    with pytest.raises(DataError, match="n_items"):
        fit_id_sequence(np.array([0]), np.array([9]), None, np.array([0.0]), 5, SMALL)
    with pytest.raises(DataError, match="type_codes"):
        build_sequences(np.array([0]), np.array([1]), np.array([99]), np.array([0.0]), 3)
