"""recflow.training.datasets.index_batches: the same batches as the row pipeline it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from recflow.training.datasets import index_batches


def _epochs(ds, epochs: int) -> list[list]:
    import tensorflow as tf

    return [[tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds] for _ in range(epochs)]


def _assert_same(a, b) -> None:
    import tensorflow as tf

    assert len(a) == len(b)
    for ea, eb in zip(a, b, strict=True):
        assert len(ea) == len(eb)
        for ba, bb in zip(ea, eb, strict=True):
            tf.nest.assert_same_structure(ba, bb)
            for x, y in zip(tf.nest.flatten(ba), tf.nest.flatten(bb), strict=True):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", [None, 0, 42])
def test_index_batches_equal_the_shuffled_row_pipeline_every_epoch(seed):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    n = 1037
    feats = {"hist": rng.integers(-1, 50, size=(n, 7)), "gap": rng.normal(size=(n, 7)).astype(np.float32),
             "target": rng.integers(0, 50, size=n), "name": np.array([f"u{i % 13}" for i in range(n)])}
    structure = (feats, rng.random(n).astype(np.float32), np.ones(n, np.float32))
    tf.keras.utils.set_random_seed(5)
    rows = tf.data.Dataset.from_tensor_slices(structure)
    if seed is not None:
        rows = rows.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    expected = _epochs(rows.batch(64), 3)
    tf.keras.utils.set_random_seed(5)
    got = _epochs(index_batches(structure, 64, shuffle_seed=seed), 3)
    _assert_same(got, expected)
    if seed is not None:  # reshuffled between epochs, and not in row order
        assert not np.array_equal(got[0][0][0]["target"], got[1][0][0]["target"])
        assert not np.array_equal(got[0][0][0]["target"], feats["target"][:64])


def test_index_batches_rejects_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="different numbers of rows"):
        index_batches({"a": np.zeros(3), "b": np.zeros(4)}, 2)
