"""Batched ``tf.data`` pipelines over in-memory arrays that shuffle row indices, not rows.

``tf.data.Dataset.from_tensor_slices(arrays).shuffle(n)`` keeps a whole epoch of rows in the shuffle buffer: a
second copy of every array, held as ``n`` separate elements of one small tensor per feature (each with its own
allocation and header), which at shop scale costs more than the arrays themselves and grows with the number of
examples. :func:`index_batches` shuffles ``Dataset.range(n)`` with the same buffer and seed instead and gathers each
batch's rows from the arrays (held once, as tensors): the same batches in the same order (the shuffle's
permutation does not depend on what the elements hold; ``tests/test_training_datasets.py`` checks it against the
row pipeline), with a buffer of ``n`` scalars.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _rows(structure: Any) -> int:
    import tensorflow as tf

    sizes = {int(np.shape(a)[0]) for a in tf.nest.flatten(structure)}
    if len(sizes) != 1:
        raise ValueError(f"index_batches: the arrays have different numbers of rows ({sorted(sizes)})")
    return sizes.pop()


def index_batches(structure: Any, batch_size: int, shuffle_seed: int | None = None) -> Any:
    """``from_tensor_slices(structure)[.shuffle(n, shuffle_seed, reshuffle_each_iteration=True)].batch(batch_size)``
    as a dataset of the same batches that holds ``structure``'s arrays once and shuffles only row indices.

    ``structure``: a (nested) dict/tuple of arrays with the same number of rows. ``shuffle_seed`` None: no
    shuffle (rows in order). Raises ValueError when the arrays' row counts differ.
    """
    import tensorflow as tf

    n = _rows(structure)
    tensors = tf.nest.map_structure(tf.convert_to_tensor, structure)
    ds = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(lambda idx: tf.nest.map_structure(lambda t: tf.gather(t, idx), tensors))
