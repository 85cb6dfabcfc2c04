"""SavedModels that take RAW features: the tf.Transform graph, the towers and the candidate index inside.

``retrieval/`` signatures:

* ``serving_default(user_id, <context features>) -> {item_ids [B, K] string, scores [B, K] float}``, the top-K
  of a ``tfrs.layers.factorized_top_k.BruteForce`` index over all candidate embeddings;
* ``rank_all(...)``: the same over the whole catalog (K = number of items), for exclusions and full-ranking
  evaluation;
* ``query_embedding(...) -> {embedding [B, D]}``.

With the sequence model (:class:`SequenceRetrievalServing`) the same three signatures read the user's stored
history, and ``history_embedding`` / ``history_top_k`` take a history instead of a user id.

``ranking/`` signature ``serving_default(user_id, item_id, <context features>) -> {probability [B]}`` (click),
plus ``purchase_probability [B]`` when the log had purchases (the DCN's second task).

Context features are those the shop logs (``feature_spec.json``: ``context_features``); hour and weekday are
int64, device and region strings. Behaviour features are not inputs: the model looks each user up in the
snapshot taken at the end of the data it was trained on (unknown users get the no-history values), and the
ranking model looks item attributes up in the catalog it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tensorflow_transform as tft

_TF_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32, "string_list": tf.string}


def input_signature(spec: Mapping[str, Any], names: Sequence[str]) -> dict[str, tf.TensorSpec]:
    """TensorSpecs (one value per request) of the raw inputs ``names``."""
    return {n: tf.TensorSpec([None], _TF_DTYPES[spec["raw_features"][n]], name=n) for n in names}


class _RawFeatureModule(tf.Module):
    """Shared part: turns raw request features into transformed features with the tf.Transform graph."""

    def __init__(self, transform_graph_dir: str, spec: Mapping[str, Any], user_state: pd.DataFrame,
                 items: pd.DataFrame | None = None) -> None:
        super().__init__()
        self._spec = dict(spec)
        self.tft_layer = tft.TFTransformOutput(transform_graph_dir).transform_features_layer()
        behaviour_cols = list(spec["behaviour_features"])
        self._behaviour = behaviour_cols
        no_history = np.array([[spec["no_history_state"][c] for c in behaviour_cols]], dtype=np.float32)
        matrix = np.concatenate([user_state[behaviour_cols].to_numpy(np.float32).reshape(len(user_state), -1),
                                 no_history.reshape(1, -1)])
        self.user_state = tf.Variable(matrix, trainable=False, name="user_state")
        self._recent_n = int(spec.get("recent_items", 0))
        if self._recent_n:
            recent = np.array(user_state["recent_items"].tolist(), dtype=object).reshape(len(user_state), -1)
            recent = np.concatenate([recent, np.full((1, self._recent_n), "", dtype=object)])
            self.user_recent_items = tf.Variable(recent.astype(str), trainable=False, dtype=tf.string,
                                                 name="user_recent_items")
        # Static user attributes (segment, ...): known for every user of the users table, new ones included.
        self._user_features = [f for f in spec.get("user_features", []) if f in user_state.columns]
        self.user_attributes = {
            f: tf.Variable(user_state[f].astype(str).tolist() + [str(spec["fill_values"].get(f, ""))],
                           trainable=False, dtype=tf.string, name=f"user_{f}") for f in self._user_features}
        self.user_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(user_state["user_id"].astype(str).tolist(), tf.string),
                                                tf.range(len(user_state), dtype=tf.int64)), default_value=-1)
        self._n_users = len(user_state)
        self._item_attrs = [c for c in ("category", "brand", "price") if items is not None and c in items.columns]
        if items is not None:
            self.item_rows = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(items["item_id"].astype(str).tolist()),
                                                    tf.range(len(items), dtype=tf.int64)), default_value=-1)
            self._n_items = len(items)
            self.item_strings = {
                c: tf.Variable(items[c].astype(str).tolist() + [str(spec["fill_values"].get(c, ""))],
                               trainable=False, dtype=tf.string, name=f"item_{c}")
                for c in ("category", "brand") if c in items.columns}
            if "price" in items.columns:
                self.item_price = tf.Variable(np.append(items["price"].to_numpy(np.float32),
                                                        np.float32(spec["fill_values"].get("price", 0.0))),
                                              trainable=False, name="item_price")

    def transform(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        n = tf.shape(inputs["user_id"])[0]
        fills = self._spec.get("fill_values", {})
        raw: dict[str, tf.Tensor] = {}
        for name, kind in self._spec["raw_features"].items():  # placeholders for features not served
            value = fills.get(name, "" if kind in ("string", "string_list") else 0)
            shape = [n, self._recent_n] if kind == "string_list" else [n]
            raw[name] = tf.fill(shape, tf.constant(value, dtype=_TF_DTYPES[kind]))
        raw.update(inputs)
        row = self.user_rows.lookup(inputs["user_id"])
        row = tf.where(row < 0, tf.constant(self._n_users, tf.int64), row)
        state = tf.gather(self.user_state, row)
        for j, name in enumerate(self._behaviour):
            raw[name] = state[:, j]
        if self._recent_n:
            raw["recent_items"] = tf.gather(self.user_recent_items, row)
        for name in self._user_features:
            raw[name] = tf.gather(self.user_attributes[name], row)
        if self._item_attrs and "item_id" in inputs:
            irow = self.item_rows.lookup(inputs["item_id"])
            irow = tf.where(irow < 0, tf.constant(self._n_items, tf.int64), irow)
            for name, table in self.item_strings.items():
                raw[name] = tf.gather(table, irow)
            if "price" in self._item_attrs:
                raw["price"] = tf.gather(self.item_price, irow)
        return self.tft_layer(raw)


class RetrievalServing(_RawFeatureModule):
    """Raw user features -> top-K item ids and scores (see the module docstring)."""

    def __init__(self, transform_graph_dir: str, spec: Mapping[str, Any], user_state: pd.DataFrame,
                 query_tower: tf.keras.Model, item_ids: Sequence[str], item_embeddings: np.ndarray,
                 top_k: int) -> None:
        super().__init__(transform_graph_dir, spec, user_state)
        self.query_tower = query_tower
        self.top_k = min(int(top_k), len(item_ids))
        self.num_items = len(item_ids)
        # Saved with the model so a loader knows K and the catalog size without other files.
        self.top_k_value = tf.Variable(self.top_k, trainable=False, dtype=tf.int64, name="top_k")
        self.num_items_value = tf.Variable(self.num_items, trainable=False, dtype=tf.int64, name="num_items")
        self.index = tfrs.layers.factorized_top_k.BruteForce(k=self.top_k)
        self.index.index(tf.constant(item_embeddings, tf.float32), identifiers=tf.constant(list(item_ids)))

    def query(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.query_tower(self.transform(inputs))

    def top_k_items(self, inputs: Mapping[str, tf.Tensor], k: int) -> dict[str, tf.Tensor]:
        scores, ids = self.index(self.query(inputs), k=k)
        return {"item_ids": ids, "scores": scores}


class RankingServing(_RawFeatureModule):
    """Raw (user, item, context) -> click (and purchase) probability."""

    def __init__(self, transform_graph_dir: str, spec: Mapping[str, Any], user_state: pd.DataFrame,
                 items: pd.DataFrame, model: tf.keras.Model) -> None:
        super().__init__(transform_graph_dir, spec, user_state, items)
        self.model = model

    def probability(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.model(self.transform(inputs))
        result = {"probability": out["click"]}
        if "purchase" in out:
            result["purchase_probability"] = out["purchase"]
        return result


class SequenceRetrievalServing(tf.Module):
    """The sequence model as a SavedModel: a user's stored history (or a given one) -> state -> top-K.

    ``histories`` are the encoder inputs of the known users (``hist_items``/``hist_types``/``hist_gaps``,
    [U, L]); an unknown user gets an all-padding history. History signatures take item ids, which map to
    encoder rows through ``catalog_rows`` ('' and ids outside the catalog are padding).
    """

    def __init__(self, encoder: tf.keras.Model, user_ids: Sequence[str], histories: Mapping[str, np.ndarray],
                 catalog_rows: Mapping[str, int], item_ids: Sequence[str], item_vectors: np.ndarray,
                 top_k: int) -> None:
        super().__init__()
        self.encoder = encoder
        max_len = int(histories["hist_items"].shape[1])
        pad = {"hist_items": -1, "hist_types": 0, "hist_gaps": -1.0}
        self.stored = {k: tf.Variable(np.concatenate([histories[k], np.full((1, max_len), pad[k],
                                                                               histories[k].dtype)]),
                                      trainable=False, name=f"stored_{k}") for k in pad}
        self.user_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([str(u) for u in user_ids], tf.string),
                                                tf.range(len(user_ids), dtype=tf.int64)), default_value=-1)
        self._n_users = len(user_ids)
        self.item_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(catalog_rows), tf.string),
                                                tf.constant(list(catalog_rows.values()), tf.int64)),
            default_value=-1)
        self.top_k = min(int(top_k), len(item_ids))
        self.num_items = len(item_ids)
        self.top_k_value = tf.Variable(self.top_k, trainable=False, dtype=tf.int64, name="top_k")
        self.num_items_value = tf.Variable(self.num_items, trainable=False, dtype=tf.int64, name="num_items")
        self.index = tfrs.layers.factorized_top_k.BruteForce(k=self.top_k)
        self.index.index(tf.constant(item_vectors, tf.float32), identifiers=tf.constant(list(item_ids)))

    def stored_history(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        row = self.user_rows.lookup(user_id)
        row = tf.where(row < 0, tf.constant(self._n_users, tf.int64), row)
        return {k: tf.gather(v, row) for k, v in self.stored.items()}

    def query(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return self.encoder(self.stored_history(inputs["user_id"]), training=False)

    def history_query(self, hist_item_ids: tf.Tensor, hist_types: tf.Tensor, hist_gaps: tf.Tensor) -> tf.Tensor:
        rows = self.item_rows.lookup(hist_item_ids)
        return self.encoder({"hist_items": rows, "hist_types": hist_types, "hist_gaps": hist_gaps}, training=False)

    def top_k_items(self, inputs: Mapping[str, tf.Tensor], k: int) -> dict[str, tf.Tensor]:
        scores, ids = self.index(self.query(inputs), k=k)
        return {"item_ids": ids, "scores": scores}


def save_sequence_retrieval(module: SequenceRetrievalServing, spec: Mapping[str, Any], path: str) -> None:
    """Save ``module`` with the two-tower's signatures (``serving_default``, ``rank_all``, ``query_embedding``
    over ``user_id`` + context, the user's stored history looked up inside) plus ``history_embedding`` and
    ``history_top_k`` over ``hist_item_ids`` [B, L] string, ``hist_types`` [B, L] int64 and ``hist_gaps``
    [B, L] float32 (most recent last; see recflow.training.sequence_retrieval)."""
    sig = input_signature(spec, spec["serving_inputs"])
    hist_sig = [tf.TensorSpec([None, None], tf.string, name="hist_item_ids"),
                tf.TensorSpec([None, None], tf.int64, name="hist_types"),
                tf.TensorSpec([None, None], tf.float32, name="hist_gaps")]
    top = tf.function(lambda inputs: module.top_k_items(inputs, module.top_k), input_signature=[sig])
    every = tf.function(lambda inputs: module.top_k_items(inputs, module.num_items), input_signature=[sig])
    embed = tf.function(lambda inputs: {"embedding": module.query(inputs)}, input_signature=[sig])

    def _hist_top(hist_item_ids: tf.Tensor, hist_types: tf.Tensor, hist_gaps: tf.Tensor) -> dict[str, tf.Tensor]:
        scores, ids = module.index(module.history_query(hist_item_ids, hist_types, hist_gaps), k=module.top_k)
        return {"item_ids": ids, "scores": scores}

    hist_embed = tf.function(lambda hist_item_ids, hist_types, hist_gaps: {
        "embedding": module.history_query(hist_item_ids, hist_types, hist_gaps)}, input_signature=hist_sig)
    hist_top = tf.function(_hist_top, input_signature=hist_sig)
    module.serve_top_k, module.serve_rank_all, module.serve_embedding = top, every, embed
    module.serve_history_embedding, module.serve_history_top_k = hist_embed, hist_top
    tf.saved_model.save(module, path, signatures={
        "serving_default": top.get_concrete_function(), "rank_all": every.get_concrete_function(),
        "query_embedding": embed.get_concrete_function(),
        "history_embedding": hist_embed.get_concrete_function(),
        "history_top_k": hist_top.get_concrete_function()})


def save_retrieval(module: RetrievalServing, spec: Mapping[str, Any], path: str) -> None:
    """Save ``module`` with the ``serving_default``, ``rank_all`` and ``query_embedding`` signatures."""
    sig = input_signature(spec, spec["serving_inputs"])
    top = tf.function(lambda inputs: module.top_k_items(inputs, module.top_k), input_signature=[sig])
    every = tf.function(lambda inputs: module.top_k_items(inputs, module.num_items), input_signature=[sig])
    embed = tf.function(lambda inputs: {"embedding": module.query(inputs)}, input_signature=[sig])
    module.serve_top_k, module.serve_rank_all, module.serve_embedding = top, every, embed
    tf.saved_model.save(module, path, signatures={
        "serving_default": top.get_concrete_function(), "rank_all": every.get_concrete_function(),
        "query_embedding": embed.get_concrete_function()})


def save_ranking(module: RankingServing, spec: Mapping[str, Any], path: str) -> None:
    """Save ``module`` with a ``serving_default`` signature over user_id, item_id and the context features."""
    names = ["user_id", "item_id", *spec["context_features"]]
    fn = tf.function(module.probability, input_signature=[input_signature(spec, names)])
    module.serve_probability = fn
    tf.saved_model.save(module, path, signatures={"serving_default": fn.get_concrete_function()})
