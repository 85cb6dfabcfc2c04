"""The ranking model (TFRS): a deep & cross network predicting click and purchase of a shown item (multi-task).

It reads the same transformed features as the retrieval towers (user side and item side), embeds them with
towers of its own, and scores the pair with a DCN (Wang et al., 2021): ``x0 = [q, i, q*i]`` goes through
``cross_layers`` cross layers (``x_{l+1} = x0 * (W x_l + b) + x_l``, explicit feature crosses) and a small MLP;
one sigmoid head per task. Both tasks train on impressions: ``clicked`` (the user clicked the shown item) and,
when the log has purchases, ``purchased`` (the user bought it from that slate); the loss is
``BCE(click) + purchase_weight * BCE(purchase)``, each the mean over the global batch: per-example losses
averaged with ``tf.nn.compute_average_loss``, so under a ``tf.distribute`` strategy (several GPUs or workers) the
replicas' summed gradients are those of the global batch's mean, as on one device (a Keras loss reduced "AUTO"
is refused inside a strategy's replicas).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

from recflow.models.two_tower import FeatureTower


class DCNRankingModel(tfrs.Model):
    """P(click) and P(purchase) of (user features, item features) pairs from impression rows.

    ``call`` returns ``{"click": [B], "purchase": [B]}`` (``purchase`` only with ``purchase_weight`` > 0).
    """

    def __init__(self, query_tower: FeatureTower, candidate_tower: FeatureTower,
                 hidden_units: Sequence[int] = (64, 32), cross_layers: int = 2,
                 purchase_weight: float = 0.0, example_counter: Any = None) -> None:
        super().__init__()
        self._counter = example_counter  # recflow.training.distribution.ExampleCounter (not a tracked weight)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.cross = [tfrs.layers.dcn.Cross(name=f"cross_{i}") for i in range(cross_layers)]
        self.deep = tf.keras.Sequential([tf.keras.layers.Dense(u, activation="relu") for u in hidden_units],
                                        name="deep")
        self.purchase_weight = float(purchase_weight)
        self.heads = {"click": tf.keras.layers.Dense(1, activation="sigmoid", name="click_head")}
        self.tasks = {"click": tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(reduction=tf.keras.losses.Reduction.NONE),
            metrics=[tf.keras.metrics.AUC(name="auc"), tf.keras.metrics.BinaryAccuracy(name="accuracy")])}
        if self.purchase_weight > 0:
            self.heads["purchase"] = tf.keras.layers.Dense(1, activation="sigmoid", name="purchase_head")
            self.tasks["purchase"] = tfrs.tasks.Ranking(
                loss=tf.keras.losses.BinaryCrossentropy(reduction=tf.keras.losses.Reduction.NONE),
                metrics=[tf.keras.metrics.AUC(name="purchase_auc")])

    def call(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per-task probabilities, each of shape [batch]."""
        query, item = self.query_tower(features), self.candidate_tower(features)
        x0 = tf.concat([query, item, query * item], axis=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        x = self.deep(x)
        return {name: tf.reshape(head(x), [-1]) for name, head in self.heads.items()}

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        if training and self._counter is not None:
            self._counter.add(tf.size(features["clicked"]))
        predictions = self(features)
        labels = {"click": features["clicked"], "purchase": features.get("purchased")}
        loss = tf.constant(0.0)
        for name, task in self.tasks.items():
            weight = 1.0 if name == "click" else self.purchase_weight
            y = tf.cast(tf.reshape(labels[name], [-1, 1]), tf.float32)  # [B, 1]: the loss is per example
            per_example = task(labels=y, predictions=predictions[name][:, tf.newaxis],
                               compute_metrics=not training)
            loss += weight * tf.nn.compute_average_loss(per_example)
        return loss


#: The former name (a click-only model); the DCN with ``purchase_weight=0`` is that model plus cross layers.
ClickRankingModel = DCNRankingModel
