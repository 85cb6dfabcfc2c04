"""Training of the history-aware ranking model (:mod:`recflow.models.history_ranking`) in the TFRS trainer.

Each logged impression becomes one row: the user's history strictly before the impression (the same event
types the sequence model reads, point in time: no row sees its own outcome or the future), encoded by the
trained sequence encoder exactly as serving encodes a request's history (gaps from the newest history event),
the impressed item, its slot, the request's context and the click label. Impressions of users with no earlier
history are left out: serving answers such users from the cold-start path, not with this model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.io import epoch_seconds
from recflow.models.history_ranking import (
    MAX_POSITIONS,
    N_DENSE,
    RankerInputs,
    _context_key,
    build_keras_ranker,
    click_loss,
    export_ranker,
    history_features,
    item_log_odds,
    numpy_click_logits,
    save_ranker,
)
from recflow.policy.logged_data import DECISION_STATES_FILE

#: Smallest logged propensity used in the inverse-propensity weights (larger weights are clipped to 1/this).
MIN_PROPENSITY = 0.01


@dataclass
class RankerTraining:
    """What training the ranker produced and measured (``report`` goes into training.json)."""

    trained: bool
    report: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _impressions(examples_dir: Path, context_columns: Sequence[str]) -> pd.DataFrame:
    """Impressions of train and eval with their click label, slot, propensity, context and split."""
    from recflow.features.transform import label_impressions

    frames = []
    for split in ("train", "eval"):
        df = pd.read_parquet(Path(examples_dir) / f"{split}.parquet")
        frames.append(df.assign(_split=split))
    events = pd.concat(frames, ignore_index=True)
    users_path = Path(examples_dir) / "users.parquet"
    if "region" in context_columns and "region" not in events.columns and users_path.is_file():
        events = events.merge(pd.read_parquet(users_path)[["user_id", "region"]], on="user_id", how="left")
    events["clicked"] = label_impressions(events)
    imp = events[events["event_type"] == "impression"].copy()
    imp["_seconds"] = epoch_seconds(imp["timestamp"])
    return imp.reset_index(drop=True)


def ranker_rows(imp: pd.DataFrame, seq_data: Any, encoder: Any, all_vectors: np.ndarray, item_rows: Mapping[str, int],
                item_ids: Sequence[str], max_len: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Model inputs of the impressions whose user has an earlier history: (kept impression rows, arrays).

    Arrays: ``state`` [N, D], ``hist_rows`` [N, L], ``item`` (ranker item index), ``score`` (retrieval score).
    """
    from recflow.models.sequence import history_at

    user_row_of = {u: int(r) for u, r in zip(seq_data.user_ids, seq_data.user_rows, strict=True)}
    users = imp["user_id"].astype(str).map(user_row_of)
    has_user = users.notna().to_numpy()
    rows = np.flatnonzero(has_user)
    keys = pd.DataFrame({"u": users.to_numpy()[rows].astype(np.int64), "t": imp["_seconds"].to_numpy()[rows]})
    uniq = keys.drop_duplicates().reset_index(drop=True)
    hist = history_at(seq_data.user_rows, seq_data.item_rows, seq_data.type_codes, seq_data.seconds,
                      uniq["u"].to_numpy(), uniq["t"].to_numpy(), max_len, strictly_before=True)
    valid = hist["hist_items"] >= 0
    has_hist = np.asarray(valid.any(axis=1))
    # Serving measures gaps from the newest event of the history it is given: do the same here.
    gaps = hist["hist_gaps"].astype(np.float64)
    newest = np.where(valid, gaps, np.inf).min(1)
    hist["hist_gaps"] = np.where(valid, gaps - np.where(np.isfinite(newest), newest, 0.0)[:, None], -1.0
                                 ).astype(np.float32)
    states = np.zeros((len(uniq), all_vectors.shape[1]), np.float32)
    for s in range(0, len(uniq), 2048):
        part = {k: hist[k][s:s + 2048] for k in ("hist_items", "hist_types", "hist_gaps")}
        states[s:s + 2048] = encoder(part, training=False).numpy()
    position = pd.MultiIndex.from_frame(uniq).get_indexer(pd.MultiIndex.from_frame(keys))
    keep = has_hist[position]
    rows, position = rows[keep], position[keep]
    enc_rows = np.array([item_rows.get(str(i), -1) for i in imp["item_id"].to_numpy()[rows]], np.int64)
    state = states[position]
    score = np.einsum("nd,nd->n", state, all_vectors[np.maximum(enc_rows, 0)]) * (enc_rows >= 0)
    index = {str(i): k for k, i in enumerate(item_ids)}
    item = np.array([index.get(str(i), len(item_ids)) for i in imp["item_id"].to_numpy()[rows]], np.int64)
    return rows, {"state": state, "hist_rows": hist["hist_items"][position], "enc_rows": enc_rows,
                  "item": item, "score": score.astype(np.float64)}


def write_decision_states(out_dir: Path, user_ids: np.ndarray, seconds: np.ndarray, states: np.ndarray) -> None:
    """Each logged impression's point-in-time user state (user id, seconds, embedding; one row per distinct
    user and time) for the policy trainer, which would otherwise see each user's final state -- one that already
    holds the clicks the impressions led to (:data:`DECISION_STATES_FILE`)."""
    from recflow.io import atomic_path

    frame = pd.DataFrame({"user_id": user_ids, "seconds": seconds, "embedding": list(states.astype(np.float32))})
    frame = frame.drop_duplicates(["user_id", "seconds"]).reset_index(drop=True)
    with atomic_path(Path(out_dir) / DECISION_STATES_FILE) as tmp:
        frame.to_parquet(tmp, index=False)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def _ranker_inputs(imp: pd.DataFrame, arr: dict[str, np.ndarray], context_columns: list[str], is_train: np.ndarray
                   ) -> tuple[RankerInputs, list[list[str]], float, float]:
    """The ranker's inputs of each impression; the context vocabularies (of the train split) and the retrieval
    score's standardisation."""
    score_mean = float(arr["score"][is_train].mean())
    score_std = float(arr["score"][is_train].std()) or 1.0
    dense = np.zeros((len(imp), N_DENSE), np.float32)
    dense[:, 0] = (arr["score"] - score_mean) / score_std
    dense[:, 1:] = history_features(arr["hist_rows"], arr["enc_rows"])
    vocabs = [sorted({_context_key(v) for v in imp.loc[is_train, c].tolist()}) for c in context_columns]
    codes = np.zeros((len(imp), len(context_columns)), np.int64)
    for c, (col, vocab) in enumerate(zip(context_columns, vocabs, strict=True)):
        lookup = {v: k + 1 for k, v in enumerate(vocab)}
        codes[:, c] = [lookup.get(_context_key(v), 0) for v in imp[col].tolist()]
    position = (imp["position"].fillna(0).to_numpy().astype(np.int64) if "position" in imp.columns
                else np.zeros(len(imp), np.int64))
    inputs = RankerInputs(state=arr["state"], item=arr["item"], dense=dense, context=codes,
                          position=np.clip(position, 0, MAX_POSITIONS - 1))
    return inputs, vocabs, score_mean, score_std


def _ips_weights(imp: pd.DataFrame, is_train: np.ndarray, trainer_config: Any) -> tuple[np.ndarray, bool]:
    """Inverse-propensity weights normalised to mean 1 per split (``history_ranking_ips`` and every impression
    logged with a propensity), else 1s; and whether they are used."""
    weights = np.ones(len(imp), np.float32)
    ips = bool(trainer_config.history_ranking_ips and "propensity" in imp.columns
               and imp["propensity"].notna().all())
    if ips:
        weights = (1.0 / np.clip(imp["propensity"].to_numpy(np.float64), MIN_PROPENSITY, 1.0)).astype(np.float32)
        weights[is_train] /= weights[is_train].mean()
        weights[~is_train] /= max(float(weights[~is_train].mean()), 1e-12) if (~is_train).any() else 1.0
    return weights, ips


#: The simplest candidate of the selection: per-item and context vectors frozen at zero (item click biases,
#: history-feature weights and position biases only).
PERSONAL_OFF = "personal_off"


def _eval_losses(model: Any, inputs: RankerInputs, labels: np.ndarray, weights: np.ndarray, mask: np.ndarray,
                 n_context: int) -> np.ndarray:
    """Per-example weighted log loss of ``model`` on the rows of ``mask`` (no regularisation term)."""
    sub = RankerInputs(*(getattr(inputs, f)[mask] for f in ("state", "item", "dense", "context", "position")))
    logits = numpy_click_logits(export_ranker(model, n_context), sub)
    y = labels[mask].astype(np.float64)
    loss = np.logaddexp(0.0, logits) - y * logits
    return np.asarray(weights[mask], np.float64) * loss


def one_standard_error_choice(losses: Sequence[np.ndarray]) -> tuple[int, list[dict[str, float]]]:
    """Index of the simplest candidate (the first) whose mean eval loss is within one standard error of the best
    one's (Hastie, Tibshirani & Friedman, *Elements of Statistical Learning*, 7.10); ``losses``: per-example
    losses of each candidate on the same rows, simplest first. The standard error is that of the paired
    per-example difference to the best candidate. Returns the index and each candidate's mean, difference and
    standard error."""
    means = [float(np.mean(x)) for x in losses]
    best = int(np.argmin(means))
    stats: list[dict[str, float]] = []
    chosen: int | None = None
    for k, x in enumerate(losses):
        diff = np.asarray(x, np.float64) - np.asarray(losses[best], np.float64)
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        stats.append({"mean": means[k], "difference_to_best": float(diff.mean()), "standard_error": se})
        if chosen is None and float(diff.mean()) <= se:
            chosen = k
    return (best if chosen is None else chosen), stats


def _fit_l2_grid(inputs: RankerInputs, labels: np.ndarray, weights: np.ndarray, is_train: np.ndarray,
                 has_eval: bool, n_items: int, vocabs: list[list[str]], trainer_config: Any
                 ) -> tuple[tuple[float, Any, Any], list[dict[str, Any]]]:
    """Fit the candidates -- :data:`PERSONAL_OFF`, then one ranker per L2 strength of ``history_ranking_l2``
    from the strongest to the weakest (simplest first) -- and keep the one ``history_ranking_selection`` picks on
    the eval split's log loss: ``one_standard_error`` (the simplest within one standard error of the best) or
    ``min_loss``. Without an eval click, the first candidate. Returns ``(its loss, model, history)`` and every
    trial."""
    import tensorflow as tf

    def dataset(mask: np.ndarray, shuffle: bool) -> Any:
        feats = {k: v[mask] for k, v in inputs.as_dict().items()}
        ds = tf.data.Dataset.from_tensor_slices((feats, labels[mask], weights[mask]))
        if shuffle:
            ds = ds.shuffle(int(mask.sum()), seed=trainer_config.seed + 7, reshuffle_each_iteration=True)
        return ds.batch(trainer_config.batch_size)

    base_rate = float(np.average(labels[is_train], weights=weights[is_train]))
    prior = item_log_odds(inputs.item[is_train], labels[is_train], weights[is_train], n_items)
    grid = sorted(trainer_config.history_ranking_l2, reverse=True)
    candidates: list[tuple[str | float, float, bool]] = [(PERSONAL_OFF, grid[0], False)]
    candidates += [(l2, l2, True) for l2 in grid]
    trials: list[dict[str, Any]] = []
    fitted: list[tuple[Any, Any, np.ndarray]] = []
    for name, l2, personal in candidates:
        tf.keras.utils.set_random_seed(trainer_config.seed + 7)
        model = build_keras_ranker(n_items, inputs.state.shape[1], [len(v) for v in vocabs], l2=l2,
                                   base_rate=base_rate, item_prior=prior,
                                   dense_l2=trainer_config.history_ranking_dense_l2, personal=personal)
        model.compile(optimizer=tf.keras.optimizers.Adam(trainer_config.ranking_learning_rate), loss=click_loss)
        callbacks: list[Any] = []
        if has_eval:
            callbacks.append(tf.keras.callbacks.EarlyStopping(
                monitor="val_loss", mode="min", restore_best_weights=True,
                patience=trainer_config.early_stopping_patience))
        hist = model.fit(dataset(is_train, True), validation_data=dataset(~is_train, False) if has_eval else None,
                         epochs=trainer_config.history_ranking_epochs, callbacks=callbacks, verbose=0)
        losses = (_eval_losses(model, inputs, labels, weights, ~is_train, len(vocabs)) if has_eval
                  else np.full(1, np.nan))
        fitted.append((model, hist, losses))
        trials.append({"candidate": name, "l2": l2, "personal_terms": personal,
                       "eval_log_loss": float(np.mean(losses)),
                       "epochs_run": len(hist.history.get("loss", [])),
                       "history": {k: [float(x) for x in v] for k, v in hist.history.items()}})
        if not has_eval:  # nothing to choose by: the first candidate
            break
    chosen = 0
    if has_eval:
        pick, stats = one_standard_error_choice([f[2] for f in fitted])
        for trial, st in zip(trials, stats, strict=True):
            trial.update({"difference_to_best": st["difference_to_best"], "standard_error": st["standard_error"]})
        chosen = pick if trainer_config.history_ranking_selection == "one_standard_error" else int(
            np.argmin([t["eval_log_loss"] for t in trials]))
    for k, trial in enumerate(trials):
        trial["chosen"] = k == chosen
    model, hist, _ = fitted[chosen]
    return (trials[chosen]["eval_log_loss"], model, hist), trials


def train_history_ranker(examples_dir: Path, vocabulary: Sequence[str], seq: Any, item_ids: Sequence[str],
                         spec: Mapping[str, Any], trainer_config: Any, out_dir: Path) -> RankerTraining:
    """Train the ranker on the logged impressions and write its files into ``out_dir``.

    ``seq``: the :class:`recflow.training.sequence_retrieval.SequenceTraining` of this run. Returns
    ``trained=False`` with a note when the log cannot train it (no clicked impression of a user with history).
    """

    from recflow.training.sequence_retrieval import item_rows_of, load_events

    cfg = trainer_config.sequence_config()
    context_columns = [c for c in spec.get("context_features", [])]
    imp = _impressions(examples_dir, context_columns)
    context_columns = [c for c in context_columns if c in imp.columns]
    if imp.empty or imp["clicked"].max() < 1:
        return RankerTraining(False, notes=["history ranker skipped: no clicked impression in the log"])
    row_of, n_rows = item_rows_of(vocabulary)
    data = load_events(examples_dir, ("train", "eval"), row_of, n_rows - 1, trainer_config.event_weights)
    all_vectors = seq.encoder.item_vectors()
    n_impressions = len(imp)
    rows, arr = ranker_rows(imp, data, seq.encoder, all_vectors, row_of, item_ids, cfg.max_len)
    imp = imp.iloc[rows].reset_index(drop=True)
    is_train = (imp["_split"] == "train").to_numpy()
    labels = imp["clicked"].to_numpy().astype(np.float32)
    if not is_train.any() or labels[is_train].max(initial=0) < 1:
        return RankerTraining(False, notes=["history ranker skipped: no clicked impression in the train split "
                                            "of a user with an earlier history"])

    inputs, vocabs, score_mean, score_std = _ranker_inputs(imp, arr, context_columns, is_train)
    weights, ips = _ips_weights(imp, is_train, trainer_config)
    has_eval = bool((~is_train).any() and labels[~is_train].sum() > 0)
    started = time.perf_counter()
    best, trials = _fit_l2_grid(inputs, labels, weights, is_train, has_eval, len(item_ids), vocabs, trainer_config)
    _, model, hist = best
    seconds = time.perf_counter() - started
    exported = export_ranker(model, len(context_columns))
    logits = numpy_click_logits(exported, inputs)
    report: dict[str, Any] = {
        "model": "history_ranker", "train_examples": int(is_train.sum()), "eval_examples": int((~is_train).sum()),
        "train_clicks": int(labels[is_train].sum()), "eval_clicks": int(labels[~is_train].sum()),
        "skipped_impressions_without_history": n_impressions - len(rows),
        "context_columns": context_columns, "inverse_propensity_weights": ips,
        "l2_trials": trials, "selection": trainer_config.history_ranking_selection,
        "chosen_candidate": next(t["candidate"] for t in trials if t["chosen"]),
        "history": {k: [float(x) for x in v] for k, v in hist.history.items()},
        "epochs_run": len(hist.history.get("loss", [])), "seconds": seconds}
    metrics: dict[str, float] = {}
    if has_eval:
        ev = ~is_train
        auc = _auc(labels[ev], logits[ev])
        score_auc = _auc(labels[ev], arr["score"][ev])
        report["eval_auc"], report["eval_auc_retrieval_score_alone"] = auc, score_auc
        if auc is not None:
            metrics["history_ranker_eval_auc"] = auc
        if score_auc is not None:
            metrics["history_ranker_eval_auc_score_alone"] = score_auc
    write_decision_states(Path(out_dir), imp["user_id"].astype(str).to_numpy(), imp["_seconds"].to_numpy(),
                          arr["state"])
    meta = {"item_ids": [str(i) for i in item_ids], "context_columns": context_columns,
            "context_vocabularies": vocabs, "score_mean": score_mean, "score_std": score_std,
            "max_len": cfg.max_len, "report": report}
    save_ranker(Path(out_dir), exported, meta)
    return RankerTraining(True, report=report, metrics=metrics)
