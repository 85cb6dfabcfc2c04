"""The TFRS trainer's sequence retrieval model (``trainer.retrieval_model: sequence``, the default).

Training examples come from the train split's events (:func:`recflow.models.sequence.build_sequences`): every
event of a type with a weight > 0 in ``trainer.event_weights`` is a target, its sample weight that type's
weight, and its history the same user's view/click/add-to-cart/purchase events strictly before it (item rows
from the Transform item vocabulary, event types, time gaps to the target). Early stopping measures the eval
split's targets (histories include the train events) by weighted top-10 accuracy over the whole catalog.

What it writes into the model directory (beside what the two-tower writes):

* ``sequence_encoder.npz`` / ``.json``: the encoder's weights in numpy (serving's per-request forward pass);
* ``sequence_items.parquet``: catalog item id -> encoder row (the Transform item vocabulary; catalog items
  unseen in training share the OOV row; ids outside the catalog are left out of a history);
* ``user_history.parquet``: each known user's latest ``max_len`` events (train + eval splits): item ids, event
  types and timestamps (seconds); known users are those with such events plus every user of the train split
  (a user with impressions only has an empty history);
* ``retrieval/``: a SavedModel whose ``serving_default``/``rank_all``/``query_embedding`` signatures take the
  same inputs as the two-tower's (``user_id`` + context; the user's stored history is looked up inside) and
  whose ``history_embedding`` / ``history_top_k`` signatures take a history: ``hist_item_ids`` [B, L] string
  ('' = padding), ``hist_types`` [B, L] int64 (:data:`recflow.models.sequence.EVENT_TYPE_CODES`) and
  ``hist_gaps`` [B, L] float32 seconds before the query (-1 = unknown), most recent last.

Gaps at serving are measured from the newest event of the history (stored or request), so a history means the
same thing whatever the wall clock says (replayed or simulated logs keep their own timestamps).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.examplegen import has_split
from recflow.io import epoch_seconds

#: Event types that enter a history (the user's own choices; impressions are the shop's).
HISTORY_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
ITEMS_FILE = "sequence_items.parquet"
#: The encoder's weights: recflow.models.sequence.WEIGHTS_FILE, named here too because that module imports
#: TensorFlow and this check must not (the retraining watcher uses it); a test keeps the two equal.
ENCODER_FILE = "sequence_encoder.npz"
HISTORY_FILE = bundle_layout.USER_HISTORY_FILE


@dataclass(frozen=True)
class SequenceData:
    """The events the sequence model reads, as arrays (time order within each user is restored by the
    builders)."""

    user_ids: np.ndarray  # [N] str
    user_rows: np.ndarray  # [N] int64
    item_ids: np.ndarray  # [N] str
    item_rows: np.ndarray  # [N] int64
    event_types: np.ndarray  # [N] str
    type_codes: np.ndarray  # [N] int64 (EVENT_TYPE_CODES)
    seconds: np.ndarray  # [N] float64
    weights: np.ndarray  # [N] float32 target weight (0: history only)
    split: np.ndarray  # [N] str


def item_rows_of(vocabulary: Sequence[str]) -> tuple[dict[str, int], int]:
    """Encoder row of each vocabulary item and the number of rows (the vocabulary plus one OOV row)."""
    return {str(v): i for i, v in enumerate(vocabulary)}, len(vocabulary) + 1


def load_events(examples_dir: Path, splits: Sequence[str], item_rows: Mapping[str, int], oov_row: int,
                event_weights: Mapping[str, float]) -> SequenceData:
    """The history-type events of ``splits`` (ExampleGen parquet files) with rows, codes, seconds, weights.

    Each split is read a row group at a time, only its history-type events and the four columns used, strings
    as integer codes (:func:`recflow.training.columnar.read_split_events`); rows, codes and weights are looked
    up once per distinct id, and the per-event id arrays share one string object per distinct id. The result
    equals reading the whole splits with pandas (``tests/test_training_columnar.py``)."""
    from recflow.models.sequence import EVENT_TYPE_CODES

    parts = _read_history(examples_dir, splits)
    distinct, user_rows = _user_rows(parts)
    items, item_row = _per_event(parts, "item_id", lambda c: c,
                                 lambda c: np.array([item_rows.get(i, oov_row) for i in c], np.int64))
    types, type_codes, weights = _per_event(
        parts, "event_type", lambda c: c, lambda c: np.array([EVENT_TYPE_CODES[t] for t in c], np.int64),
        lambda c: np.array([float(event_weights.get(t, 0.0)) for t in c], np.float32))
    split = np.concatenate([np.full(len(f), name, object) for f, name in zip(parts, splits, strict=True)])
    order, seconds = _log_order(parts)
    del parts
    user_rows = user_rows[order]
    return SequenceData(
        user_ids=distinct[user_rows], user_rows=user_rows, item_ids=items[order], item_rows=item_row[order],
        event_types=types[order], type_codes=type_codes[order], seconds=seconds, weights=weights[order],
        split=split[order])


@dataclass(frozen=True)
class HistoryCodes:
    """:func:`load_events`' integer arrays only (no per-event id, type, weight or split object arrays): what
    the history ranker reads. ``user_ids[r]`` is user row ``r``'s id."""

    user_ids: np.ndarray  # [users] str
    user_rows: np.ndarray  # [N] int64
    item_rows: np.ndarray  # [N] int64
    type_codes: np.ndarray  # [N] int64
    seconds: np.ndarray  # [N] float64


def load_history_codes(examples_dir: Path, splits: Sequence[str], item_rows: Mapping[str, int],
                       oov_row: int) -> HistoryCodes:
    """:func:`load_events`' ``user_rows``, ``item_rows``, ``type_codes`` and ``seconds`` (equal arrays, same
    order) and its distinct user ids, without building a Python object per event (at 10M events those arrays
    and their reordered copies were most of the history ranker's peak)."""
    from recflow.models.sequence import EVENT_TYPE_CODES

    parts = _read_history(examples_dir, splits)
    distinct, user_rows = _user_rows(parts)
    (item_row,) = _per_event(parts, "item_id", lambda c: np.array([item_rows.get(i, oov_row) for i in c], np.int64))
    (type_codes,) = _per_event(parts, "event_type", lambda c: np.array([EVENT_TYPE_CODES[t] for t in c], np.int64))
    order, seconds = _log_order(parts)
    del parts
    return HistoryCodes(distinct, user_rows[order], item_row[order], type_codes[order], seconds)


def _read_history(examples_dir: Path, splits: Sequence[str]) -> list[pd.DataFrame]:
    """Each split's history-type events: user, item, type and time, strings as categoricals."""
    from recflow.training.columnar import read_split_events

    parts = []
    for name in splits:
        if not has_split(examples_dir, name):
            raise DataError(f"{examples_dir}: no {name}.parquet (run ExampleGen first)")
        parts.append(read_split_events(examples_dir, name, ["user_id", "item_id", "event_type", "timestamp"],
                                       HISTORY_TYPES))
    return parts


def _user_rows(parts: Sequence[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct user ids of ``parts`` (sorted, as ``str``) and each event's row among them, in part order."""
    user_parts = [_as_strings(f["user_id"]) for f in parts]
    distinct = np.unique(np.concatenate([c for c, _ in user_parts])) if parts else np.zeros(0, object)
    return distinct, np.concatenate([np.searchsorted(distinct, c).astype(np.int64)[k] for c, k in user_parts])


def _per_event(parts: Sequence[pd.DataFrame], column: str, *of_values: Any) -> list[np.ndarray]:
    """For each function of ``of_values``: its array over ``column``'s distinct strings (one lookup per distinct
    value) given to each event, in part order."""
    strings = [_as_strings(f[column]) for f in parts]
    return [np.concatenate([fn(c)[k] for c, k in strings]) for fn in of_values]


def _log_order(parts: Sequence[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """The events' log order (a stable sort of their times, in part order) and their epoch seconds in it."""
    ts = pd.to_datetime(pd.concat([f["timestamp"] for f in parts], ignore_index=True), utc=True)
    order = np.argsort(ts.astype("int64").to_numpy(), kind="stable")
    return order, epoch_seconds(ts.iloc[order].reset_index(drop=True))


def _as_strings(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(each distinct value of ``series`` as ``str``, each row's position among them): a categorical column's
    categories and codes (a missing value as the string ``'None'``, as ``astype(str)`` writes it), any other
    column's distinct values."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy().astype(np.int64)
        missing = ["None"] if (codes < 0).any() else []
        cats = np.array([str(c) for c in series.cat.categories] + missing, object)
        return cats, np.where(codes >= 0, codes, len(cats) - 1)
    values = series.astype(str).to_numpy(object)
    cats, inverse = np.unique(values, return_inverse=True) if len(values) else (np.zeros(0, object),
                                                                              np.zeros(0, np.int64))
    return cats.astype(object), inverse.astype(np.int64)


def first_targets(data: SequenceData, mask: np.ndarray) -> np.ndarray:
    """``mask`` keeping only each user's first target event with each item (in time order)."""
    rows = np.flatnonzero(mask)
    order = rows[np.argsort(data.seconds[rows], kind="stable")]
    keys = data.user_rows[order] * (int(data.item_rows.max()) + 1) + data.item_rows[order]
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(mask), bool)
    keep[order[first]] = True
    return keep


def stored_histories(data: SequenceData, max_len: int) -> pd.DataFrame:
    """Each user's latest ``max_len`` events (oldest first): user_id, item_ids, event_types, timestamps."""
    order = np.lexsort((data.seconds, data.user_rows))
    frame = pd.DataFrame({"user_id": data.user_ids[order], "item_id": data.item_ids[order],
                          "event_type": data.event_types[order], "timestamp": data.seconds[order]})
    tail = frame.groupby("user_id", sort=True).tail(max_len)
    grouped = tail.groupby("user_id", sort=True)
    return pd.DataFrame({"user_id": list(grouped.groups),
                         "item_ids": grouped["item_id"].agg(list).tolist(),
                         "event_types": grouped["event_type"].agg(list).tolist(),
                         "timestamps": grouped["timestamp"].agg(list).tolist()})


def history_arrays(histories: pd.DataFrame, item_rows: Mapping[str, int], max_len: int
                   ) -> dict[str, np.ndarray]:
    """Encoder inputs of stored histories (left-padded, most recent last; gaps from each user's newest event;
    items outside ``item_rows`` dropped)."""
    from recflow.models.sequence import EVENT_TYPE_CODES

    n = len(histories)
    items = np.full((n, max_len), -1, np.int64)
    types = np.zeros((n, max_len), np.int64)
    gaps = np.full((n, max_len), -1.0, np.float32)
    for r, (ids, kinds, times) in enumerate(zip(histories["item_ids"], histories["event_types"],
                                                histories["timestamps"], strict=True)):
        keep = [(item_rows[i], EVENT_TYPE_CODES.get(k, 0), float(t))
                for i, k, t in zip(ids, kinds, times, strict=True) if i in item_rows][-max_len:]
        if not keep:
            continue
        now = max(t for _, _, t in keep)
        m = len(keep)
        items[r, max_len - m:] = [k[0] for k in keep]
        types[r, max_len - m:] = [k[1] for k in keep]
        gaps[r, max_len - m:] = [max(now - k[2], 0.0) for k in keep]
    return {"hist_items": items, "hist_types": types, "hist_gaps": gaps}


#: At most this many (example x item) scores at once in :func:`top_k_accuracy` (64 MB of float32): at 100,000
#: items a block of 4,096 examples would be 1.6 GB of scores and 0.4 GB of comparisons.
TOP_K_MAX_CELLS = 2**24


def top_k_accuracy(user_states: np.ndarray, item_vectors: np.ndarray, targets: np.ndarray,
                   weights: np.ndarray, ks: Sequence[int] = (10, 50),
                   max_cells: int = TOP_K_MAX_CELLS) -> dict[int, float]:
    """Weighted share of examples whose target item is among the ``k`` best-scored items (ties count
    against the target), per k. Scores blocks of at most 4,096 examples and ``max_cells`` example x item
    scores (at least one example a block)."""
    out = {}
    if len(targets) == 0:
        return {k: float("nan") for k in ks}
    ranks = np.zeros(len(targets), np.int64)
    block = int(min(4096, max(1, max_cells // max(len(item_vectors), 1))))
    for s in range(0, len(targets), block):
        scores = user_states[s:s + block] @ item_vectors.T
        own = scores[np.arange(len(scores)), targets[s:s + block]]
        ranks[s:s + block] = (scores >= own[:, None]).sum(axis=1) - 1
    for k in ks:
        out[k] = float(np.sum(weights * (ranks < k)) / np.sum(weights))
    return out


def is_sequence_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` (a trainer output or a bundle's ``model/``) holds a sequence encoder and its item
    table, i.e. what :func:`warm_start_encoder` can start from."""
    return (Path(model_dir) / ENCODER_FILE).is_file() and (Path(model_dir) / ITEMS_FILE).is_file()


def warm_start_encoder(encoder: Any, source_dir: Path, item_ids_by_row: Sequence[str]) -> dict[str, int]:
    """Copy a previous sequence model's encoder (``source_dir``) into the built ``encoder``: item embedding
    and bias rows by item id, every other weight as it is when its shape is unchanged.

    Raises DataError when ``source_dir`` holds no sequence encoder (e.g. a two-tower model).
    """
    from recflow.models.sequence import export_weights, load_encoder_weights

    source_dir = Path(source_dir)
    if not is_sequence_model(source_dir):
        raise DataError(f"{source_dir}: no sequence encoder to warm-start from (not a sequence model)")
    old, _meta = load_encoder_weights(source_dir)
    old_rows = pd.read_parquet(source_dir / ITEMS_FILE)
    old_row_of = dict(zip(old_rows["item_id"].astype(str), old_rows["row"].astype(int), strict=True))
    new = export_weights(encoder)
    copied = skipped = id_rows = 0
    values: dict[str, np.ndarray] = {}
    for key, value in new.items():
        if key.startswith("meta_") or key == "gap_edges":
            continue
        if key not in old or old[key].shape[1:] != value.shape[1:]:
            skipped += 1
            continue
        if key in ("item_embedding", "item_bias"):
            fresh = value.copy()
            pairs = [(r, old_row_of[i]) for r, i in enumerate(item_ids_by_row) if i in old_row_of]
            pairs.append((len(fresh) - 1, len(old[key]) - 1))  # OOV row to OOV row
            dst, src = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            fresh[dst] = old[key][src]
            values[key] = fresh
            id_rows += len(pairs) if key == "item_embedding" else 0
        elif old[key].shape == value.shape:
            values[key] = old[key]
        else:
            skipped += 1
            continue
        copied += 1
    _assign(encoder, values)
    return {"variables_copied": copied, "variables_skipped": skipped, "id_rows_copied": id_rows}


def _assign(encoder: Any, values: Mapping[str, np.ndarray]) -> None:
    """Set the encoder's weights from arrays named as :func:`recflow.models.sequence.export_weights` names
    them."""
    def put(layer: Any, names: Sequence[str]) -> None:
        current = layer.get_weights()
        layer.set_weights([values.get(n, c) if n is not None else c
                           for n, c in zip(names, current, strict=True)])

    put(encoder.item_embedding, ["item_embedding"])
    put(encoder.position_embedding, ["position_embedding"])
    if encoder.type_embedding is not None:
        put(encoder.type_embedding, ["type_embedding"])
    if encoder.gap_embedding is not None:
        put(encoder.gap_embedding, ["gap_embedding"])
    if encoder.item_bias is not None and "item_bias" in values:
        encoder.item_bias.set_weights([values["item_bias"][:, None]])
    put(encoder.final_norm, ["final_ln_gamma", "final_ln_beta"])
    put(encoder.projection, ["projection_kernel", "projection_bias"])
    for b, blk in enumerate(encoder.blocks):
        mha = blk["mha"]
        for part, dense in (("query", mha._query_dense), ("key", mha._key_dense), ("value", mha._value_dense),
                            ("output", mha._output_dense)):
            for leaf, var in (("kernel", dense.kernel), ("bias", dense.bias)):
                key = f"block{b}_{part}_{leaf}"
                if key in values:
                    var.assign(values[key])
        for ln in ("ln1", "ln2"):
            put(blk[ln], [f"block{b}_{ln}_gamma", f"block{b}_{ln}_beta"])
        for f in ("ffn1", "ffn2"):
            put(blk[f], [f"block{b}_{f}_kernel", f"block{b}_{f}_bias"])


@dataclass
class SequenceTraining:
    """What :func:`train_sequence` hands back to the trainer."""

    encoder: Any
    item_vectors: np.ndarray  # [n_candidates, D] aligned with the candidates' item ids
    user_ids: list[str]  # known users: train users and users with a stored history
    user_states: np.ndarray  # [len(user_ids), D]
    histories: pd.DataFrame
    report: dict[str, Any]
    metrics: dict[str, float]
    notes: list[str]
    catalog_rows: dict[str, int]  # catalog item id -> encoder row (OOV row for items unseen in training)


def _cap_targets(train_mask: np.ndarray, eval_mask: np.ndarray, trainer_config: Any, notes: list[str],
                 sampled: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The target masks cut to ``trainer.sequence_max_train_examples`` / ``sequence_max_eval_examples`` (seeded
    samples, :func:`recflow.training.caps.cap_mask`); a cap that binds adds a note and its ``sampled`` entry."""
    from recflow.training.caps import STREAM_SEQUENCE_EVAL, STREAM_SEQUENCE_TRAIN, cap_mask

    seed = trainer_config.seed
    train = cap_mask(train_mask, trainer_config.sequence_max_train_examples, seed, STREAM_SEQUENCE_TRAIN)
    evals = cap_mask(eval_mask, trainer_config.sequence_max_eval_examples, seed, STREAM_SEQUENCE_EVAL)
    for result, what, key, name in ((train, "sequence model trained on its train targets",
                                     "sequence_max_train_examples", "train_examples_sampled"),
                                    (evals, "sequence model early-stopped on its eval targets",
                                     "sequence_max_eval_examples", "eval_examples_sampled")):
        sampled[name] = result.report()
        if result.binds:
            notes.append(result.note(what, key))
    return train.mask, evals.mask


def _examples(data: Any, examples_dir: Path, trainer_config: Any, notes: list[str],
              sampled: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[dict[str, np.ndarray], np.ndarray] | None]:
    """The training examples (histories of train events only) and their weights, and the eval examples with
    theirs (None, with a note, when the eval split has no target), each cut to its cap (:func:`_cap_targets`,
    which records what it sampled into ``sampled``). Raises DataError when the train split has no target."""
    from recflow.models.sequence import build_sequences

    cfg = trainer_config.sequence_config()
    is_train, is_eval = data.split == "train", data.split == "eval"
    targets = data.weights > 0
    if trainer_config.first_positive_only:
        targets = first_targets(data, targets)
    train_mask, eval_mask = targets & is_train, targets & is_eval
    if not train_mask.any():
        weighted = [t for t, w in trainer_config.event_weights.items() if w > 0]
        raise DataError(f"{examples_dir}: the train split has no retrieval targets: no event of the types "
                        f"trainer.event_weights gives a weight > 0 ({', '.join(weighted)})")
    train_mask, eval_mask = _cap_targets(train_mask, eval_mask, trainer_config, notes,
                                         sampled if sampled is not None else {})
    sel = is_train
    train_seq = build_sequences(data.user_rows[sel], data.item_rows[sel], data.type_codes[sel],
                                data.seconds[sel], cfg.max_len, target_mask=train_mask[sel])
    train_w = data.weights[sel][train_seq["target_index"]]
    if not eval_mask.any():
        notes.append("eval split has no retrieval targets: the sequence model trained without early stopping")
        return train_seq, train_w, None
    eval_seq = build_sequences(data.user_rows, data.item_rows, data.type_codes, data.seconds, cfg.max_len,
                               target_mask=eval_mask)
    return train_seq, train_w, (eval_seq, data.weights[eval_seq["target_index"]])


def _encoder_states(encoder: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The encoder's state of each history in ``inputs`` (in batches of 2,048)."""
    parts = [encoder({k: inputs[k][s:s + 2048] for k in ("hist_items", "hist_types", "hist_gaps")},
                     training=False).numpy() for s in range(0, len(inputs["hist_items"]), 2048)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.item_vectors().shape[1]), np.float32)


def encode_histories(encoder: Any, histories: pd.DataFrame, catalog_rows: Mapping[str, int], max_len: int
                     ) -> np.ndarray:
    """The encoder's state of each history of ``histories`` (:func:`stored_histories` format), as the exported
    SavedModel computes it for a stored history."""
    return _encoder_states(encoder, history_arrays(histories, catalog_rows, max_len))


def _fit_with_early_stopping(model: Any, encoder: Any, ds: Any,
                             evaluation: tuple[Mapping[str, np.ndarray], np.ndarray] | None,
                             cfg: Any, strategy: Any, counter: Any) -> dict[str, list[float]]:
    """Fit epoch by epoch; with eval examples, stop after ``early_stopping_patience`` epochs without a better
    eval top-10 accuracy and restore the best epoch's weights. Returns the curves, with the examples seen per
    epoch by all replicas together. Every worker of a multi-worker run validates on the whole eval split and
    takes the same decision (:func:`recflow.training.distribution.agreed`)."""
    from recflow.training.distribution import agreed, counting_callback
    from recflow.training.early_stopping import fit_with_early_stopping

    def validate() -> dict[str, float]:
        assert evaluation is not None
        eval_seq, eval_w = evaluation
        acc = top_k_accuracy(_encoder_states(encoder, eval_seq), encoder.item_vectors(), eval_seq["target_item"],
                             eval_w)
        return agreed(strategy, {"val_top10_accuracy": acc[10], "val_top50_accuracy": acc[50]})

    curves = fit_with_early_stopping(model, encoder, ds, cfg.epochs, cfg.early_stopping_patience,
                                     validate if evaluation is not None else None, "val_top10_accuracy",
                                     callbacks=[counting_callback(counter)])
    return {"loss": curves.loss, "val_top10_accuracy": curves.validation.get("val_top10_accuracy", []),
            "val_top50_accuracy": curves.validation.get("val_top50_accuracy", []),
            "examples_seen": curves.examples_seen}


def _write_histories(data: Any, examples_dir: Path, out_dir: Path, max_len: int) -> pd.DataFrame:
    """Write each user's stored history; every train user is a known user (as with the two-tower), those with
    impressions only with an empty history."""
    from recflow.training.columnar import distinct_values

    histories = stored_histories(data, max_len)
    train_users = distinct_values(examples_dir, "train", "user_id")  # not the split's rows: its distinct users
    missing = sorted(set(train_users) - set(histories["user_id"]))
    if missing:
        empty = pd.DataFrame({"user_id": missing, "item_ids": [[] for _ in missing],
                              "event_types": [[] for _ in missing], "timestamps": [[] for _ in missing]})
        histories = pd.concat([histories, empty], ignore_index=True).sort_values("user_id").reset_index(drop=True)
    histories.to_parquet(out_dir / HISTORY_FILE, index=False)
    return histories


def _build_model(n_rows: int, cfg: Any, strategy: Any, sample: Mapping[str, np.ndarray]) -> tuple[Any, Any, Any]:
    """The encoder, its compiled retrieval model and their example counter, built under ``strategy``'s scope
    (variables mirrored on every replica)."""
    import tensorflow as tf

    from recflow.models.sequence import SequenceEncoder, SequenceRetrievalModel
    from recflow.training.distribution import ExampleCounter

    tf.keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        counter = ExampleCounter()
        encoder = SequenceEncoder(n_rows, cfg)
        model = SequenceRetrievalModel(encoder, cfg.temperature, cfg.logq_strength, cfg.feature_dropout,
                                       example_counter=counter)
        model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))
        encoder({k: sample[k][:1] for k in ("hist_items", "hist_types", "hist_gaps")})
        encoder.candidate(np.zeros(1, np.int64))
    return encoder, model, counter


def train_sequence(examples_dir: Path, vocabulary: Sequence[str], candidate_ids: Sequence[str],
                   trainer_config: Any, out_dir: Path, strategy: Any = None) -> SequenceTraining:
    """Train the sequence encoder and write its files into ``out_dir`` (see the module docstring).

    ``strategy``: the ``tf.distribute`` strategy to train under (None: the default one); ``batch_size`` is the
    global batch, split between the replicas (each replica's in-batch negatives are its share), and every
    worker reads the whole dataset and keeps its share of each batch (auto-sharding by DATA)."""
    import tensorflow as tf

    from recflow.models.sequence import save_encoder
    from recflow.training.datasets import index_batches
    from recflow.training.distribution import shard_by_data

    strategy = strategy if strategy is not None else tf.distribute.get_strategy()

    cfg = trainer_config.sequence_config()
    notes: list[str] = []
    row_of, n_rows = item_rows_of(vocabulary)
    oov = n_rows - 1
    data = load_events(examples_dir, ("train", "eval"), row_of, oov, trainer_config.event_weights)
    sel = data.split == "train"  # training histories: train events only
    sampled: dict[str, Any] = {}
    train_seq, train_w, evaluation = _examples(data, examples_dir, trainer_config, notes, sampled)
    counts = np.bincount(train_seq["target_item"], minlength=n_rows).astype(np.float64)
    item_prob = ((counts + 1.0) / (counts.sum() + n_rows)).astype(np.float32)

    feats = {k: train_seq[k] for k in ("hist_items", "hist_types", "hist_gaps", "target_item")}
    feats["candidate_prob"] = item_prob[train_seq["target_item"]]
    feats["sample_weight"] = train_w.astype(np.float32)
    n_train = len(train_w)
    encoder, model, counter = _build_model(n_rows, cfg, strategy, feats)
    ds = shard_by_data(index_batches(feats, cfg.batch_size, shuffle_seed=cfg.seed).prefetch(tf.data.AUTOTUNE))
    report: dict[str, Any] = {"model": "sequence", "config": cfg.model_dump(), "train_examples": n_train,
                              "eval_examples": 0 if evaluation is None else len(evaluation[1]),
                              "train_examples_by_type": pd.Series(data.event_types[sel][train_seq["target_index"]])
                              .value_counts().sort_index().astype(int).to_dict(),
                              "event_weights": dict(trainer_config.event_weights), **sampled}
    if trainer_config.warm_start_from:
        try:
            report["warm_start"] = warm_start_encoder(encoder, Path(trainer_config.warm_start_from),
                                                      [*map(str, vocabulary), ""])
            report["warm_start"]["from"] = str(trainer_config.warm_start_from)
        except DataError as exc:
            notes.append(f"cold start: {exc}")

    started = time.perf_counter()
    history = _fit_with_early_stopping(model, encoder, ds, evaluation, cfg, strategy, counter)
    seconds = time.perf_counter() - started
    epochs_run = len(history["loss"])
    report.update(examples_seen=history.pop("examples_seen"), history=history, epochs_run=epochs_run, seconds=seconds,
                  examples_per_second=n_train * epochs_run / seconds if seconds > 0 else None)
    metrics: dict[str, float] = {"retrieval_train_loss": history["loss"][-1],
                                 "retrieval_examples_per_second": report["examples_per_second"]}
    if evaluation is not None:
        i = int(np.argmax(history["val_top10_accuracy"]))
        metrics["retrieval_eval_top10_accuracy"] = history["val_top10_accuracy"][i]
        metrics["retrieval_eval_top50_accuracy"] = history["val_top50_accuracy"][i]

    out_dir = Path(out_dir)
    save_encoder(encoder, out_dir)
    cand_rows = np.array([row_of.get(str(i), oov) for i in candidate_ids], np.int64)
    pd.DataFrame({"item_id": [str(i) for i in candidate_ids], "row": cand_rows}).to_parquet(
        out_dir / ITEMS_FILE, index=False)
    histories = _write_histories(data, examples_dir, out_dir, cfg.max_len)
    vectors = encoder.item_vectors()
    catalog_rows = {str(i): int(r) for i, r in zip(candidate_ids, cand_rows, strict=True)}
    user_states = _encoder_states(encoder, history_arrays(histories, catalog_rows, cfg.max_len))
    (out_dir / "sequence_training.json").write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
    return SequenceTraining(encoder=encoder, item_vectors=vectors[cand_rows], user_ids=list(histories["user_id"]),
                            user_states=user_states.astype(np.float32), histories=histories, report=report,
                            metrics=metrics, notes=notes, catalog_rows=catalog_rows)
