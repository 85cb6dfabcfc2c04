"""The two-tower retrieval model (TFRS): a query tower and a candidate tower trained with in-batch softmax.

Both towers read *transformed* features (the output of :mod:`recflow.features.transform`): integer ids from the
tf.Transform vocabularies (with OOV buckets) and dense z-scored or sin/cos features. Which features exist is
decided by the shop's log (``feature_spec.json``): an ids-only log gives an id-embedding model.

The loss can apply the logQ correction (Yi et al., 2019): in-batch negatives over-sample popular items, so each
logit is reduced by the log of its item's sampling probability. Without it the model mostly relearns
popularity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

#: Transformed integer features and the vocabulary each one indexes.
VOCAB_OF: dict[str, str] = {"user_idx": "user_id", "item_idx": "item_id", "category_idx": "category",
                            "brand_idx": "brand", "device_idx": "device", "region_idx": "region",
                            "segment_idx": "segment", "recent_items_idx": "item_id"}
#: Features holding a list of ids per example (padded with -1), embedded as the mean of their embeddings.
BAG_FEATURES = frozenset({"recent_items_idx"})


class FeatureTower(tf.keras.Model):
    """Embeds the categorical features, concatenates them with the dense ones and projects to ``output_dim``.

    ``vocab_sizes`` maps each categorical transformed feature (``*_idx``) to its size including OOV buckets;
    every other feature in ``features`` is a dense float scalar.
    """

    def __init__(self, features: Sequence[str], vocab_sizes: Mapping[str, int], embedding_dim: int,
                 output_dim: int, hidden_units: Sequence[int] = (), name: str | None = None,
                 bias_of: str | None = None, constant_one: bool = False) -> None:
        super().__init__(name=name)
        # Item bias as one more dot-product dimension: the candidate tower appends a learned scalar per id
        # (``bias_of``), the query tower a constant 1 (``constant_one``), so q . c = q_emb . c_emb + b_item and
        # any inner-product index (brute force, HNSW) still ranks by the full score.
        self.bias_of = bias_of
        self.constant_one = constant_one
        self.bias = (tf.keras.layers.Embedding(vocab_sizes[bias_of], 1, embeddings_initializer="zeros",
                                               name=f"{bias_of}_bias") if bias_of else None)
        self.feature_names = list(features)
        self.categorical = [f for f in self.feature_names if f in vocab_sizes]
        self.dense_features = [f for f in self.feature_names if f not in vocab_sizes]
        # The main id gets the full width, side attributes a smaller one (they have few distinct values).
        self.embeddings = {
            f: tf.keras.layers.Embedding(vocab_sizes[f], embedding_dim if f in ("user_idx", "item_idx", *BAG_FEATURES)
                                         else max(4, embedding_dim // 4), name=f"{f}_embedding")
            for f in self.categorical
        }
        self.hidden = [tf.keras.layers.Dense(u, activation="relu", name=f"hidden_{i}")
                       for i, u in enumerate(hidden_units)]
        self.projection = tf.keras.layers.Dense(output_dim, name="projection")

    def _bag(self, name: str, ids: tf.Tensor) -> tf.Tensor:
        """Mean embedding of the non-padding ids of each row (zeros for a row with none)."""
        mask = tf.cast(ids >= 0, tf.float32)[..., tf.newaxis]
        vectors = self.embeddings[name](tf.maximum(ids, 0)) * mask
        return tf.reduce_sum(vectors, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        parts = [self._bag(f, features[f]) if f in BAG_FEATURES else self.embeddings[f](tf.reshape(features[f], [-1]))
                 for f in self.categorical]
        if self.dense_features:
            parts.append(tf.stack([tf.reshape(tf.cast(features[f], tf.float32), [-1])
                                   for f in self.dense_features], axis=1))
        x = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        for layer in self.hidden:
            x = layer(x)
        x = self.projection(x)
        if self.bias is not None and self.bias_of is not None:
            x = tf.concat([x, self.bias(tf.reshape(features[self.bias_of], [-1]))], axis=1)
        if self.constant_one:
            x = tf.concat([x, tf.ones_like(x[:, :1])], axis=1)
        return x


class TwoTowerModel(tfrs.Model):
    """In-batch softmax retrieval over (query features, positive item) pairs, optionally logQ-corrected.

    Training batches carry the transformed query and candidate features plus ``candidate_prob`` (the item's
    share of training positives) when ``logq_correction`` is on, and optionally ``sample_weight`` (the weight
    of each target event's type). ``candidates`` (a dataset of candidate
    feature dicts) enables the factorized top-K metrics, which are computed on evaluation only.
    """

    def __init__(self, query_tower: FeatureTower, candidate_tower: FeatureTower, temperature: float = 1.0,
                 logq_correction: bool = True, candidates: tf.data.Dataset | None = None,
                 metric_ks: Sequence[int] = (10, 50), logq_strength: float = 1.0,
                 example_counter: Any = None) -> None:
        super().__init__()
        self._counter = example_counter  # recflow.training.distribution.ExampleCounter (not a tracked weight)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.logq_correction = logq_correction
        self.logq_strength = float(logq_strength)
        metrics = None
        if candidates is not None:
            metrics = tfrs.metrics.FactorizedTopK(
                candidates=candidates.map(lambda c: (c["item_idx"], self.candidate_tower(c))), ks=tuple(metric_ks))
        self.task = tfrs.tasks.Retrieval(metrics=metrics, temperature=temperature,
                                         remove_accidental_hits=True)

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        if training and self._counter is not None:
            self._counter.add(tf.size(features["item_idx"]))
        query = self.query_tower(features)
        candidate = self.candidate_tower(features)
        kwargs = {}
        if self.logq_correction and "candidate_prob" in features:
            # TFRS subtracts log(p) from each logit; p ** strength subtracts strength * log(p): 1 = the full
            # correction (a full-softmax estimate), 0 = none (the in-batch loss then penalises popular items).
            prob = tf.reshape(tf.cast(features["candidate_prob"], tf.float32), [-1])
            kwargs["candidate_sampling_probability"] = tf.pow(prob, self.logq_strength)
        if "sample_weight" in features:  # the retrieval target's weight by event type (trainer.event_weights)
            kwargs["sample_weight"] = tf.reshape(tf.cast(features["sample_weight"], tf.float32), [-1])
        return self.task(query, candidate, candidate_ids=tf.reshape(features["item_idx"], [-1]),
                         compute_metrics=not training, compute_batch_metrics=False, **kwargs)
