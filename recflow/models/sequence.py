"""A SASRec-style sequence encoder for retrieval (Kang & McAuley, 2018), TFRS in-batch softmax with logQ.

The user state is the output, at the most recent position, of causal self-attention over the user's recent
events; each event is the sum of its item embedding, a learned position (counted back from the most recent
event), its event-type embedding and the embedding of its time-gap bucket. Candidates are scored with the
*same* item embedding table (SASRec ties them), plus an optional learned scalar bias per item appended as one
more dot-product dimension (the query side appends a constant 1, as :mod:`recflow.models.two_tower` does), so
an inner-product index ranks by the full score.

Inputs, all ``[B, L]`` with the most recent event LAST and left padding:

* ``hist_items`` -- int item rows, ``-1`` = padding;
* ``hist_types`` -- int event-type codes (:data:`EVENT_TYPE_CODES`; ``0`` = unknown);
* ``hist_gaps`` -- float seconds between the event and the query time; negative or NaN = unknown (bucket 0);
  known gaps fall into log-spaced buckets (:func:`gap_buckets`).

A caller that only knows item ids (an HTTP request's history) passes type 0 and unknown gaps; training
replaces a whole row's types and gaps by "unknown" with probability ``SequenceConfig.feature_dropout`` so such
requests are served from a representation the model was trained on.

Serving's hot path needs no TensorFlow: :func:`export_weights` copies the encoder's weights into numpy arrays
and :func:`numpy_user_state` re-implements the forward pass (tested equal to Keras within 1e-4).
:func:`save_encoder` / :func:`load_encoder_weights` write and read them as ``sequence_encoder.npz`` +
``sequence_encoder.json``.

Training data: :func:`build_sequences` gives, for every target event, the same user's events *strictly before*
it in time (point in time, no leakage); :func:`history_at` gives each user's history up to a query time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
from pydantic import BaseModel, ConfigDict, Field

from recflow.errors import DataError

#: Event-type codes of ``hist_types``: 0 = unknown (an id-only history), then the schema's event types in
#: funnel order (:class:`recflow.schema.EventType`).
EVENT_TYPE_CODES: dict[str, int] = {"unknown": 0, "impression": 1, "view": 2, "click": 3, "add_to_cart": 4,
                                    "remove_from_cart": 5, "purchase": 6}
#: Number of event-type codes (the size of the type embedding).
NUM_EVENT_TYPES: int = len(EVENT_TYPE_CODES)
#: Smallest and largest bucket edges of known time gaps, in seconds (1 second .. about 3 years).
GAP_MIN_SECONDS: float = 1.0
GAP_MAX_SECONDS: float = 1e8
WEIGHTS_FILE = "sequence_encoder.npz"
META_FILE = "sequence_encoder.json"


class SequenceConfig(BaseModel):
    """Hyper-parameters of the sequence retrieval model.

    The defaults are trial 0 of ``benchmarks/quality/movielens_temporal.py``'s search, measured on
    MovieLens-100K's temporal validation split (``benchmarks/results/quality.json``:
    ``movielens_temporal.tuning.methods.recflow``, where the other trials and the chosen configuration are
    recorded); they are the cheaper configuration (32-d, one block; the trials' ``seconds`` there show what
    the larger encoders cost on CPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_len: int = Field(20, gt=0, description="Most recent events of a history fed to the encoder.")
    embedding_dim: int = Field(32, gt=0, description="Width of item/position/type/gap embeddings and of the "
                                                     "attention blocks.")
    num_blocks: int = Field(1, ge=0, description="Self-attention blocks.")
    num_heads: int = Field(2, gt=0, description="Attention heads per block (must divide embedding_dim).")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout rate of embeddings, attention and FFN.")
    use_event_type: bool = Field(True, description="Add an event-type embedding to each history event.")
    use_time_gap: bool = Field(True, description="Add a time-gap-bucket embedding to each history event.")
    time_gap_buckets: int = Field(16, ge=2, description="Gap buckets including bucket 0 (= unknown gap); "
                                                        "known gaps are split log-spaced from 1 s to 1e8 s.")
    feature_dropout: float = Field(0.1, ge=0, le=1, description="Probability, per training example, that the "
                                                                "whole history's types and gaps are set to "
                                                                "unknown (as in an id-only request).")
    learning_rate: float = Field(0.003, gt=0, description="Adam learning rate.")
    epochs: int = Field(10, gt=0, description="Maximum training epochs.")
    batch_size: int = Field(512, gt=0, description="Batch size (= in-batch negatives).")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature of the retrieval loss.")
    logq_strength: float = Field(1.0, ge=0, le=1, description="Strength of the logQ correction (0 = none).")
    item_bias: bool = Field(True, description="Learned scalar bias per item (one more dot-product "
                                              "dimension).")
    early_stopping_patience: int = Field(3, ge=1, description="Epochs without validation gain before "
                                                              "stopping "
                                                              "(only with a validation set).")
    seed: int = Field(42, ge=0, description="Seed of weights, dropout and shuffling.")


def gap_edges(n_buckets: int) -> np.ndarray:
    """The ``n_buckets - 2`` float32 edges of the log-spaced buckets of known gaps (seconds)."""
    return np.geomspace(GAP_MIN_SECONDS, GAP_MAX_SECONDS, max(n_buckets - 2, 1)).astype(np.float32)


def gap_buckets(gaps: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket of each gap: 0 for unknown (negative or NaN), else 1 + the number of edges <= the gap."""
    g = np.asarray(gaps, np.float32)
    known = g >= 0  # False for NaN
    b = 1 + np.searchsorted(gap_edges(n_buckets), np.where(known, g, 0), side="right")
    return np.where(known, np.minimum(b, n_buckets - 1), 0).astype(np.int64)


def _check_inputs(hist_items: np.ndarray, hist_types: np.ndarray | None, hist_gaps: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = np.asarray(hist_items, np.int64)
    if items.ndim == 1:
        items = items[None, :]
    types = (np.zeros_like(items) if hist_types is None
             else np.asarray(hist_types, np.int64).reshape(items.shape))
    gaps = (np.full(items.shape, -1.0, np.float32) if hist_gaps is None
            else np.asarray(hist_gaps, np.float32).reshape(items.shape))
    return items, types, gaps


# ------------------------------------------------------------------------------------------------ TensorFlow
class SequenceEncoder(tf.keras.Model):
    """Causal self-attention over a history -> the user state in the retrieval space.

    ``call({"hist_items", "hist_types", "hist_gaps"})`` returns ``[B, embedding_dim (+1 with item_bias)]``;
    :meth:`item_vectors` returns the matching ``[n_items, embedding_dim (+1)]`` candidate vectors.
    """

    def __init__(self, n_items: int, config: SequenceConfig, name: str = "sequence_encoder") -> None:
        super().__init__(name=name)
        if config.embedding_dim % config.num_heads:
            raise DataError(f"sequence config: embedding_dim {config.embedding_dim} is not divisible by "
                            f"num_heads {config.num_heads}")
        d = config.embedding_dim
        self.n_items = int(n_items)
        self.config_ = config
        self.item_embedding = tf.keras.layers.Embedding(n_items, d, name="item_embedding")
        self.position_embedding = tf.keras.layers.Embedding(config.max_len, d, name="position_embedding")
        self.type_embedding = (tf.keras.layers.Embedding(NUM_EVENT_TYPES, d, name="type_embedding")
                               if config.use_event_type else None)
        self.gap_embedding = (tf.keras.layers.Embedding(config.time_gap_buckets, d, name="gap_embedding")
                              if config.use_time_gap else None)
        self.item_bias = (tf.keras.layers.Embedding(n_items, 1, embeddings_initializer="zeros",
                                                    name="item_bias")
                          if config.item_bias else None)
        self.input_dropout = tf.keras.layers.Dropout(config.dropout)
        self.blocks = []
        for b in range(config.num_blocks):
            self.blocks.append({
                "ln1": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_ln1"),
                "mha": tf.keras.layers.MultiHeadAttention(config.num_heads, d // config.num_heads,
                                                          dropout=config.dropout, name=f"block{b}_mha"),
                "drop1": tf.keras.layers.Dropout(config.dropout),
                "ln2": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_ln2"),
                "ffn1": tf.keras.layers.Dense(d, activation="relu", name=f"block{b}_ffn1"),
                "ffn2": tf.keras.layers.Dense(d, name=f"block{b}_ffn2"),
                "drop2": tf.keras.layers.Dropout(config.dropout),
            })
            # Tracked so Keras sees the layers (a list of dicts is not auto-tracked in legacy Keras).
            for key, layer in self.blocks[-1].items():
                setattr(self, f"block{b}_{key}", layer)
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")
        self.projection = tf.keras.layers.Dense(d, name="projection")
        self.edges = tf.constant(gap_edges(config.time_gap_buckets))

    def embed_events(self, items: Any, types: Any, gaps: Any) -> tuple[Any, Any]:
        """Summed event embeddings [B, L, d] (zeros at padding) and the validity mask [B, L]."""
        items = tf.cast(items, tf.int64)
        valid = items >= 0
        length = tf.shape(items)[1]
        # Position counted back from the most recent event, so left padding does not move the real events.
        back = tf.range(length - 1, -1, -1)
        x = self.item_embedding(tf.maximum(items, 0))
        x = x + self.position_embedding(tf.minimum(back, self.config_.max_len - 1))[tf.newaxis]
        if self.type_embedding is not None:
            t = tf.cast(types, tf.int64)
            t = tf.where((t >= 0) & (t < NUM_EVENT_TYPES), t, 0)
            x = x + self.type_embedding(t)
        if self.gap_embedding is not None:
            g = tf.cast(gaps, tf.float32)
            known = g >= 0.0
            b = 1 + tf.searchsorted(self.edges, tf.reshape(tf.where(known, g, 0.0), [-1]), side="right",
                                    out_type=tf.int64)
            b = tf.reshape(b, tf.shape(g, out_type=tf.int64))
            b = tf.where(known, tf.minimum(b, self.config_.time_gap_buckets - 1), tf.zeros_like(b))
            x = x + self.gap_embedding(b)
        return x * tf.cast(valid, tf.float32)[..., tf.newaxis], valid

    def call(self, features: Mapping[str, Any], training: bool = False) -> Any:
        items = features["hist_items"]
        x, valid = self.embed_events(items, features.get("hist_types", tf.zeros_like(items)),
                                     features.get("hist_gaps", -tf.ones_like(items, tf.float32)))
        x = self.input_dropout(x, training=training)
        length = tf.shape(items)[1]
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        eye = tf.eye(length, dtype=tf.bool)
        # A query attends to earlier valid events and always to itself (padding rows stay well defined).
        mask = (causal[tf.newaxis] & valid[:, tf.newaxis, :]) | eye[tf.newaxis]
        keep = tf.cast(valid, tf.float32)[..., tf.newaxis]
        for blk in self.blocks:
            h = blk["ln1"](x)
            a = blk["mha"](h, h, attention_mask=mask, training=training)
            x = x + blk["drop1"](a, training=training)
            h = blk["ln2"](x)
            f = blk["ffn2"](blk["ffn1"](h))
            x = (x + blk["drop2"](f, training=training)) * keep
        state = self.projection(self.final_norm(x[:, -1]))
        if self.item_bias is not None:
            state = tf.concat([state, tf.ones_like(state[:, :1])], axis=1)
        return state

    def candidate(self, item_ids: Any) -> Any:
        """Candidate vectors of item rows (the tied item embedding, + the bias dimension)."""
        ids = tf.reshape(tf.cast(item_ids, tf.int64), [-1])
        vec = self.item_embedding(ids)
        if self.item_bias is not None:
            vec = tf.concat([vec, self.item_bias(ids)], axis=1)
        return vec

    def item_vectors(self) -> np.ndarray:
        """[n_items, dim] candidate vectors of every item."""
        return np.asarray(self.candidate(np.arange(self.n_items)))


class SequenceRetrievalModel(tfrs.Model):
    """Trains ``encoder``: ``tfrs.tasks.Retrieval`` in-batch softmax with ``temperature``, logQ correction of
    strength ``logq_strength`` (feature ``candidate_prob``: the target item's share of training targets),
    ``remove_accidental_hits`` and a per-example ``sample_weight`` when the batch has one; in training a row's
    types and gaps are set to unknown with probability ``feature_dropout``. Batches carry
    ``hist_items``/``hist_types``/``hist_gaps`` and ``target_item``. The loss is a sum over the batch (TFRS'
    default), so under a ``tf.distribute`` strategy the replicas' summed gradients are those of the global
    batch; ``example_counter`` counts the training rows each replica sees."""

    def __init__(self, encoder: SequenceEncoder, temperature: float = 0.1, logq_strength: float = 1.0,
                 feature_dropout: float = 0.0, example_counter: Any = None) -> None:
        super().__init__()
        self.encoder = encoder
        self._counter = example_counter  # recflow.training.distribution.ExampleCounter (not a tracked weight)
        self.logq_strength = float(logq_strength)
        self.feature_dropout = float(feature_dropout)
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

    def compute_loss(self, features: Mapping[str, Any], training: bool = False) -> Any:
        if training and self._counter is not None:
            self._counter.add(tf.shape(features["target_item"])[0])
        if training and self.feature_dropout > 0:
            # A whole row's types and gaps become unknown, as in a request that carries item ids only.
            items = features["hist_items"]
            drop = tf.random.uniform([tf.shape(items)[0], 1]) < self.feature_dropout
            features = dict(features)
            types, gaps = features["hist_types"], features["hist_gaps"]
            features["hist_types"] = tf.where(drop, tf.zeros_like(types), types)
            features["hist_gaps"] = tf.where(drop, -tf.ones_like(gaps), gaps)
        query = self.encoder(features, training=training)
        candidate = self.encoder.candidate(features["target_item"])
        kwargs: dict[str, Any] = {}
        if self.logq_strength > 0 and "candidate_prob" in features:
            prob = tf.reshape(tf.cast(features["candidate_prob"], tf.float32), [-1])
            kwargs["candidate_sampling_probability"] = tf.pow(prob, self.logq_strength)
        if "sample_weight" in features:
            kwargs["sample_weight"] = tf.reshape(tf.cast(features["sample_weight"], tf.float32), [-1])
        return self.task(query, candidate, candidate_ids=tf.reshape(features["target_item"], [-1]),
                         compute_metrics=False, compute_batch_metrics=False, **kwargs)


# --------------------------------------------------------------------------------------------- training data
def _sorted_runs(user_rows: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order by user then time (stable), first sorted position of each event's user, first sorted position
    of each event's (user, time) tie group), the last two indexed by sorted position."""
    order = np.lexsort((timestamps, user_rows))
    u, t = user_rows[order], timestamps[order]
    n = len(u)
    new_user = np.r_[True, u[1:] != u[:-1]] if n else np.zeros(0, bool)
    new_tie = new_user | np.r_[True, t[1:] != t[:-1]] if n else np.zeros(0, bool)
    pos = np.arange(n)
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0)) if n else pos
    tie_start = np.maximum.accumulate(np.where(new_tie, pos, 0)) if n else pos
    return order, user_start, tie_start


def _validate(user_rows: Any, item_rows: Any, type_codes: Any, timestamps: Any
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    u = np.asarray(user_rows, np.int64)
    i = np.asarray(item_rows, np.int64)
    ty = np.zeros_like(i) if type_codes is None else np.asarray(type_codes, np.int64)
    ts = np.asarray(timestamps, np.float64)
    if not (len(u) == len(i) == len(ty) == len(ts)):
        raise DataError(f"sequence data: user_rows/item_rows/type_codes/timestamps lengths differ "
                        f"({len(u)}/{len(i)}/{len(ty)}/{len(ts)})")
    if len(i) and (i.min() < 0 or u.min() < 0):
        raise DataError("sequence data: user_rows and item_rows must be >= 0")
    if len(ty) and (ty.min() < 0 or ty.max() >= NUM_EVENT_TYPES):
        raise DataError(f"sequence data: type_codes must lie in [0, {NUM_EVENT_TYPES}) (EVENT_TYPE_CODES)")
    if np.isnan(ts).any():
        raise DataError("sequence data: timestamps contain NaN")
    return u, i, ty, ts


def _gather(order: np.ndarray, end: np.ndarray, start_limit: np.ndarray, max_len: int, items: np.ndarray,
            types: np.ndarray, times: np.ndarray, query_time: np.ndarray) -> dict[str, np.ndarray]:
    """Histories = sorted positions [max(start_limit, end - max_len), end), left-padded, most recent last."""
    idx = end[:, None] - max_len + np.arange(max_len)[None, :]
    ok = idx >= start_limit[:, None]
    src = order[np.where(ok, idx, 0)] if len(order) else np.zeros(idx.shape, np.int64)
    hist_items = np.where(ok, items[src] if len(order) else -1, -1).astype(np.int64)
    hist_types = np.where(ok, types[src] if len(order) else 0, 0).astype(np.int64)
    gaps = (query_time[:, None] - (times[src] if len(order) else 0.0))
    hist_gaps = np.where(ok, gaps, -1.0).astype(np.float32)
    return {"hist_items": hist_items, "hist_types": hist_types, "hist_gaps": hist_gaps}


def build_sequences(user_rows: Any, item_rows: Any, type_codes: Any, timestamps: Any, max_len: int,
                    target_mask: Any = None) -> dict[str, np.ndarray]:
    """Training examples: for every event with ``target_mask`` True (all when None), the same user's up to
    ``max_len`` events strictly earlier in time (ties with the target excluded: point in time, no leakage).

    ``timestamps`` are seconds (any float/int scale in seconds; gaps are ``target time - event time``).
    Returns ``hist_items``/``hist_types`` [N, max_len] int64 (left-padded with -1 / 0, most recent last),
    ``hist_gaps`` [N, max_len] float32 (-1 at padding), ``target_item``, ``target_type``, ``target_index``
    (row of the target in the input) and ``user_row``, in input order of the targets.
    """
    u, i, ty, ts = _validate(user_rows, item_rows, type_codes, timestamps)
    mask = np.ones(len(u), bool) if target_mask is None else np.asarray(target_mask, bool)
    if mask.shape != u.shape:
        raise DataError(f"sequence data: target_mask has {mask.shape[0] if mask.ndim else 0} rows, "
                        f"events have {len(u)}")
    order, user_start, tie_start = _sorted_runs(u, ts)
    sorted_pos = np.empty(len(u), np.int64)
    sorted_pos[order] = np.arange(len(u))
    targets = np.flatnonzero(mask)
    p = sorted_pos[targets]
    out = _gather(order, tie_start[p], user_start[p], max_len, i, ty, ts, ts[targets])
    out.update(target_item=i[targets], target_type=ty[targets], target_index=targets, user_row=u[targets])
    return out


def history_at(user_rows: Any, item_rows: Any, type_codes: Any, timestamps: Any, users: Any, now: Any,
               max_len: int, strictly_before: bool = False) -> dict[str, np.ndarray]:
    """The history of each of ``users`` up to its query time ``now`` (scalar or one per user; events at
    ``t <= now`` count, ``t < now`` with ``strictly_before``), as :func:`build_sequences` arrays with gaps
    ``now - t``. A user without events gets an all-padding row."""
    u, i, ty, ts = _validate(user_rows, item_rows, type_codes, timestamps)
    users = np.asarray(users, np.int64)
    now_arr = np.broadcast_to(np.asarray(now, np.float64), users.shape).astype(np.float64)
    order = np.lexsort((ts, u))
    su, st = u[order], ts[order]
    # First sorted position of each user and the first position after its events with t <= now.
    lo = np.searchsorted(su, users, side="left")
    hi_user = np.searchsorted(su, users, side="right")
    end = lo.copy()
    side: Literal["left", "right"] = "left" if strictly_before else "right"
    for k in range(len(users)):  # one binary search per user within its own run
        end[k] = lo[k] + np.searchsorted(st[lo[k]:hi_user[k]], now_arr[k], side=side)
    return _gather(order, end, lo, max_len, i, ty, ts, now_arr)


# --------------------------------------------------------------------------------------------- numpy serving
def export_weights(encoder: SequenceEncoder) -> dict[str, np.ndarray]:
    """The encoder's weights as numpy arrays keyed by role (what :func:`numpy_user_state` reads), plus
    ``meta_*`` entries holding its shape-defining settings."""
    c = encoder.config_
    encoder.candidate(np.zeros(1, np.int64))  # builds the item-bias layer if nothing used it yet
    w: dict[str, np.ndarray] = {
        "item_embedding": encoder.item_embedding.get_weights()[0],
        "position_embedding": encoder.position_embedding.get_weights()[0],
        "final_ln_gamma": encoder.final_norm.get_weights()[0],
        "final_ln_beta": encoder.final_norm.get_weights()[1],
        "projection_kernel": encoder.projection.get_weights()[0],
        "projection_bias": encoder.projection.get_weights()[1],
        "gap_edges": gap_edges(c.time_gap_buckets),
        "meta_num_blocks": np.array(c.num_blocks), "meta_num_heads": np.array(c.num_heads),
        "meta_time_gap_buckets": np.array(c.time_gap_buckets), "meta_max_len": np.array(c.max_len),
    }
    if encoder.type_embedding is not None:
        w["type_embedding"] = encoder.type_embedding.get_weights()[0]
    if encoder.gap_embedding is not None:
        w["gap_embedding"] = encoder.gap_embedding.get_weights()[0]
    if encoder.item_bias is not None:
        w["item_bias"] = encoder.item_bias.get_weights()[0][:, 0]
    for b, blk in enumerate(encoder.blocks):
        mha = blk["mha"]
        for part, dense in (("query", mha._query_dense), ("key", mha._key_dense), ("value", mha._value_dense),
                            ("output", mha._output_dense)):
            w[f"block{b}_{part}_kernel"] = dense.kernel.numpy()
            w[f"block{b}_{part}_bias"] = dense.bias.numpy()
        for ln in ("ln1", "ln2"):
            gamma, beta = blk[ln].get_weights()
            w[f"block{b}_{ln}_gamma"], w[f"block{b}_{ln}_beta"] = gamma, beta
        for f in ("ffn1", "ffn2"):
            kernel, bias = blk[f].get_weights()
            w[f"block{b}_{f}_kernel"], w[f"block{b}_{f}_bias"] = kernel, bias
    return {k: np.asarray(v) for k, v in w.items()}


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def numpy_user_state(weights: Mapping[str, np.ndarray], hist_items: Any, hist_types: Any = None,
                     hist_gaps: Any = None) -> np.ndarray:
    """The encoder's forward pass (inference) in numpy: ``[B, dim]`` user states of ``[B, L]`` (or ``[L]``)
    histories; types default to unknown (0), gaps to unknown. Equal to ``SequenceEncoder(...)`` within
    1e-4."""
    items, types, gaps = _check_inputs(hist_items, hist_types, hist_gaps)
    emb = weights["item_embedding"]
    if items.max(initial=-1) >= emb.shape[0]:
        raise DataError(f"sequence history: item row {int(items.max())} >= n_items {emb.shape[0]}")
    bsz, length = items.shape
    max_len = int(weights["meta_max_len"])
    valid = items >= 0
    back = np.minimum(np.arange(length - 1, -1, -1), max_len - 1)
    x = emb[np.maximum(items, 0)] + weights["position_embedding"][back][None]
    if "type_embedding" in weights:
        t = np.where((types >= 0) & (types < NUM_EVENT_TYPES), types, 0)
        x = x + weights["type_embedding"][t]
    if "gap_embedding" in weights:
        x = x + weights["gap_embedding"][gap_buckets(gaps, int(weights["meta_time_gap_buckets"]))]
    x = (x * valid[..., None]).astype(np.float32)
    causal = np.tril(np.ones((length, length), bool))
    mask = (causal[None] & valid[:, None, :]) | np.eye(length, dtype=bool)[None]
    keep = valid[..., None].astype(np.float32)
    for b in range(int(weights["meta_num_blocks"])):
        p = f"block{b}_"
        h = _layer_norm(x, weights[p + "ln1_gamma"], weights[p + "ln1_beta"])
        q = np.einsum("bld,dhk->blhk", h, weights[p + "query_kernel"]) + weights[p + "query_bias"]
        k = np.einsum("bld,dhk->blhk", h, weights[p + "key_kernel"]) + weights[p + "key_bias"]
        v = np.einsum("bld,dhk->blhk", h, weights[p + "value_kernel"]) + weights[p + "value_bias"]
        q = q / np.sqrt(q.shape[-1])
        logits = np.einsum("bqhk,bshk->bhqs", q, k)
        logits = np.where(mask[:, None], logits, -1e9)
        logits = logits - logits.max(-1, keepdims=True)
        att = np.exp(logits)
        att = att / att.sum(-1, keepdims=True)
        ctx = np.einsum("bhqs,bshk->bqhk", att, v)
        a = np.einsum("bqhk,hkd->bqd", ctx, weights[p + "output_kernel"]) + weights[p + "output_bias"]
        x = x + a
        h = _layer_norm(x, weights[p + "ln2_gamma"], weights[p + "ln2_beta"])
        f = np.maximum(h @ weights[p + "ffn1_kernel"] + weights[p + "ffn1_bias"], 0)
        f = f @ weights[p + "ffn2_kernel"] + weights[p + "ffn2_bias"]
        x = (x + f) * keep
    last = _layer_norm(x[:, -1], weights["final_ln_gamma"], weights["final_ln_beta"])
    state = last @ weights["projection_kernel"] + weights["projection_bias"]
    if "item_bias" in weights:
        state = np.concatenate([state, np.ones((bsz, 1), state.dtype)], axis=1)
    return state.astype(np.float32)


def numpy_item_vectors(weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """[n_items, dim] candidate vectors from exported weights (item embedding + the bias column)."""
    emb = weights["item_embedding"]
    if "item_bias" in weights:
        return np.concatenate([emb, weights["item_bias"][:, None]], axis=1).astype(np.float32)
    return emb.astype(np.float32)


def save_encoder(encoder: SequenceEncoder | Mapping[str, np.ndarray], directory: str | Path,
                 config: SequenceConfig | None = None) -> Path:
    """Write ``sequence_encoder.npz`` (the exported weights) and ``sequence_encoder.json`` (config and
    shapes) into ``directory``; returns the npz path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, SequenceEncoder):
        weights, config = export_weights(encoder), encoder.config_
    else:
        weights = dict(encoder)
    np.savez(directory / WEIGHTS_FILE, allow_pickle=False, **weights)
    meta = {"format": "recflow.sequence_encoder/1", "n_items": int(weights["item_embedding"].shape[0]),
            "dim": int(numpy_item_vectors(weights).shape[1]),
            "config": config.model_dump() if config is not None else None,
            "event_type_codes": EVENT_TYPE_CODES}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory / WEIGHTS_FILE


def load_encoder_weights(directory: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(weights, meta) written by :func:`save_encoder`; DataError naming the file when missing or broken."""
    directory = Path(directory)
    npz, meta_path = directory / WEIGHTS_FILE, directory / META_FILE
    for path in (npz, meta_path):
        if not path.is_file():
            raise DataError(f"{path}: missing (a sequence encoder is saved by recflow.models.sequence."
                            f"save_encoder)")
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(npz) as data:
            weights = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"{directory}: unreadable sequence encoder ({exc})") from exc
    needed = {"item_embedding", "position_embedding", "projection_kernel", "meta_num_blocks"}
    if needed - set(weights):
        raise DataError(f"{npz}: missing arrays {sorted(needed - set(weights))}")
    return weights, meta
