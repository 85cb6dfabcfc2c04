"""The history-aware ranking model: P(click | the user's history, a candidate item, the context).

Why it exists: the DCN ranking model (:mod:`recflow.models.ranking`) embeds the user id, so for a user unseen at
training time -- every online user of a shop whose visitors are mostly new -- its user side is one shared
out-of-vocabulary vector and it ranks no better than chance (measured: ``benchmarks/results/organic_stages.json``).
This model reads the user only through what the request carries: the sequence model's user state of the
history and the candidate's place in that history. It is a logistic model with learned per-item parameters:

``logit = b0 + w . dense + item_bias[j] + item_vector[j] . state + item_context[j] . sum_c ctx_c[v_c] + pos[p]``

* ``dense`` (4 values): the sequence model's retrieval score of the candidate (standardised with the training
  rows' mean and deviation), ``log1p`` of how often the candidate is in the history, whether it is the most
  recent history item, and ``1 / (1 + events since the candidate was last in the history)`` (0 when never).
* ``item_bias[j]`` and ``item_vector[j] . state``: how clickable item ``j`` is overall and for this user's
  taste -- browsing taste (what the retrieval model learns) and click taste need not agree.
* ``item_context[j] . sum_c ctx_c[v_c]``: item-by-context interactions (hour, weekday, device, region).
* ``pos[p]``: the slot the impression was shown in (position bias); serving scores every candidate at slot 0.

Labels: ``clicked`` of each logged impression (1 when the user clicked that item from that slate). Rows are
weighted by the inverse of the logged propensity (clipped, normalised to mean 1) when the log has
propensities, so the model estimates the click rate of every item as if shown uniformly rather than as the
logging policy chose (``ips=False`` turns this off). L2 on the per-item vectors; early stopping on the eval
split's log loss. Items outside the training catalog and unseen context values get the shared unknown row.

The trained weights are exported as plain arrays (:func:`export_ranker`) and served in numpy
(:func:`numpy_click_logits`, checked equal to the Keras model by a test), so ranking needs no TensorFlow call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recflow.errors import DataError
from recflow.io import atomic_path

#: Bundle files of the ranker (beside the sequence encoder's files).
RANKER_WEIGHTS_FILE = "history_ranker.npz"
RANKER_META_FILE = "history_ranker.json"
#: The dense features, in column order: the retrieval score, log1p(count in history), is the last history item,
#: recency (:func:`history_features`).
DENSE_FEATURES = ("score", "seen", "last", "recency")
#: Number of dense history features.
N_DENSE = len(DENSE_FEATURES)
#: Slots with their own position bias; later slots share the last one.
MAX_POSITIONS = 20


def history_features(hist_rows: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
    """``[..., 3]`` history features of candidates: log1p(count in history), is the last history item,
    1 / (1 + events since last in history) (0 when never).

    ``hist_rows``: ``[B, L]`` encoder rows, left-padded with negatives, most recent last (or ``[L]``);
    ``candidate_rows``: ``[B]`` or ``[B, M]`` encoder rows (``[M]`` with a 1-d history). A negative candidate
    row (an item the encoder does not know) never matches.
    """
    hist = np.asarray(hist_rows, np.int64)
    cand = np.asarray(candidate_rows, np.int64)
    single = hist.ndim == 1
    if single:
        hist, cand = hist[None], cand[None]
    squeeze = cand.ndim == 1
    if squeeze:
        cand = cand[:, None]
    length = hist.shape[1]
    match = (hist[:, None, :] == cand[:, :, None]) & (cand[:, :, None] >= 0)  # [B, M, L]
    count = match.sum(-1)
    last = match[:, :, -1] if length else np.zeros(count.shape, bool)
    idx = np.where(match, np.arange(length)[None, None, :], -1).max(-1, initial=-1)  # last match, -1 when none
    recency = np.where(idx >= 0, 1.0 / (1.0 + (length - 1 - idx)), 0.0)
    out = np.stack([np.log1p(count), last.astype(np.float64), recency], axis=-1).astype(np.float32)
    if squeeze:
        out = out[:, 0]
    return out[0] if single else out


@dataclass
class RankerInputs:
    """One row per (impression or candidate): the model's inputs."""

    state: np.ndarray  # [N, D] float32 sequence user state
    item: np.ndarray  # [N] int64 ranker item index (n_items = unknown)
    dense: np.ndarray  # [N, N_DENSE] float32 (score standardised)
    context: np.ndarray  # [N, C] int64 per-feature context index (0 = unknown)
    position: np.ndarray  # [N] int64

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"state": self.state, "item": self.item, "dense": self.dense, "context": self.context,
                "position": self.position}


def build_keras_ranker(n_items: int, state_dim: int, context_sizes: Sequence[int], context_dim: int = 8,
                       l2: float = 1e-4, base_rate: float | None = None,
                       item_prior: np.ndarray | None = None, dense_l2: float | None = None,
                       personal: bool = True, dense_mask: Sequence[float] | None = None) -> Any:
    """The Keras model (inputs of :class:`RankerInputs`, output: click logit [B]).

    ``l2``: the penalty of the per-item vectors and the context terms (many parameters per click);
    ``dense_l2``: the penalty of the few history-feature weights (default: ``l2``). ``personal=False`` freezes
    the per-item vectors and item-context vectors at zero (the model is then item biases + history features +
    position: the simplest candidate of the trainer's selection). ``base_rate``: the training click rate; the
    intercept starts at its logit (clicks are rare: from 0, a few hundred Adam steps leave the model predicting
    far too many clicks). ``item_prior`` ([n_items + 1]): the starting per-item biases (:func:`item_log_odds`),
    so training refines each item's observed click rate instead of having to find it from zero with a handful
    of clicks. ``dense_mask`` ([N_DENSE] of 0/1): the dense features the model reads (a 0 column never reaches
    the logit; :func:`export_ranker` zeroes its weight)."""
    import tensorflow as tf

    reg = tf.keras.regularizers.l2(l2)
    dense_reg = tf.keras.regularizers.l2(l2 if dense_l2 is None else dense_l2)
    state = tf.keras.Input((state_dim,), name="state", dtype=tf.float32)
    item = tf.keras.Input((), name="item", dtype=tf.int64)
    dense = tf.keras.Input((N_DENSE,), name="dense", dtype=tf.float32)
    context = tf.keras.Input((len(context_sizes),), name="context", dtype=tf.int64)
    position = tf.keras.Input((), name="position", dtype=tf.int64)
    intercept = 0.0
    if base_rate is not None and 0.0 < base_rate < 1.0:
        intercept = float(np.log(base_rate / (1.0 - base_rate)))
    mask = tf.constant(np.ones(N_DENSE) if dense_mask is None else np.asarray(dense_mask), tf.float32)
    logit = tf.squeeze(tf.keras.layers.Dense(1, name="dense_weights", kernel_regularizer=dense_reg,
                                             bias_initializer=tf.keras.initializers.Constant(intercept))(
        dense * mask), -1)
    bias_init: Any = "zeros"
    if item_prior is not None:
        bias_init = tf.keras.initializers.Constant(np.asarray(item_prior, np.float32).reshape(n_items + 1, 1))
    logit += tf.squeeze(tf.keras.layers.Embedding(n_items + 1, 1, embeddings_initializer=bias_init,
                                                  name="item_bias")(item), -1)
    vec = tf.keras.layers.Embedding(n_items + 1, state_dim, embeddings_initializer="zeros",
                                    embeddings_regularizer=reg, name="item_vector", trainable=personal)(item)
    logit += tf.reduce_sum(vec * state, -1)
    if context_sizes:
        ctx = tf.add_n([tf.keras.layers.Embedding(size + 1, context_dim, embeddings_regularizer=reg,
                                                  name=f"context_{c}")(context[:, c])
                        for c, size in enumerate(context_sizes)])
        item_ctx = tf.keras.layers.Embedding(n_items + 1, context_dim, embeddings_initializer="zeros",
                                             embeddings_regularizer=reg, name="item_context",
                                             trainable=personal)(item)
        logit += tf.reduce_sum(ctx * item_ctx, -1)
    logit += tf.squeeze(tf.keras.layers.Embedding(MAX_POSITIONS, 1, embeddings_initializer="zeros",
                                                  name="position_bias")(position), -1)
    return tf.keras.Model({"state": state, "item": item, "dense": dense, "context": context,
                           "position": position}, logit, name="history_ranker")


def item_log_odds(item: np.ndarray, clicked: np.ndarray, weights: np.ndarray, n_items: int) -> np.ndarray:
    """Each item's click log-odds relative to the overall rate, shrunk towards 0 ([n_items + 1]; the last row,
    unknown items, is 0): ``logit((c_j + a p) / (n_j + a)) - logit(p)`` with ``c_j``/``n_j`` the item's
    (weighted) clicks and impressions, ``p`` the overall rate and ``a = 1 / p`` pseudo-impressions (a prior
    worth one click), so an item seen rarely starts near the average."""
    item = np.asarray(item, np.int64)
    w = np.asarray(weights, np.float64)
    clicks = np.bincount(item, weights=w * np.asarray(clicked, np.float64), minlength=n_items + 1)
    shown = np.bincount(item, weights=w, minlength=n_items + 1)
    p = float(clicks.sum() / max(shown.sum(), 1e-12))
    out = np.zeros(n_items + 1, np.float64)
    if not 0.0 < p < 1.0:
        return out
    a = 1.0 / p
    rate = (clicks + a * p) / (shown + a)
    out = np.log(rate / (1 - rate)) - np.log(p / (1 - p))
    out[n_items] = 0.0
    return out


def click_loss(labels: Any, logits: Any) -> Any:
    """Per-example binary cross-entropy of click logits ([B] in, [B] out, so per-example sample weights
    apply; Keras' ``BinaryCrossentropy`` would average a rank-1 batch into one number first)."""
    import tensorflow as tf

    labels = tf.cast(tf.reshape(labels, [-1]), tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.reshape(logits, [-1]))


def export_ranker(model: Any, n_context: int, dense_mask: Sequence[float] | None = None,
                  score_offset: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The Keras ranker's weights as named arrays (what :func:`numpy_click_logits` reads); the kernel of a
    masked dense feature is 0. ``score_offset`` ([n_items + 1]): what is subtracted from each item's retrieval
    score before standardising (:func:`score_feature`), stored with the weights."""
    layer = {w.name: w for w in model.layers}
    kernel, bias = layer["dense_weights"].get_weights()
    if dense_mask is not None:
        kernel = kernel * np.asarray(dense_mask, kernel.dtype)[:, None]
    out = {"dense_kernel": kernel[:, 0], "dense_bias": bias,
           "item_bias": layer["item_bias"].get_weights()[0][:, 0],
           "item_vector": layer["item_vector"].get_weights()[0],
           "position_bias": layer["position_bias"].get_weights()[0][:, 0]}
    if score_offset is not None:
        out["score_offset"] = np.asarray(score_offset)
    if n_context:
        out["item_context"] = layer["item_context"].get_weights()[0]
        for c in range(n_context):
            out[f"context_{c}"] = layer[f"context_{c}"].get_weights()[0]
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def score_feature(scores: np.ndarray, item: np.ndarray, offset: np.ndarray | None, mean: float, std: float
                  ) -> np.ndarray:
    """The ranker's first dense feature: the retrieval score less the item's offset (the mean user state's
    score of the item, when the ranker centres scores: what every user scores it, so the feature keeps only how
    much *this* user's state prefers it), standardised with the train split's mean and std."""
    x = np.asarray(scores, np.float64)
    if offset is not None:
        x = x - np.asarray(offset, np.float64)[np.asarray(item, np.int64)]
    return (x - mean) / std


def numpy_click_logits(weights: Mapping[str, np.ndarray], inputs: RankerInputs) -> np.ndarray:
    """The ranker's forward pass in numpy: [N] click logits (equal to the Keras model within 1e-5)."""
    logit = inputs.dense @ weights["dense_kernel"] + weights["dense_bias"][0]
    logit = logit + weights["item_bias"][inputs.item]
    logit = logit + np.einsum("nd,nd->n", weights["item_vector"][inputs.item], inputs.state)
    n_context = inputs.context.shape[1] if inputs.context.ndim == 2 else 0
    if n_context and "item_context" in weights:
        ctx = sum(weights[f"context_{c}"][inputs.context[:, c]] for c in range(n_context))
        logit = logit + np.einsum("nk,nk->n", weights["item_context"][inputs.item], ctx)
    pos = np.minimum(inputs.position, len(weights["position_bias"]) - 1)
    return (logit + weights["position_bias"][pos]).astype(np.float64)


def save_ranker(directory: Path, weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write the ranker's arrays and metadata (item ids, context vocabularies, score scaling) atomically."""
    directory = Path(directory)
    with atomic_path(directory / RANKER_WEIGHTS_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, allow_pickle=False, **weights)
    with atomic_path(directory / RANKER_META_FILE) as tmp:
        Path(tmp).write_text(json.dumps(dict(meta), indent=2, default=float), encoding="utf-8")


class HistoryRanker:
    """A trained ranker loaded from a bundle: scores candidates of one request in numpy."""

    def __init__(self, weights: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.weights = {k: np.asarray(v) for k, v in weights.items()}
        self.meta = dict(meta)
        self.item_index = {str(i): k for k, i in enumerate(self.meta["item_ids"])}
        self.n_items = len(self.meta["item_ids"])
        self.context_columns: list[str] = list(self.meta["context_columns"])
        self.context_vocab = [{str(v): k + 1 for k, v in enumerate(vocab)}
                              for vocab in self.meta["context_vocabularies"]]
        self.score_mean = float(self.meta["score_mean"])
        self.score_std = float(self.meta["score_std"])

    @classmethod
    def load(cls, directory: Path) -> HistoryRanker | None:
        """The ranker in ``directory``, or None when the bundle has none. Raises DataError when damaged."""
        directory = Path(directory)
        wpath, mpath = directory / RANKER_WEIGHTS_FILE, directory / RANKER_META_FILE
        if not wpath.is_file():
            return None
        try:
            with np.load(wpath) as npz:
                weights = {k: npz[k] for k in npz.files}
            meta = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{directory}: unreadable history ranker ({exc})") from None
        return cls(weights, meta)

    def context_codes(self, context: Mapping[str, Any]) -> np.ndarray:
        """[C] context indices of one request (0 for values never seen at training)."""
        return np.array([vocab.get(_context_key(context.get(col)), 0)
                         for col, vocab in zip(self.context_columns, self.context_vocab, strict=True)], np.int64)

    def click_probabilities(self, state: np.ndarray, hist_rows: np.ndarray, item_ids: Sequence[str],
                            candidate_rows: np.ndarray, scores: np.ndarray,
                            context: Mapping[str, Any]) -> np.ndarray:
        """P(click) of each candidate shown at the first slot.

        ``state``: the sequence user state [D]; ``hist_rows``: the history's encoder rows (most recent last);
        ``item_ids`` / ``candidate_rows``: the candidates and their encoder rows (-1 unknown); ``scores``: their
        retrieval scores (``item vector . state``).
        """
        n = len(item_ids)
        dense = np.zeros((n, N_DENSE), np.float32)
        item = np.array([self.item_index.get(str(i), self.n_items) for i in item_ids], np.int64)
        dense[:, 0] = score_feature(scores, item, self.weights.get("score_offset"), self.score_mean, self.score_std)
        dense[:, 1:] = history_features(np.asarray(hist_rows, np.int64), np.asarray(candidate_rows, np.int64))
        inputs = RankerInputs(
            state=np.broadcast_to(np.asarray(state, np.float32), (n, len(state))),
            item=item,
            dense=dense,
            context=np.broadcast_to(self.context_codes(context), (n, len(self.context_columns))),
            position=np.zeros(n, np.int64))
        return 1.0 / (1.0 + np.exp(-numpy_click_logits(self.weights, inputs)))


def _context_key(value: Any) -> str:
    """Context values as vocabulary keys (``3`` and ``3.0`` and ``'3'`` are one hour)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
