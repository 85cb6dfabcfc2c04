"""The sequence retrieval model (:mod:`recflow.models.sequence`) trained straight from integer-id event logs.

Like :mod:`recflow.training.id_two_tower`, this is for protocols that fix their own split (the MovieLens
benchmarks) and for tests: rows are 0-based item ids, timestamps are seconds. Every target event (all events,
or those selected by ``target_mask``) is one example whose history is the same user's earlier events
(:func:`recflow.models.sequence.build_sequences`, point in time). With a validation set, training stops after
``early_stopping_patience`` epochs without an NDCG@k gain and keeps the best epoch's weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recflow.errors import DataError
from recflow.models.sequence import (
    SequenceConfig,
    SequenceEncoder,
    SequenceRetrievalModel,
    build_sequences,
    export_weights,
    numpy_item_vectors,
    numpy_user_state,
)
from recflow.training.early_stopping import fit_with_early_stopping


@dataclass
class SequenceValidation:
    """Held-out queries for early stopping: histories [V, L] (as :func:`~recflow.models.sequence.history_at`
    returns), the relevant item rows of each query and, optionally, item rows never to recommend (its train
    items); the score is the mean NDCG@``k`` with binary relevance."""

    hist_items: np.ndarray
    hist_types: np.ndarray
    hist_gaps: np.ndarray
    relevant: list[np.ndarray]
    exclude: list[np.ndarray] | None = None
    k: int = 10


def ndcg_at_k(scores: np.ndarray, relevant: list[np.ndarray], exclude: list[np.ndarray] | None,
              k: int) -> float:
    """Mean NDCG@k (binary relevance) of score rows; excluded items are never ranked."""
    scores = np.array(scores, np.float64, copy=True)
    if exclude is not None:
        for row, banned in enumerate(exclude):
            scores[row, np.asarray(banned, np.int64)] = -np.inf
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for row, rel in enumerate(relevant):
        rel_set = set(np.asarray(rel, np.int64).tolist())
        if not rel_set:
            continue
        dcg = sum(discount[j] for j, item in enumerate(top[row]) if int(item) in rel_set)
        total += dcg / discount[: min(len(rel_set), k)].sum()
    return total / max(len(relevant), 1)


@dataclass
class IdSequenceModel:
    """A trained sequence model: :meth:`user_state` of histories and :meth:`scores` against every item."""

    encoder: SequenceEncoder
    config: SequenceConfig
    weights: dict[str, np.ndarray]
    item_vectors: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def user_state(self, hist_items: np.ndarray, hist_types: np.ndarray | None = None,
                   hist_gaps: np.ndarray | None = None, batch_size: int = 1024) -> np.ndarray:
        """[B, dim] user states (numpy forward pass, as serving computes them); types/gaps default unknown."""
        items = np.asarray(hist_items, np.int64)
        if items.ndim == 1:
            items = items[None]
        out = []
        for s in range(0, len(items), batch_size):
            sl = slice(s, s + batch_size)
            out.append(numpy_user_state(self.weights, items[sl],
                                        None if hist_types is None else np.asarray(hist_types)[sl],
                                        None if hist_gaps is None else np.asarray(hist_gaps)[sl]))
        return np.concatenate(out) if out else np.zeros((0, self.item_vectors.shape[1]), np.float32)

    def scores(self, hist_items: np.ndarray, hist_types: np.ndarray | None = None,
               hist_gaps: np.ndarray | None = None) -> np.ndarray:
        """[B, n_items] scores of every item for each history."""
        return self.user_state(hist_items, hist_types, hist_gaps) @ self.item_vectors.T


def fit_id_sequence(user_rows: np.ndarray, item_rows: np.ndarray, type_codes: np.ndarray | None,
                    timestamps: np.ndarray, n_items: int, config: SequenceConfig,
                    validation: SequenceValidation | None = None, target_mask: np.ndarray | None = None,
                    sample_weights: np.ndarray | None = None) -> IdSequenceModel:
    """Train the sequence model on events (user row, item row < ``n_items``, event-type code, time in
    seconds).

    ``target_mask`` selects the events that are prediction targets (default: all); ``sample_weights`` (one per
    event) weight each target's loss (e.g. per event type). Returns the model with ``stats``: epochs run, best
    epoch, seconds, examples/second, losses and validation NDCG per epoch.
    """
    import tensorflow as tf

    items = np.asarray(item_rows, np.int64)
    if len(items) == 0:
        raise DataError("id sequence: no training events")
    if items.max() >= n_items:
        raise DataError(f"id sequence: item row {int(items.max())} >= n_items {n_items}")
    data = build_sequences(user_rows, items, type_codes, timestamps, config.max_len, target_mask)
    n = len(data["target_item"])
    if n == 0:
        raise DataError("id sequence: target_mask selects no event")
    counts = np.bincount(data["target_item"], minlength=n_items).astype(np.float64)
    prob = ((counts + 1) / (counts.sum() + n_items)).astype(np.float32)
    feats = {"hist_items": data["hist_items"], "hist_types": data["hist_types"],
             "hist_gaps": data["hist_gaps"], "target_item": data["target_item"],
             "candidate_prob": prob[data["target_item"]]}
    if sample_weights is not None:
        w = np.asarray(sample_weights, np.float32)
        if w.shape != items.shape:
            raise DataError(f"id sequence: sample_weights has {len(w)} rows, events have {len(items)}")
        feats["sample_weight"] = w[data["target_index"]]
    tf.keras.utils.set_random_seed(config.seed)
    ds = (tf.data.Dataset.from_tensor_slices(feats)
          .shuffle(n, seed=config.seed, reshuffle_each_iteration=True)
          .batch(config.batch_size).prefetch(tf.data.AUTOTUNE))
    encoder = SequenceEncoder(n_items, config)
    model = SequenceRetrievalModel(encoder, config.temperature, config.logq_strength, config.feature_dropout)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))

    def validate() -> dict[str, float]:
        assert validation is not None
        w = export_weights(encoder)
        s = numpy_user_state(w, validation.hist_items, validation.hist_types, validation.hist_gaps)
        return {"ndcg": ndcg_at_k(s @ numpy_item_vectors(w).T, validation.relevant, validation.exclude,
                                  validation.k)}

    started = time.perf_counter()
    curves = fit_with_early_stopping(model, encoder, ds, config.epochs, config.early_stopping_patience,
                                     validate if validation is not None else None, "ndcg")
    seconds = time.perf_counter() - started
    losses, val_scores, best_epoch = curves.loss, curves.validation.get("ndcg", []), curves.best_epoch
    weights = export_weights(encoder)
    stats = {"epochs_run": len(losses), "best_epoch": best_epoch or len(losses), "train_examples": n,
             "seconds": seconds, "examples_per_second": n * len(losses) / seconds, "loss": losses,
             "validation_ndcg": val_scores}
    return IdSequenceModel(encoder, config, weights, numpy_item_vectors(weights), stats)
