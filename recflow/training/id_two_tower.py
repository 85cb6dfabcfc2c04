"""A sequence-aware two-tower model trained straight from (user, item, time) interactions.

The pipeline's trainer (:mod:`recflow.training.tfrs_trainer`) reads Transform's output; this module builds the
same TFRS towers (:class:`recflow.models.two_tower.FeatureTower`, :class:`~recflow.models.two_tower.TwoTowerModel`)
on integer ids for public data sets whose protocol fixes the split (the MovieLens benchmarks) and for fast tests.

Query tower: user id embedding + the mean embedding of the user's last ``history`` items *before* the example
(point in time, so training sees what serving sees) + optional dense user features. Candidate tower: item id
(+ optional category) and a learned item bias. Loss: in-batch softmax with temperature and logQ correction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recflow.errors import DataError


class IdTwoTowerConfig(BaseModel):
    """Hyper-parameters of :func:`fit_id_two_tower`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_dim: int = Field(64, gt=0, description="Embedding and tower output width.")
    history: int = Field(20, ge=0, description="Recent items pooled into the query (0: id-only user tower).")
    use_user_id: bool = Field(True, description="Embed the user id in the query tower.")
    hidden_units: tuple[int, ...] = Field((), description="ReLU layers of both towers before the projection.")
    epochs: int = Field(10, gt=0, description="Training epochs.")
    batch_size: int = Field(1024, gt=0, description="Batch size (= in-batch negatives).")
    learning_rate: float = Field(0.05, gt=0, description="Adagrad learning rate.")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature.")
    logq_strength: float = Field(1.0, ge=0, le=1, description="Strength of the logQ correction.")
    item_bias: bool = Field(True, description="Learned scalar bias per item.")
    seed: int = Field(42, ge=0, description="Seed of weights and shuffling.")


@dataclass
class IdTwoTower:
    """A trained model: ``user_vectors(users, histories)`` and ``item_vectors`` give dot-product scores."""

    query_tower: Any
    candidate_tower: Any
    n_users: int
    n_items: int
    history: int
    item_vectors: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    user_attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def user_vectors(self, users: np.ndarray, histories: np.ndarray | None = None) -> np.ndarray:
        """Query embeddings of user rows ``users`` with their recent-item rows ``histories`` [B, history]
        (-1 = padding)."""
        feats = self._query_features(np.asarray(users, np.int64), histories)
        return self.query_tower.predict(feats, batch_size=4096, verbose=0)

    def scores(self, users: np.ndarray, histories: np.ndarray | None = None) -> np.ndarray:
        """[B, n_items] scores of every item for each query."""
        return self.user_vectors(users, histories) @ self.item_vectors.T

    def _query_features(self, users: np.ndarray, histories: np.ndarray | None) -> dict[str, np.ndarray]:
        feats = {"user_idx": users}
        for name, codes in self.user_attributes.items():
            feats[name] = codes[users]
        if self.history:
            if histories is None:
                histories = np.full((len(users), self.history), -1, np.int64)
            feats["recent_items_idx"] = np.asarray(histories, np.int64)
        return feats


def recent_item_histories(user_rows: np.ndarray, item_rows: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """For each interaction i, the item rows of the same user's ``n`` previous interactions (most recent
    first, -1 padded). ``order`` sorts interactions by (user, time); ties keep input order."""
    out = np.full((len(user_rows), n), -1, np.int64)
    if n == 0 or len(user_rows) == 0:
        return out
    idx = np.asarray(order)
    u, it = user_rows[idx], item_rows[idx]
    start = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    pos = np.arange(len(u)) - np.repeat(start, np.diff(np.r_[start, len(u)]))
    for lag in range(1, n + 1):
        ok = pos >= lag
        rows = np.flatnonzero(ok)
        out[idx[rows], lag - 1] = it[rows - lag]
    return out


def last_items(user_rows: np.ndarray, item_rows: np.ndarray, times: np.ndarray, n_users: int, n: int) -> np.ndarray:
    """[n_users, n] item rows of each user's ``n`` latest interactions (most recent first, -1 padded)."""
    out = np.full((n_users, n), -1, np.int64)
    if n == 0:
        return out
    frame = pd.DataFrame({"u": user_rows, "i": item_rows, "t": times}).sort_values(["u", "t"], kind="stable")
    for user, items in frame.groupby("u", sort=False)["i"]:
        latest = items.to_numpy()[::-1][:n]
        out[user, : len(latest)] = latest
    return out


def fit_id_two_tower(user_rows: np.ndarray, item_rows: np.ndarray, times: np.ndarray, n_users: int,
                     n_items: int, config: IdTwoTowerConfig,
                     user_attributes: dict[str, np.ndarray] | None = None,
                     item_attributes: dict[str, np.ndarray] | None = None) -> IdTwoTower:
    """Train on interactions (user row, item row, time); rows are 0-based ids < ``n_users`` / ``n_items``.

    ``user_attributes`` / ``item_attributes`` map a feature name (e.g. ``segment_idx``, ``category_idx``) to
    integer codes per user / item row (0..max); they are embedded in the query / candidate tower, so a user or
    item without interactions still gets an embedding from its attributes.

    Each interaction is one positive example whose query carries the user's previous ``config.history`` items.
    Returns the model with every item's vector and ``stats`` (epochs, seconds, examples/second, losses).
    """
    import tensorflow as tf

    from recflow.models.two_tower import FeatureTower, TwoTowerModel

    user_rows, item_rows = np.asarray(user_rows, np.int64), np.asarray(item_rows, np.int64)
    if len(user_rows) == 0:
        raise DataError("id two-tower: no training interactions")
    if user_rows.max() >= n_users or item_rows.max() >= n_items or min(user_rows.min(), item_rows.min()) < 0:
        raise DataError("id two-tower: user/item rows must lie in [0, n_users) / [0, n_items)")
    tf.keras.utils.set_random_seed(config.seed)
    order = np.lexsort((np.asarray(times), user_rows))
    feats: dict[str, np.ndarray] = {"user_idx": user_rows, "item_idx": item_rows}
    q_feats = ["user_idx"] if config.use_user_id else []
    vocab = {"user_idx": n_users, "item_idx": n_items}
    if config.history:
        feats["recent_items_idx"] = recent_item_histories(user_rows, item_rows, order, config.history)
        vocab["recent_items_idx"] = n_items
        q_feats.append("recent_items_idx")
    if not q_feats:
        raise DataError("id two-tower: the query tower needs the user id or a history")
    user_attributes = {k: np.asarray(v, np.int64) for k, v in (user_attributes or {}).items()}
    item_attributes = {k: np.asarray(v, np.int64) for k, v in (item_attributes or {}).items()}
    for name, codes in user_attributes.items():
        feats[name] = codes[user_rows]
        vocab[name] = int(codes.max()) + 1
        q_feats.append(name)
    for name, codes in item_attributes.items():
        feats[name] = codes[item_rows]
        vocab[name] = int(codes.max()) + 1
    counts = np.bincount(item_rows, minlength=n_items).astype(np.float64)
    feats["candidate_prob"] = ((counts + 1) / (counts.sum() + n_items)).astype(np.float32)[item_rows]
    ds = (tf.data.Dataset.from_tensor_slices(feats)
          .shuffle(len(user_rows), seed=config.seed, reshuffle_each_iteration=True)
          .batch(config.batch_size).prefetch(tf.data.AUTOTUNE))
    query = FeatureTower(q_feats, vocab, config.embedding_dim, config.embedding_dim, config.hidden_units,
                         name="query", constant_one=config.item_bias)
    cand = FeatureTower(["item_idx", *item_attributes], vocab, config.embedding_dim, config.embedding_dim,
                        config.hidden_units, name="candidate",
                        bias_of="item_idx" if config.item_bias else None)
    model = TwoTowerModel(query, cand, config.temperature, logq_correction=config.logq_strength > 0,
                          logq_strength=config.logq_strength)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate))
    started = time.perf_counter()
    hist = model.fit(ds, epochs=config.epochs, verbose=0)
    seconds = time.perf_counter() - started
    item_vectors = cand.predict({"item_idx": np.arange(n_items, dtype=np.int64), **item_attributes},
                                batch_size=4096, verbose=0)
    stats = {"epochs": config.epochs, "train_examples": int(len(user_rows)), "seconds": seconds,
             "examples_per_second": len(user_rows) * config.epochs / seconds,
             "loss": [float(v) for v in hist.history["loss"]]}
    return IdTwoTower(query, cand, n_users, n_items, config.history, item_vectors, stats, user_attributes)
