"""The ranking model (TFRS): predicts the probability that a shown item is clicked.

It reads the same transformed features as the retrieval towers (user side and item side), embeds them with
towers of its own and scores the pair with a small MLP trained with binary cross-entropy on impressions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

from recflow.models.two_tower import FeatureTower


class ClickRankingModel(tfrs.Model):
    """P(click | user features, item features) for impression rows labelled by ``clicked`` (0/1)."""

    def __init__(self, query_tower: FeatureTower, candidate_tower: FeatureTower,
                 hidden_units: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.scorer = tf.keras.Sequential(
            [tf.keras.layers.Dense(u, activation="relu") for u in hidden_units]
            + [tf.keras.layers.Dense(1, activation="sigmoid")], name="scorer")
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(),
            metrics=[tf.keras.metrics.AUC(name="auc"), tf.keras.metrics.BinaryAccuracy(name="accuracy")])

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Click probabilities, shape [batch]."""
        query, item = self.query_tower(features), self.candidate_tower(features)
        # The element-wise product lets the MLP see user-item affinity directly (as in NeuMF's GMF branch).
        pair = tf.concat([query, item, query * item], axis=1)
        return tf.reshape(self.scorer(pair), [-1])

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        labels = tf.cast(tf.reshape(features["clicked"], [-1]), tf.float32)
        return self.task(labels=labels, predictions=self(features), compute_metrics=not training)
