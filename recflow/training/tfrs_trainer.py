"""The TFRS trainer: a two-tower retrieval model and a click ranking model on Transform's output.

Reads ``examples_dir`` (ExampleGen) and ``transform_dir`` (Transform) and writes into ``out_dir``:

* ``retrieval/``: SavedModel, raw features in, top-K ``item_ids`` and ``scores`` out (see recflow.models.export);
* ``ranking/``: SavedModel, raw (user, item, context) in, click ``probability`` out -- only when the log has
  impressions and clicks (otherwise ``TrainResult.notes`` says why it was skipped);
* ``item_embeddings.parquet`` (item_id, embedding list<float32>), ``user_embeddings.parquet`` (user_id,
  embedding) for the users in the train split, ``user_context.parquet`` (each user's latest logged context,
  used when a caller has no request context);
* with the sequence model, ``hybrid.json`` and (blend weight > 0) ``item_item.npy``: EASE blended with the
  sequence model's scores, the weight chosen on the eval split (``trainer.hybrid``, recflow.training.hybrid);
* ``logs/``: TensorBoard logs of the training curves; ``training.json``: history per epoch, examples/second,
  epochs run, metrics and the config.

Retrieval's label is the next interaction of the user: every view, click, add-to-cart and purchase is a training
target, weighted by its type (``trainer.event_weights``; a type weighted 0 is dropped), with in-batch softmax,
logQ correction and early stopping on the eval split's (weighted) factorized top-10 accuracy. The ranking model's
labels are click (and purchase) given an impression (see recflow.models.ranking).
The ``tf.distribute`` strategy is ``trainer.distribution`` (recflow.training.distribution): by default
MirroredStrategy when a GPU is visible, the default strategy otherwise; ``multi_worker_mirrored`` trains on the
workers of ``TF_CONFIG``, where only the chief writes ``out_dir`` (docs/pipeline.md, "Training on several GPUs
/ workers"). Seeded: the same inputs and seed give the same metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.index import CandidateIndexConfig, build_index, measure_index_recall, save_index
from recflow.io import staged_dir
from recflow.memory import release_freed_memory
from recflow.training.distribution import DistributionConfig
from recflow.training.hybrid import HybridConfig

log = logging.getLogger(__name__)

#: Event types that can be a retrieval target (the user's own choice of an item), in funnel order.
TARGET_EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0}


class TrainerConfig(BaseModel):
    """Hyper-parameters of the TFRS trainer (the ``trainer`` section of the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retrieval_model: Literal["sequence", "two_tower"] = Field(
        "sequence", description="The retrieval model: 'sequence' (self-attention over the user's recent events, "
        "recflow.models.sequence; serves any user with a history, new users included, from that history) or "
        "'two_tower' (id and feature towers, recflow.models.two_tower).")
    sequence: dict[str, Any] = Field(
        default_factory=dict, description="Settings of the sequence model, overriding the defaults of "
        "recflow.models.sequence.SequenceConfig (max_len, embedding_dim, num_blocks, num_heads, dropout, "
        "epochs, batch_size, learning_rate, temperature, logq_strength, early_stopping_patience, seed, ...); "
        "the two-tower settings above do not apply to it, event_weights, first_positive_only, top_k, index "
        "and warm_start_from do.")
    embedding_dim: int = Field(32, gt=0, description="Width of the user/item embeddings and tower outputs "
                               "(two-tower and ranking model).")
    epochs: int = Field(10, gt=0, description="Maximum training epochs (early stopping may end sooner).")
    batch_size: int = Field(512, gt=0, description="Examples per batch (also the in-batch negatives).")
    learning_rate: float = Field(0.05, gt=0, description="Adagrad learning rate.")
    temperature: float = Field(
        0.2, gt=0, description="Softmax temperature of the retrieval loss (simulator default world, NDCG@10 on "
        "test: 0.419 at 0.1, 0.438 at 0.2).")
    logq_correction: bool = Field(True, description="Correct in-batch negatives for item popularity (logQ).")
    logq_strength: float = Field(
        1.0, ge=0.0, le=1.0,
        description="How much of log(item sampling probability) the logQ correction subtracts (1 = all: the "
        "full-softmax estimate; smaller values keep part of the in-batch popularity penalty).")
    first_positive_only: bool = Field(
        False, description="Train and early-stop on each user's first positive event per item only (cart, "
        "purchase and repeat clicks of an item already chosen are dropped): what the Evaluator measures is "
        "discovery of items the user has not interacted with.")
    item_bias: bool = Field(
        True, description="Learn a scalar bias per item (an extra dot-product dimension): the popularity prior "
        "the simulated shop's clicks follow, which plain embeddings learn slowly.")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Sample weight of each event type as a retrieval target (view, click, add_to_cart, "
        "purchase; 0 drops the type, a type not listed weighs 0). Every type weighs 1 by default: the "
        "retrieval label is the user's next interaction whatever its type, so a shop whose signal is mostly "
        "views trains on its views.")
    top_k: int = Field(100, gt=0, description="Items returned by the retrieval signature.")
    early_stopping_patience: int = Field(2, ge=0, description="Epochs without eval improvement before stopping.")
    ranking_epochs: int = Field(10, gt=0, description="Maximum epochs of the ranking model.")
    ranking_learning_rate: float = Field(0.01, gt=0, description="Adam learning rate of the ranking model.")
    ranking_cross_layers: int = Field(2, ge=0, description="Cross layers of the DCN ranking model.")
    ranking_hidden_units: tuple[int, ...] = Field((64, 32), description="Deep layers of the DCN ranking model.")
    purchase_weight: float = Field(
        0.5, ge=0.0, description="Weight of the purchase task in the ranking loss (0 = click only); used when "
        "the log has purchases.")
    history_ranking: bool = Field(
        True, description="With the sequence retrieval model, also train the history-aware ranking model "
        "(recflow.models.history_ranking: the user only through the request's history, so it ranks users unseen "
        "at training) and rank with it at serving whenever a request has a sequence state; the DCN ranking model "
        "stays for explanations, per-slice metrics and history-less requests.")
    history_ranking_ips: bool = Field(
        True, description="Weight the history ranker's training impressions by their inverse logged propensity "
        "(clipped at 1/0.01, mean 1) when the log has propensities.")
    history_ranking_epochs: int = Field(
        30, gt=0, description="Maximum epochs of the history ranker per L2 candidate (early stopping on the eval "
        "split's log loss; its inputs are a few features per impression, so epochs are cheap).")
    history_ranking_l2: tuple[float, ...] = Field(
        (1e-4, 1e-3, 1e-2, 1e-1, 1.0), min_length=1, description="Candidate L2 penalties of the history "
        "ranker's per-item and context vectors (not the per-item click biases, not the history-feature weights: "
        "history_ranking_dense_l2). The candidates are the model without those vectors, then one model per "
        "value from the largest to the smallest (simplest first); history_ranking_selection picks one on the "
        "eval split's log loss (the first when the eval split has no clicked impression). Clicks are scarce in "
        "many shops (the organic world logs about 100), so how much the vectors may learn is chosen on data.")
    history_ranking_dense_l2: float = Field(
        1e-4, ge=0.0, description="L2 penalty of the history ranker's few history-feature weights (retrieval "
        "score, count in history, last item, recency): a weak prior for every candidate, since four weights "
        "need few clicks (a penalty as strong as the vectors' largest would erase the user's history).")
    history_ranking_dense_features: tuple[Literal["score", "seen", "last", "recency"], ...] = Field(
        ("score", "seen", "last", "recency"), description="The dense features of the history ranker's richer "
        "candidates: the retrieval score, log1p(times the candidate is in the history), whether it is the last "
        "history item, recency (1/(1 + events since it was last there)). The simplest candidate (score_only) "
        "reads the score alone.")
    history_ranking_center_score: bool | Literal["auto"] = Field(
        "auto", description="Whether the history ranker subtracts from each candidate's retrieval score the score "
        "the train split's mean user state gives it, so the score feature says how much more this user's state "
        "prefers the item than users do on average and the item's own level is left to its per-item click bias. "
        "auto: with history_ranking_min_eval_clicks eval clicks, the simplest candidate is fitted both ways and "
        "the lower eval log loss decides; with fewer, centred. Whether an item's browsing level predicts its "
        "clicks depends on the shop (measured: no in the organic world, yes in the default world; "
        "docs/models.md).")
    history_ranking_min_eval_clicks: int = Field(
        100, ge=0, description="Fewest clicked eval impressions with which the history ranker chooses among its "
        "candidates at all; below, it fits only the simplest (score_only: per-item click biases and one weight "
        "on the retrieval score). With a few eval clicks the candidates' losses cannot be told apart and the "
        "one-standard-error rule's standard error is itself unreliable (measured in the organic world, 9-14 "
        "eval clicks: it chose per-item vectors that served below the simplest model; docs/models.md).")
    history_ranking_selection: Literal["one_standard_error", "min_loss"] = Field(
        "one_standard_error", description="How the history ranker's candidate is chosen on the eval split: "
        "one_standard_error keeps the simplest candidate whose mean log loss is within one standard error of "
        "the best (the paired per-impression difference): with a few eval clicks the losses barely differ and "
        "the richest model tends to overfit (measured in the organic world, docs/models.md); min_loss keeps "
        "the lowest loss.")
    history_ranking_max_train_impressions: int | None = Field(
        None, gt=0, description="At most this many train-split impressions train the history ranker (a seeded "
        "sample, the eval split whole); null = all. Its training time grows with the impressions times the "
        "fits (by default 7 candidates and 2 more for score centring auto, each up to history_ranking_epochs "
        "epochs): at 1.14M shop events (490,080 train impressions of users with a history) it took 776 s, "
        "with 200000 here 212 s (benchmarks/results/trainer_stages.json). When it binds, the training report's "
        "history_ranking.train_impressions_sampled and a note say so; the point-in-time decision states are "
        "still written for every impression.")
    history_ranking_max_eval_impressions: int | None = Field(
        None, gt=0, description="At most this many eval-split impressions early-stop the history ranker, choose "
        "among its candidates and give its eval AUC (a seeded sample, independent of the train sample); null = "
        "all. The eval split grows with the log while the train sample is capped: at 10.0M shop events it had "
        "614,480 impressions of users with a history against 100,000 train impressions sampled, and set the "
        "trainer's peak memory (benchmarks/results/trainer_stages.json). When it binds, the training report's "
        "history_ranking.eval_impressions_sampled and a note say so.")
    sequence_max_train_examples: int | None = Field(
        None, gt=0, description="At most this many train-split targets train the sequence retrieval model (a "
        "seeded sample; their histories still read every train event); null = all. Its time and the memory of "
        "its examples ([targets, max_len] history arrays) grow with the targets. When it binds, the training "
        "report's retrieval.train_examples_sampled and a note say so (recflow.training.caps).")
    sequence_max_eval_examples: int | None = Field(
        None, gt=0, description="At most this many eval-split targets measure the sequence model's top-k accuracy "
        "for early stopping (a seeded sample; each epoch scores them against the whole catalog); null = all. "
        "When it binds, retrieval.eval_examples_sampled and a note say so.")
    ranking_max_train_impressions: int | None = Field(
        None, gt=0, description="At most this many train-split impressions train the DCN ranking model (a seeded "
        "sample; the eval split whole); null = all. When it binds, ranking.train_impressions_sampled and a note "
        "say so.")
    ranking_max_eval_impressions: int | None = Field(
        None, gt=0, description="At most this many eval-split impressions early-stop the DCN ranking model and give "
        "its eval AUC (a seeded sample, streamed like the train sample); null = all. When it binds, "
        "ranking.eval_impressions_sampled and a note say so.")
    hybrid: HybridConfig = Field(
        HybridConfig(), description="The sequence model blended with EASE (recflow.training.hybrid): the blend "
        "weight and EASE's l2 chosen on the eval split; the bundle's readers retrieve with the blend.")
    query_behaviour_features: tuple[str, ...] = Field(
        ("frequency", "monetary", "dwell_mean"),
        description="Behaviour features the towers read (those the log supports). recency_s and session_events "
        "are request-time values a context-free request cannot supply; feeding them from the serving snapshot "
        "skews serving away from training (measured: recall@10 0.02 instead of 0.78), so they are off by default.",
    )
    index: CandidateIndexConfig = Field(CandidateIndexConfig(), description="Candidate index and its recall check.")
    warm_start_from: str | None = Field(
        None, description="A model directory (e.g. the champion's) whose tower weights initialise this training "
        "(ids matched by vocabulary; see recflow.training.warm_start); null = cold start.")
    seed: int = Field(42, ge=0, description="Seed of weights, shuffling and everything else random.")
    deterministic_ops: bool = Field(True, description="tf.config.experimental.enable_op_determinism().")
    distribution: DistributionConfig = Field(
        DistributionConfig(), description="The tf.distribute strategy (recflow.training.distribution): one "
        "device, several GPUs of one machine, or several workers (TF_CONFIG); batch_size is the global batch.")


    @field_validator("sequence")
    @classmethod
    def _sequence_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:  # validated here (importing TensorFlow) only when something is overridden
            from recflow.models.sequence import SequenceConfig

            SequenceConfig(**value)
        return dict(value)

    def sequence_config(self) -> Any:
        """The sequence model's :class:`recflow.models.sequence.SequenceConfig` (its defaults + ``sequence``)."""
        from recflow.models.sequence import SequenceConfig

        return SequenceConfig(**self.sequence)

    @field_validator("event_weights")
    @classmethod
    def _known_event_types(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(TARGET_EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}: the targets are {list(TARGET_EVENT_TYPES)}")
        negative = sorted(k for k, v in value.items() if not v >= 0.0)
        if negative:
            raise ValueError(f"weights of {negative} must be >= 0")
        if not any(v > 0 for v in value.values()):
            raise ValueError("at least one event type needs a weight > 0")
        return {k: float(value.get(k, 0.0)) for k in TARGET_EVENT_TYPES}


def target_weights(event_code: np.ndarray, event_codes: dict[str, int], weights: dict[str, float]) -> np.ndarray:
    """Retrieval sample weight of each event from its type code (0 for impressions and unweighted types)."""
    table = np.zeros(max(event_codes.values()) + 1, dtype=np.float32)
    for name, weight in weights.items():
        if name in event_codes:
            table[event_codes[name]] = weight
    return table[np.asarray(event_code, dtype=np.int64)]


@dataclass(frozen=True)
class TrainResult:
    """Where the trainer wrote its models and what it measured."""

    out_dir: Path
    retrieval_dir: Path
    ranking_dir: Path | None
    item_embeddings_path: Path
    user_embeddings_path: Path
    training_json: Path
    logs_dir: Path
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict, repr=False)
    #: False on a multi-worker run's other workers: they trained in step with the chief, but wrote nothing
    #: (their copy went to a temporary directory, deleted); the paths above are the chief's.
    chief: bool = True


def _vocab_sizes(tft_output: Any, spec: dict[str, Any]) -> dict[str, int]:
    from recflow.models.two_tower import VOCAB_OF

    features = set(spec["transformed_query_features"]) | set(spec["transformed_candidate_features"])
    return {f: tft_output.vocabulary_size_by_name(VOCAB_OF[f]) + int(spec["num_oov_buckets"])
            for f in features if f in VOCAB_OF}


def _take(data: dict[str, np.ndarray], mask: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    return {n: data[n][mask] for n in names}


def _history(h: Any) -> dict[str, list[float]]:
    return {k: [float(v) for v in vals] for k, vals in h.history.items()}


def _count_types(codes: np.ndarray, spec: dict[str, Any]) -> dict[str, int]:
    names = {code: name for name, code in spec["event_codes"].items()}
    values, counts = np.unique(codes, return_counts=True)
    return {names[int(v)]: int(c) for v, c in zip(values, counts, strict=True)}


def user_context(examples_dir: Path, spec: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Each user's latest logged context (train + eval events), and the most common context for cold users.

    The splits are read a row group at a time, only these columns, strings as integer codes
    (:func:`recflow.training.columnar.read_split_events`): the per-event table holds no Python string; the
    result (a row per user) is what reading the whole splits with pandas gives (``tests/test_training_columnar.py``).
    """
    from recflow.features.transform import coerce_raw
    from recflow.training.columnar import concat_categorical, read_split_events, with_user_region

    names = list(spec["context_features"])
    columns = ["user_id", "timestamp", *names]  # only these: the rest of the splits is not read
    events = concat_categorical([read_split_events(examples_dir, s, columns) for s in ("train", "eval")])
    events = events.iloc[np.argsort(events["timestamp"].astype("int64").to_numpy(),
                                    kind="stable")]
    events = with_user_region(events, examples_dir, names)
    present = [n for n in names if n in events.columns]
    latest = events.groupby("user_id", sort=True, observed=True)[present].last().reset_index() if present else \
        pd.DataFrame({"user_id": sorted(events["user_id"].unique())})
    default = {n: (events[n].mode().iloc[0] if n in events.columns and events[n].notna().any()
                   else spec["fill_values"].get(n, "")) for n in names}
    del events
    for column in latest.columns:  # a row per user: plain columns again, as the bundle's file holds them
        if isinstance(latest[column].dtype, pd.CategoricalDtype):
            latest[column] = latest[column].astype(object).where(latest[column].notna(), None)
    for n in names:
        latest[n] = latest[n].fillna(default[n]) if n in latest.columns else default[n]
    latest = coerce_raw(latest, spec, spec["fill_values"])
    default = {k: (v.item() if hasattr(v, "item") else v) for k, v in default.items()}
    release_freed_memory()  # the per-event table's buffers
    return latest, default


def first_positives(train: dict[str, np.ndarray], evald: dict[str, np.ndarray], pos_train: np.ndarray,
                    pos_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep only each user's first positive event with an item (train, then eval, both in time order).

    Later positives on the same item (add to cart and purchase after the click, repeat clicks) continue a
    funnel the user already entered; the Evaluator excludes items a user already interacted with, so the model
    learns and early-stops on discovering *new* items.
    """
    users = np.concatenate([train["user_idx"], evald["user_idx"]]).astype(np.int64)
    items = np.concatenate([train["item_idx"], evald["item_idx"]]).astype(np.int64)
    positive = np.concatenate([pos_train, pos_eval])
    rows = np.flatnonzero(positive)
    keys = users[rows] * (int(items.max()) + 1) + items[rows]
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(positive), dtype=bool)
    keep[rows[first]] = True
    return keep[: len(pos_train)], keep[len(pos_train):]


def query_features(spec: dict[str, Any], config: TrainerConfig) -> list[str]:
    """Transformed query-side features the towers read: ids and context, plus the chosen behaviour features."""
    behaviour_z = {f"{b}_z" for b in spec["behaviour_features"]}
    wanted = {f"{b}_z" for b in config.query_behaviour_features}
    return [f for f in spec["transformed_query_features"] if f not in behaviour_z or f in wanted]


@dataclass
class TrainerInputs:
    """What every stage of :func:`train_tfrs` reads: Transform's output, loaded once."""

    examples_dir: Path
    transform_dir: Path
    spec: dict[str, Any]
    graph_dir: Path
    tft_output: Any
    train: dict[str, np.ndarray]
    evald: dict[str, np.ndarray]
    q_feats: list[str]
    c_feats: list[str]
    pos_train: np.ndarray
    pos_eval: np.ndarray
    vocab: dict[str, int]
    item_prob: np.ndarray
    candidates_raw: pd.DataFrame
    cand_features: dict[str, np.ndarray]
    user_state: pd.DataFrame
    item_ids: list[str]
    #: ``{"kept", "of", "cap"}`` when ``trainer.ranking_max_train_impressions`` bound while the train split was
    #: streamed (``train`` then holds only the sampled impressions); None otherwise.
    ranking_sample: dict[str, int] | None = None
    #: The same for ``trainer.ranking_max_eval_impressions`` and the eval split.
    ranking_eval_sample: dict[str, int] | None = None


@dataclass
class TrainerRun:
    """The run's staging directory and what its stages measured (the content of ``training.json``)."""

    tmp: Path
    config: TrainerConfig
    strategy: Any
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    counter: Any = None  #: the current model's recflow.training.distribution.ExampleCounter


@dataclass
class RetrievalOutput:
    """The retrieval stage's output: the embeddings the index and the ranking stages need."""

    item_emb: np.ndarray
    user_emb: np.ndarray
    vocabulary: list[str] = field(default_factory=list)  #: the item vocabulary (sequence retrieval)
    sequence: Any = None  #: the trained sequence model (sequence retrieval)


def _decode(tokens: Any) -> list[str]:
    return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in tokens]


def _load_ranking_rows(transform_dir: Path, graph_dir: Path, spec: dict[str, Any], config: TrainerConfig,
                       n_items: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray,
                                          np.ndarray, dict[str, int] | None, dict[str, int] | None]:
    """With the sequence retrieval model (which reads ExampleGen's events itself), the transformed splits' rows
    and columns the ranking stage reads -- the impressions, their towers' features and labels -- streamed
    (:func:`recflow.training.transformed.load_transformed_rows`), not the whole splits; the retrieval targets'
    item counts are tallied on the way. With ``trainer.ranking_max_train_impressions`` (``_eval_``) a split keeps
    only the ranking stage's seeded sample of its labelled impressions while streaming
    (:func:`recflow.training.transformed.load_transformed_sample`, the sample :func:`_cap_ranking` draws from a
    whole split). Returns (train, eval, the kept rows' target masks (all false: an impression is no target), the
    train targets' count per item, each split's sample ``{"kept", "of", "cap"}`` when its cap bound)."""
    from recflow.training.caps import STREAM_RANKING_EVAL, STREAM_RANKING_TRAIN, cap_report
    from recflow.training.transformed import load_transformed_sample

    imp_code = spec["event_codes"].get("impression", -1)
    feature_spec = set(spec["transformed_query_features"]) | set(spec["transformed_candidate_features"])
    columns = sorted(feature_spec | {"event_code", "clicked", "item_idx", *spec.get("label_features", [])})
    counts = np.zeros(n_items, np.float64)

    def keep(tally: bool, labelled_only: bool) -> Any:
        def select(batch: dict[str, np.ndarray]) -> np.ndarray:
            if tally:
                positive = target_weights(batch["event_code"], spec["event_codes"], config.event_weights) > 0
                counts[:] += np.bincount(batch["item_idx"][positive], minlength=n_items)[:n_items]
            impression = np.asarray(batch["event_code"] == imp_code)
            return impression & (batch["clicked"] >= 0) if labelled_only else impression
        return select

    split_dir = transform_dir / bundle_layout.TRANSFORMED_DIR
    # with any cap, both splits keep only labelled impressions (the ranking stage's rows) while streaming
    labelled_only = config.ranking_max_train_impressions is not None or config.ranking_max_eval_impressions is not None
    samples: list[dict[str, int] | None] = []
    loaded: list[dict[str, np.ndarray]] = []
    for split, cap, stream in (("train", config.ranking_max_train_impressions, STREAM_RANKING_TRAIN),
                               ("eval", config.ranking_max_eval_impressions, STREAM_RANKING_EVAL)):
        rows, labelled = load_transformed_sample(split_dir / split, graph_dir, columns,
                                                 keep(split == "train", labelled_only), cap, config.seed, stream)
        loaded.append(rows)
        samples.append(cap_report(len(rows["row_id"]), labelled, cap))
    train, evald = loaded
    no_target = np.zeros(len(train["row_id"]), bool), np.zeros(len(evald["row_id"]), bool)
    return train, evald, no_target[0], no_target[1], counts, samples[0], samples[1]


def load_inputs(examples_dir: Path, transform_dir: Path, config: TrainerConfig) -> TrainerInputs:
    """The datasets stage: Transform's spec, graph, transformed splits and candidates, and the retrieval targets.

    Raises DataError when ``transform_dir`` is not a Transform output or the train split has no target.
    """
    import tensorflow_transform as tft

    from recflow.features.transform import apply_transform_graph, load_transformed

    spec_path = transform_dir / bundle_layout.FEATURE_SPEC_FILE
    if not spec_path.is_file():
        raise DataError(f"{transform_dir}: no {bundle_layout.FEATURE_SPEC_FILE} (run the Transform step first)")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    graph_dir = transform_dir / bundle_layout.TRANSFORM_GRAPH_DIR
    tft_output = tft.TFTransformOutput(str(graph_dir))
    vocab = _vocab_sizes(tft_output, spec)
    if config.retrieval_model == "sequence":
        train, evald, pos_train, pos_eval, counts, ranking_sample, ranking_eval_sample = _load_ranking_rows(
            transform_dir, graph_dir, spec, config, vocab["item_idx"])
    else:
        ranking_sample = ranking_eval_sample = None
        train = load_transformed(transform_dir / bundle_layout.TRANSFORMED_DIR / "train", graph_dir)
        evald = load_transformed(transform_dir / bundle_layout.TRANSFORMED_DIR / "eval", graph_dir)
        weight_train = target_weights(train["event_code"], spec["event_codes"], config.event_weights)
        weight_eval = target_weights(evald["event_code"], spec["event_codes"], config.event_weights)
        pos_train, pos_eval = weight_train > 0, weight_eval > 0
        if config.first_positive_only:
            pos_train, pos_eval = first_positives(train, evald, pos_train, pos_eval)
        counts = np.bincount(train["item_idx"][pos_train], minlength=vocab["item_idx"]).astype(np.float64)
    weighted_types = [t for t, w in config.event_weights.items() if w > 0]
    if not counts.sum() > 0:
        raise DataError(f"{examples_dir}: the train split has no retrieval targets: no event of the types "
                        f"trainer.event_weights gives a weight > 0 ({', '.join(weighted_types)})")
    item_prob = ((counts + 1.0) / (counts.sum() + len(counts))).astype(np.float32)  # smoothed: no log(0)
    c_feats = spec["transformed_candidate_features"]
    candidates_raw = pd.read_parquet(transform_dir / bundle_layout.CANDIDATES_FILE)
    cand_t = apply_transform_graph(graph_dir, spec, candidates_raw)
    release_freed_memory()  # the splits' streamed batches: not carried through the later stages (issue 17)
    return TrainerInputs(
        examples_dir=examples_dir, transform_dir=transform_dir, spec=spec, graph_dir=graph_dir,
        tft_output=tft_output, train=train, evald=evald, q_feats=query_features(spec, config), c_feats=c_feats,
        pos_train=pos_train, pos_eval=pos_eval, vocab=vocab, item_prob=item_prob, candidates_raw=candidates_raw,
        cand_features={n: cand_t[n] for n in c_feats},
        user_state=pd.read_parquet(transform_dir / bundle_layout.USER_STATE_FILE),
        item_ids=candidates_raw["item_id"].astype(str).tolist(), ranking_sample=ranking_sample,
        ranking_eval_sample=ranking_eval_sample)


def _retrieval_dataset(inputs: TrainerInputs, config: TrainerConfig, data: dict[str, np.ndarray], mask: np.ndarray,
                       shuffle: bool) -> Any:
    """The retrieval targets ``data[mask]`` as a batched ``tf.data.Dataset`` (``batch_size`` = the global batch,
    auto-sharded by DATA under a multi-worker strategy) with their sampling probability and sample weight."""
    import tensorflow as tf

    from recflow.training.datasets import index_batches
    from recflow.training.distribution import shard_by_data

    feats = _take(data, mask, sorted(set(inputs.q_feats) | set(inputs.c_feats)))
    feats["candidate_prob"] = inputs.item_prob[feats["item_idx"]]
    feats["sample_weight"] = target_weights(data["event_code"][mask], inputs.spec["event_codes"],
                                            config.event_weights)
    ds = index_batches(feats, config.batch_size, shuffle_seed=config.seed if shuffle else None)
    return shard_by_data(ds.prefetch(tf.data.AUTOTUNE))


def _write_embeddings(path: Path, key: str, ids: list[str], vectors: np.ndarray) -> None:
    pd.DataFrame({key: ids, "embedding": list(vectors)}).to_parquet(path, index=False)


def train_sequence_retrieval(inputs: TrainerInputs, run: TrainerRun) -> RetrievalOutput:
    """The retrieval stage with the sequence model: train, export the SavedModel and the embeddings."""
    from recflow.models.export import SequenceRetrievalServing, save_sequence_retrieval
    from recflow.training.sequence_retrieval import history_arrays, train_sequence

    config, tmp = run.config, run.tmp
    vocabulary = _decode(inputs.tft_output.vocabulary_by_name("item_id"))
    seq = train_sequence(inputs.examples_dir, vocabulary, inputs.item_ids, config, tmp, strategy=run.strategy)
    run.report["retrieval"] = seq.report
    run.metrics.update(seq.metrics)
    run.notes.extend(seq.notes)
    module = SequenceRetrievalServing(
        seq.encoder, seq.user_ids, history_arrays(seq.histories, seq.catalog_rows, config.sequence_config().max_len),
        seq.catalog_rows, inputs.item_ids, seq.item_vectors, config.top_k)
    save_sequence_retrieval(module, inputs.spec, str(tmp / bundle_layout.RETRIEVAL_DIR))
    _write_embeddings(tmp / bundle_layout.ITEM_EMBEDDINGS_FILE, "item_id", inputs.item_ids, seq.item_vectors)
    _write_embeddings(tmp / bundle_layout.USER_EMBEDDINGS_FILE, "user_id", seq.user_ids, seq.user_states)
    # The stored histories (a row per user, Python lists) are in the bundle's history file and the serving module
    # now; no later stage reads them: not carried through the ranking stages (issue 17).
    seq.histories = seq.histories.iloc[:0]
    del module
    release_freed_memory()
    return RetrievalOutput(seq.item_vectors, seq.user_states, vocabulary=vocabulary, sequence=seq)


def _build_towers(inputs: TrainerInputs, run: TrainerRun, train_ds: Any, eval_ds: Any) -> tuple[Any, Any, Any]:
    """The two-tower retrieval model (compiled, variables built) and its query and candidate towers."""
    import tensorflow as tf

    from recflow.models.two_tower import FeatureTower, TwoTowerModel
    from recflow.training.distribution import ExampleCounter

    config = run.config
    cand_ds = tf.data.Dataset.from_tensor_slices(inputs.cand_features).batch(1024)
    with run.strategy.scope():
        run.counter = ExampleCounter()
        query_tower = FeatureTower(inputs.q_feats, inputs.vocab, config.embedding_dim, config.embedding_dim,
                                   name="query", constant_one=config.item_bias)
        cand_tower = FeatureTower(inputs.c_feats, inputs.vocab, config.embedding_dim, config.embedding_dim,
                                  name="candidate", bias_of="item_idx" if config.item_bias else None)
        retrieval = TwoTowerModel(query_tower, cand_tower, config.temperature, config.logq_correction,
                                  candidates=cand_ds if eval_ds is not None else None,
                                  logq_strength=config.logq_strength, example_counter=run.counter)
        retrieval.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate))
        sample = next(iter(train_ds))
        query_tower(sample), cand_tower(sample)  # build the variables (for warm start and saving)
    return retrieval, query_tower, cand_tower


def warm_start(towers: dict[str, Any], vocabularies: dict[str, list[str]], run: TrainerRun) -> None:
    """The warm-start stage: the towers start from ``trainer.warm_start_from``'s weights where its vocabularies
    match; a previous model that cannot be used leaves a cold start and a note."""
    from recflow.models.two_tower import VOCAB_OF
    from recflow.training.warm_start import warm_start_towers

    if not run.config.warm_start_from:
        return
    try:
        run.report["warm_start"] = warm_start_towers(towers, Path(run.config.warm_start_from), vocabularies,
                                                     VOCAB_OF)
        run.report["warm_start"]["from"] = str(run.config.warm_start_from)
    except DataError as exc:
        run.notes.append(f"cold start: {exc}")


def _callbacks(run: TrainerRun, model: Any, name: str) -> list[Any]:
    """A fit's callbacks before early stopping: validation metrics read across every replica, the examples seen
    per epoch (``examples_seen``, all workers together) and TensorBoard."""
    import tensorflow as tf

    from recflow.training.distribution import counting_callback, global_metrics_callback

    return [global_metrics_callback(model), counting_callback(run.counter),
            tf.keras.callbacks.TensorBoard(str(run.tmp / bundle_layout.LOGS_DIR / name))]


def _tower_outputs(tower: Any, features: dict[str, np.ndarray], batch: int = 4096) -> np.ndarray:
    """``tower`` applied to ``features`` in batches, in order, in this process (no distributed ``predict``:
    every worker computes all of it)."""
    n = len(next(iter(features.values())))
    parts = [np.asarray(tower({k: v[s:s + batch] for k, v in features.items()})) for s in range(0, n, batch)]
    return np.concatenate(parts).astype(np.float32)


def _fit_retrieval(inputs: TrainerInputs, run: TrainerRun, retrieval: Any, train_ds: Any, eval_ds: Any) -> None:
    """Fit the two-tower model (early stopping on the eval split when it has targets) and record the curves."""
    import tensorflow as tf

    config = run.config
    callbacks = _callbacks(run, retrieval, "retrieval")
    monitor = "val_factorized_top_k/top_10_categorical_accuracy"
    if eval_ds is not None:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=config.early_stopping_patience, restore_best_weights=True))
    else:
        run.notes.append("eval split has no positive interactions: retrieval trained without early stopping")
    started = time.perf_counter()
    hist = retrieval.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - started
    history = _history(hist)
    epochs_run = len(history.get("loss", []))
    n_pos = int(inputs.pos_train.sum())
    run.report["retrieval"] = {
        "history": history, "epochs_run": epochs_run, "train_examples": n_pos,
        "train_examples_by_type": _count_types(inputs.train["event_code"][inputs.pos_train], inputs.spec),
        "event_weights": dict(config.event_weights), "eval_examples": int(inputs.pos_eval.sum()),
        "examples_seen": history.pop("examples_seen", []), "seconds": seconds,
        "examples_per_second": n_pos * epochs_run / seconds if seconds > 0 else None}
    if eval_ds is not None:
        run.metrics["retrieval_eval_top10_accuracy"] = max(history[monitor])
        run.metrics["retrieval_eval_top50_accuracy"] = history["val_factorized_top_k/top_50_categorical_accuracy"][
            int(np.argmax(history[monitor]))]
    run.metrics["retrieval_train_loss"] = history["loss"][-1]
    run.metrics["retrieval_examples_per_second"] = run.report["retrieval"]["examples_per_second"]


def _train_user_embeddings(inputs: TrainerInputs, serving: Any, contexts: pd.DataFrame,
                           default_context: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """The exported query tower's embedding of every train-split user in their latest context."""
    import tensorflow as tf

    spec = inputs.spec
    from recflow.training.columnar import distinct_values

    train_users = distinct_values(inputs.examples_dir, "train", "user_id")
    ctx = contexts.set_index("user_id").reindex(train_users)
    features = {"user_id": tf.constant(train_users)}
    for n in spec["context_features"]:
        col = ctx[n].fillna(default_context[n])
        kind = spec["raw_features"][n]
        features[n] = tf.constant(col.astype(str).tolist() if kind == "string" else col.astype(np.int64))
    return train_users, serving.query(features).numpy().astype(np.float32)


def train_two_tower_retrieval(inputs: TrainerInputs, run: TrainerRun, contexts: pd.DataFrame,
                              default_context: dict[str, Any]) -> RetrievalOutput:
    """The retrieval stage with the two-tower model: build, warm start, fit, then the export stage (tower
    weights, SavedModel, item and user embeddings)."""
    from recflow.models.export import RetrievalServing, save_retrieval
    from recflow.models.two_tower import VOCAB_OF
    from recflow.training.warm_start import save_tower_weights

    config, tmp = run.config, run.tmp
    train_ds = _retrieval_dataset(inputs, config, inputs.train, inputs.pos_train, shuffle=True)
    eval_ds = (_retrieval_dataset(inputs, config, inputs.evald, inputs.pos_eval, shuffle=False)
               if inputs.pos_eval.any() else None)
    retrieval, query_tower, cand_tower = _build_towers(inputs, run, train_ds, eval_ds)
    towers = {"query": query_tower, "candidate": cand_tower}
    vocabularies = {v: _decode(inputs.tft_output.vocabulary_by_name(v))
                    for v in sorted({VOCAB_OF[f] for f in inputs.vocab})}
    warm_start(towers, vocabularies, run)
    _fit_retrieval(inputs, run, retrieval, train_ds, eval_ds)

    save_tower_weights(tmp, towers, vocabularies)
    item_emb = _tower_outputs(cand_tower, inputs.cand_features)
    _write_embeddings(tmp / bundle_layout.ITEM_EMBEDDINGS_FILE, "item_id", inputs.item_ids, item_emb)
    serving = RetrievalServing(str(inputs.graph_dir), inputs.spec, inputs.user_state, query_tower, inputs.item_ids,
                               item_emb, config.top_k)
    save_retrieval(serving, inputs.spec, str(tmp / bundle_layout.RETRIEVAL_DIR))
    train_users, user_emb = _train_user_embeddings(inputs, serving, contexts, default_context)
    _write_embeddings(tmp / bundle_layout.USER_EMBEDDINGS_FILE, "user_id", train_users, user_emb)
    return RetrievalOutput(item_emb, user_emb)


def write_index(inputs: TrainerInputs, run: TrainerRun, retrieved: RetrievalOutput) -> None:
    """The index stage: build the candidate index over the item embeddings and measure its recall."""
    config = run.config
    index = build_index(inputs.item_ids, retrieved.item_emb, config.index)
    index_report = measure_index_recall(index, retrieved.user_emb, retrieved.item_emb, config.index,
                                        seed=config.seed)
    save_index(index, run.tmp / bundle_layout.INDEX_DIR, index_report)
    run.report["index"] = index_report
    for key, value in index_report.items():
        if key.startswith("index_recall@") and value is not None:
            run.metrics[key] = float(value)


def _ranking_masks(inputs: TrainerInputs, run: TrainerRun) -> tuple[np.ndarray, np.ndarray] | None:
    """The impressions the ranking model learns from (train, eval), or None (and a note) when there are none."""
    spec, train, evald = inputs.spec, inputs.train, inputs.evald
    imp_code = spec["event_codes"]["impression"]
    rank_train = (train["event_code"] == imp_code) & (train["clicked"] >= 0)
    rank_eval = (evald["event_code"] == imp_code) & (evald["clicked"] >= 0)
    if not spec.get("has_impressions") or not rank_train.any():
        run.notes.append("ranking model skipped: the log has no impression events to learn click-through from")
        return None
    if not spec.get("has_clicks") or train["clicked"][rank_train].max() < 1:
        run.notes.append("ranking model skipped: no impression in the train split was clicked")
        return None
    return rank_train, rank_eval


def _ranking_dataset(config: TrainerConfig, data: dict[str, np.ndarray], mask: np.ndarray, names: list[str],
                     shuffle: bool) -> Any:
    import tensorflow as tf

    from recflow.training.datasets import index_batches
    from recflow.training.distribution import shard_by_data

    ds = index_batches(_take(data, mask, names), config.batch_size, shuffle_seed=config.seed + 1 if shuffle else None)
    return shard_by_data(ds.prefetch(tf.data.AUTOTUNE))


def _cap_ranking(inputs: TrainerInputs, rank_train: np.ndarray, rank_eval: np.ndarray, run: TrainerRun
                 ) -> tuple[Any, Any]:
    """The ranking model's train and eval impressions cut to ``trainer.ranking_max_train_impressions`` /
    ``ranking_max_eval_impressions``: the seeded samples by row key (:func:`recflow.training.caps.cap_rows_by_key`),
    drawn here from a whole split or already while the split was streamed (``inputs.ranking_sample``,
    ``inputs.ranking_eval_sample``); a note for each that binds."""
    from recflow.training.caps import STREAM_RANKING_EVAL, STREAM_RANKING_TRAIN, CapResult, cap_rows_by_key

    out = []
    for mask, data, sample, cap, stream, what, key in (
            (rank_train, inputs.train, inputs.ranking_sample, run.config.ranking_max_train_impressions,
             STREAM_RANKING_TRAIN, "ranking model trained on its train impressions", "ranking_max_train_impressions"),
            (rank_eval, inputs.evald, inputs.ranking_eval_sample, run.config.ranking_max_eval_impressions,
             STREAM_RANKING_EVAL, "ranking model early-stopped and scored on its eval impressions",
             "ranking_max_eval_impressions")):
        mask = np.asarray(mask, bool)
        capped = CapResult(mask, **sample) if sample is not None else cap_rows_by_key(
            mask, data["row_id"], cap, run.config.seed, stream)
        if capped.binds:
            run.notes.append(capped.note(what, key))
        out.append(capped)
    return out[0], out[1]


def train_ranking(inputs: TrainerInputs, run: TrainerRun) -> bool:
    """The ranking stage: the click (and purchase) model on impressions, exported as a SavedModel.

    Returns False (with a note) when the log has no clicked impressions to learn from.
    """
    import tensorflow as tf

    from recflow.models.export import RankingServing, save_ranking
    from recflow.models.ranking import DCNRankingModel
    from recflow.models.two_tower import FeatureTower
    from recflow.training.distribution import ExampleCounter

    masks = _ranking_masks(inputs, run)
    if masks is None:
        return False
    rank_train, rank_eval = masks
    config, train, evald, vocab = run.config, inputs.train, inputs.evald, inputs.vocab
    capped, capped_eval = _cap_ranking(inputs, rank_train, rank_eval, run)
    rank_train, rank_eval = capped.mask, capped_eval.mask
    purchase_weight = config.purchase_weight if inputs.spec.get("has_purchases") and "purchased" in train else 0.0
    names = sorted(set(inputs.q_feats) | set(inputs.c_feats) | {"clicked"}
                   | ({"purchased"} if purchase_weight else set()))
    with run.strategy.scope():
        run.counter = ExampleCounter()
        ranker = DCNRankingModel(
            FeatureTower(inputs.q_feats, vocab, config.embedding_dim, config.embedding_dim, name="rank_query"),
            FeatureTower(inputs.c_feats, vocab, config.embedding_dim, config.embedding_dim, name="rank_item"),
            hidden_units=config.ranking_hidden_units, cross_layers=config.ranking_cross_layers,
            purchase_weight=purchase_weight, example_counter=run.counter)
        ranker.compile(optimizer=tf.keras.optimizers.Adam(config.ranking_learning_rate))
    callbacks = _callbacks(run, ranker, "ranking")
    r_eval = _ranking_dataset(config, evald, rank_eval, names, False) if rank_eval.any() else None
    if r_eval is not None:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=config.early_stopping_patience, restore_best_weights=True))
    started = time.perf_counter()
    hist = ranker.fit(_ranking_dataset(config, train, rank_train, names, True), validation_data=r_eval,
                      epochs=config.ranking_epochs, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - started
    history = _history(hist)
    epochs = len(history.get("loss", []))
    run.report["ranking"] = {"history": history, "epochs_run": epochs, "train_examples": int(rank_train.sum()),
                             "eval_examples": int(rank_eval.sum()),
                             "train_impressions_sampled": capped.report(),
                             "eval_impressions_sampled": capped_eval.report(),
                             "examples_seen": history.pop("examples_seen", []), "seconds": seconds,
                             "examples_per_second": int(rank_train.sum()) * epochs / seconds}
    if r_eval is not None:
        best_epoch = int(np.argmax(history["val_auc"]))
        run.metrics["ranking_eval_auc"] = history["val_auc"][best_epoch]
        if "val_purchase_auc" in history:
            run.metrics["ranking_eval_purchase_auc"] = history["val_purchase_auc"][best_epoch]
    serving = RankingServing(str(inputs.graph_dir), inputs.spec, inputs.user_state, inputs.candidates_raw.copy(),
                             ranker)
    save_ranking(serving, inputs.spec, str(run.tmp / bundle_layout.RANKING_DIR))
    del serving, ranker, hist, callbacks
    release_freed_memory()
    return True


def drop_transformed_rows(inputs: TrainerInputs) -> None:
    """Empty the transformed splits' rows, the user states and the raw candidates of ``inputs`` once the ranking
    stage (the last stage that reads them) is done: the history ranker reads ExampleGen's splits itself, so they
    are not carried through its stage (issue 17). Every other field stays."""
    inputs.train, inputs.evald = {}, {}
    inputs.pos_train, inputs.pos_eval = inputs.pos_train[:0], inputs.pos_eval[:0]
    inputs.user_state, inputs.candidates_raw = inputs.user_state.iloc[:0], inputs.candidates_raw.iloc[:0]
    inputs.cand_features = {}
    release_freed_memory()


def train_history_ranking(inputs: TrainerInputs, run: TrainerRun, retrieved: RetrievalOutput) -> None:
    """The history ranker (sequence retrieval with ``trainer.history_ranking``), beside the ranking model; its
    Keras models are built, compiled and fitted under the run's strategy (their loss is Keras' compiled loss,
    which Keras averages over the global batch itself)."""
    from recflow.training.history_ranking import train_history_ranker

    with run.strategy.scope():
        ranked = train_history_ranker(inputs.examples_dir, retrieved.vocabulary, retrieved.sequence,
                                      inputs.item_ids, inputs.spec, run.config, run.tmp)
    run.notes.extend(ranked.notes)
    run.metrics.update(ranked.metrics)
    if ranked.trained:
        run.report["history_ranking"] = ranked.report
    release_freed_memory()


def train_hybrid(inputs: TrainerInputs, run: TrainerRun, retrieved: RetrievalOutput) -> None:
    """The hybrid stage (:mod:`recflow.training.hybrid`): EASE and the blend weight, chosen on the eval split,
    with the sequence model; a two-tower model gets a ``hybrid.json`` that says the blend is off."""
    from recflow.training.hybrid import fit_hybrid, skip_hybrid
    from recflow.training.sequence_retrieval import encode_histories

    config = run.config
    seq = retrieved.sequence
    if config.retrieval_model != "sequence" or seq is None:
        result = skip_hybrid(run.tmp, "the blend is for the sequence retrieval model", note=False)
    else:
        max_len = config.sequence_config().max_len

        def score(histories: pd.DataFrame) -> np.ndarray:
            states = encode_histories(seq.encoder, histories, seq.catalog_rows, max_len)
            return states.astype(np.float64) @ seq.item_vectors.T.astype(np.float64)

        result = fit_hybrid(inputs.examples_dir, inputs.item_ids, score, max_len, config.hybrid,
                            config.event_weights, run.tmp, index_kind=config.index.kind)
    run.report["hybrid"] = result.info
    run.notes.extend(result.notes)
    run.metrics.update(result.metrics)


def _write_report(inputs: TrainerInputs, run: TrainerRun) -> None:
    report, spec = run.report, inputs.spec
    report["metrics"] = run.metrics
    report["notes"] = run.notes
    report["feature_spec"] = {k: spec[k] for k in ("serving_inputs", "context_features", "behaviour_features",
                                                   "candidate_features")}
    report["feature_spec"]["query_features"] = inputs.q_feats
    report["feature_spec"]["candidate_tower_features"] = inputs.c_feats
    (run.tmp / bundle_layout.TRAINING_REPORT_FILE).write_text(json.dumps(report, indent=2, default=float),
                                                       encoding="utf-8")


#: How a stage is run: ``stage(name, fn)`` calls ``fn()`` and returns its result (:func:`run_stages`' default
#: calls it directly; ``benchmarks/trainer_stages.py`` times it and samples its memory).
StageRunner = Callable[[str, Callable[[], Any]], Any]


def _direct(name: str, fn: Callable[[], Any]) -> Any:
    return fn()


def run_stages(inputs: TrainerInputs, run: TrainerRun, stage: StageRunner = _direct) -> bool:
    """Every stage after the datasets, into ``run.tmp``, each through ``stage``; returns whether a ranking model
    was trained. The user contexts (a row per user) go to their file before retrieval, so that the sequence model
    trains without them; the transformed rows are dropped once the ranking stage (their last reader) is done."""
    contexts, default_context = stage("tfrs user_context", lambda: user_context(inputs.examples_dir, inputs.spec))
    contexts.to_parquet(run.tmp / bundle_layout.USER_CONTEXT_FILE, index=False)
    (run.tmp / bundle_layout.DEFAULT_CONTEXT_FILE).write_text(json.dumps(default_context), encoding="utf-8")
    if run.config.retrieval_model == "sequence":
        del contexts  # in the bundle's file now: not held while the sequence model trains
        release_freed_memory()
        retrieved = stage("tfrs retrieval (sequence)", lambda: train_sequence_retrieval(inputs, run))
    else:
        retrieved = stage("tfrs retrieval (two tower)",
                          lambda: train_two_tower_retrieval(inputs, run, contexts, default_context))
        del contexts
    stage("tfrs index", lambda: write_index(inputs, run, retrieved))
    stage("tfrs hybrid", lambda: train_hybrid(inputs, run, retrieved))

    def ranking() -> bool:
        ranked = train_ranking(inputs, run)
        drop_transformed_rows(inputs)
        return ranked

    ranked = bool(stage("tfrs ranking", ranking))
    if ranked and run.config.retrieval_model == "sequence" and run.config.history_ranking:
        stage("tfrs history ranking", lambda: train_history_ranking(inputs, run, retrieved))
    stage("tfrs report", lambda: _write_report(inputs, run))
    return ranked


def train_tfrs(examples_dir: Path, transform_dir: Path, out_dir: Path, config: TrainerConfig) -> TrainResult:
    """Train the retrieval (and, with impressions, the ranking) model and export them; see the module docstring.

    The stages: datasets (:func:`load_inputs`), retrieval (:func:`train_sequence_retrieval` or
    :func:`train_two_tower_retrieval`, the latter with :func:`warm_start` and the export), the candidate index
    (:func:`write_index`), the sequence + EASE blend (:func:`train_hybrid`), ranking (:func:`train_ranking`, then
    :func:`train_history_ranking`). They write into a
    staging directory that replaces ``out_dir`` only when every stage succeeded.
    Under ``trainer.distribution`` = ``multi_worker_mirrored`` every worker calls this with the same arguments;
    the chief's output replaces ``out_dir``, the others' go to a temporary directory that is deleted
    (:func:`recflow.training.distribution.output_dir`; ``TrainResult.chief`` says which this process was).
    Raises DataError when the inputs are not ExampleGen/Transform outputs or hold no positive interactions,
    ConfigError for a bad ``TF_CONFIG``.
    """
    import tensorflow as tf

    from recflow.training.distribution import describe, make_strategy, output_dir

    examples_dir, transform_dir, out_dir = Path(examples_dir), Path(transform_dir), Path(out_dir)
    strategy, task = make_strategy(config.distribution)  # first: multi-worker collectives need program startup
    tf.keras.utils.set_random_seed(config.seed)
    if config.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    inputs = load_inputs(examples_dir, transform_dir, config)

    with output_dir(out_dir, task) as write_dir, staged_dir(write_dir) as tmp:
        run = TrainerRun(tmp, config, strategy, report={
            "config": config.model_dump(), "strategy": type(strategy).__name__,
            "distribution": {**describe(strategy, task), "global_batch_size": config.batch_size}})
        ranked = run_stages(inputs, run)
    return TrainResult(
        out_dir=out_dir,
        retrieval_dir=out_dir / bundle_layout.RETRIEVAL_DIR,
        ranking_dir=out_dir / bundle_layout.RANKING_DIR if ranked else None,
        item_embeddings_path=out_dir / bundle_layout.ITEM_EMBEDDINGS_FILE,
        user_embeddings_path=out_dir / bundle_layout.USER_EMBEDDINGS_FILE,
        training_json=out_dir / bundle_layout.TRAINING_REPORT_FILE,
        logs_dir=out_dir / bundle_layout.LOGS_DIR,
        metrics=run.metrics,
        notes=run.notes,
        history=run.report,
        chief=task.is_chief,
    )
