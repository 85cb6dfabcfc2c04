"""Evaluate a candidate recommender against baselines and the champion on the held-out split, and bless it or
not.

:func:`evaluate_recommenders` is the Evaluator's core: it reads an examples directory, tunes the baselines of
``config.tuned_baselines`` (fit on ``train.parquet``, scored on ``eval.parquet``, the same number of trials each,
see :mod:`recflow.baseline_tuning`), fits every baseline on ``train.parquet`` (the tuned ones with their chosen
hyper-parameters), asks every method for top-k lists for the *same* sampled held-out users (excluding each
user's training items), scores them with :mod:`recflow.evaluation.metrics`, runs paired tests of the per-user
primary metric (candidate vs champion, and vs the best baseline), and applies the blessing rules. Every method
also gets the beyond-accuracy metrics of :mod:`recflow.evaluation.beyond_accuracy` (diversity, novelty, long-tail
share, exposure Gini, exposure by category). With ``config.reranking`` on, the candidate is wrapped in
:class:`recflow.reranking.ReRankedRecommender` and the un-re-ranked model is reported beside it
(``candidate_unreranked``), with a paired test of what the re-ranking cost. The returned
:class:`EvaluationResult` is what :func:`recflow.evaluation.report.write_report` renders.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow import bundle_layout
from recflow.baseline_tuning import make_tuned, tune_baselines
from recflow.baselines import (
    ALSRecommender,
    BPRRecommender,
    ContentBasedRecommender,
    CoViewRecommender,
    EASERecommender,
    ItemKNNRecommender,
    MostRecentRecommender,
    MostViewedRecommender,
    PopularityRecommender,
    dense_skip_reason,
)
from recflow.errors import ConfigError, DataError
from recflow.evaluation.beyond_accuracy import (
    CatalogContext,
    beyond_accuracy_metrics,
    exposure_by_group,
    list_metric_intervals,
)
from recflow.evaluation.blessing import Blessing, best_baseline, decide_blessing
from recflow.evaluation.config import EvaluatorConfig
from recflow.evaluation.metrics import (
    aggregate,
    catalog_coverage,
    confidence_intervals,
    per_user_metrics,
    relevant_by_user,
    sampled_exclusions,
)
from recflow.evaluation.noninferiority import NonInferiority, non_inferiority_test
from recflow.evaluation.significance import PairedTest, paired_tests
from recflow.examplegen import SPLITS, read_split_path
from recflow.memory import release_arrow_memory, release_freed_memory
from recflow.recommender import Recommender
from recflow.reranking import make_reranker

CANDIDATE = "candidate"
CHAMPION = "champion"
#: Label of the candidate before re-ranking (present only when re-ranking is on).
UNRERANKED = "candidate_unreranked"
_EVENT_COLUMNS = ("user_id", "item_id", "event_type")
#: The train columns the Evaluator's methods read (the baselines' recency, sessions and co-views); the others
#: (prices, devices, propensities, ...) are not loaded.
_TRAIN_COLUMNS = (*_EVENT_COLUMNS, "timestamp", "session_id")


@dataclass
class MethodResult:
    """One evaluated method: ``label`` is its key in the result (``candidate``, ``champion`` or the baseline's
    config name), ``name`` the recommender's own name, ``role`` candidate/champion/baseline."""

    label: str
    name: str
    role: str
    metrics: dict[str, float]
    per_user: pd.DataFrame
    seconds: float = 0.0
    exposure: dict[str, float] = field(default_factory=dict)
    #: 95% confidence interval ``(low, high)`` of each ranking metric's mean over the evaluated users
    #: (:func:`recflow.evaluation.metrics.confidence_intervals`).
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """Everything one evaluation measured and decided (rendered by
    :func:`~recflow.evaluation.report.write_report`).

    ``significance`` holds the paired tests of the primary metric, keyed ``champion`` and/or
    ``best_baseline``;
    ``segments`` the metrics by user type (new / returning) for every method; ``extra`` whatever the caller
    adds (off-policy estimates, a TFMA ``slices`` DataFrame, ...), rendered generically. ``exposure_reference``
    holds each category's share of the training interactions (``train``) and of the catalog (``catalog``),
    the yardsticks of the methods' ``exposure``; ``long_tail`` the head definition behind ``long_tail_share``.
    """

    k: int
    split: str
    primary_metric: str
    n_users: int
    methods: dict[str, MethodResult]
    significance: dict[str, PairedTest]
    blessing: Blessing
    segments: pd.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)
    catalog_size: int = 0
    exposure_reference: dict[str, dict[str, float]] = field(default_factory=dict)
    long_tail: dict[str, float] = field(default_factory=dict)
    reranking: dict[str, Any] = field(default_factory=dict)
    #: Per tuned baseline: ``{"best_params", "best_score", "metric", "seconds", "trials"}`` (scored on eval).
    baseline_tuning: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Why a configured tuning did not run (empty when it ran or was off).
    baseline_tuning_note: str = ""
    #: The best baseline of this run by the primary metric: ``{"label", "name", "metric", "value"}``.
    best_baseline: dict[str, Any] = field(default_factory=dict)
    #: Configured baselines that did not run, with the reason (``evaluator.max_dense_items``).
    skipped_baselines: dict[str, str] = field(default_factory=dict)
    #: Held-out users with a relevant item, of whom ``n_users`` were evaluated (0: not recorded).
    eligible_users: int = 0
    #: Says how the evaluated users were sampled when ``evaluator.max_users`` bound (empty when all were).
    user_sample_note: str = ""

    def exposure_table(self) -> pd.DataFrame:
        """Share of recommended slots per category (rows) for each method, beside the training-interaction and
        catalog shares (columns ``train``, ``catalog``); empty when items have no category."""
        columns: dict[str, dict[str, float]] = dict(self.exposure_reference)
        columns.update({m.label: m.exposure for m in self.methods.values() if m.exposure})
        if not columns:
            return pd.DataFrame()
        table = pd.DataFrame(columns).fillna(0.0).sort_index()
        table.index.name = "category"
        return table.reset_index()

    @property
    def candidate(self) -> MethodResult:
        return self.methods[CANDIDATE]

    def metrics_table(self) -> pd.DataFrame:
        """One row per method (candidate, champion, baselines), one column per aggregate metric."""
        rows = []
        for m in self.methods.values():
            rows.append(
                {
                    "method": m.label,
                    "recommender": m.name,
                    "role": m.role,
                    **m.metrics,
                    "seconds": round(m.seconds, 3),
                }
            )
        table = pd.DataFrame(rows)
        for count in ("users", "exclusion_violations"):  # counts, stored as floats in the metric dicts
            if count in table.columns:
                table[count] = table[count].astype("int64")
        return table


def build_baselines(
    config: EvaluatorConfig, tuned_params: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Recommender]:
    """Unfitted baselines named in ``config.baselines``, configured from ``config``; a baseline named in
    ``tuned_params`` is built with those hyper-parameters instead (:func:`recflow.baseline_tuning.make_tuned`)."""
    tuned_params = tuned_params or {}
    count = config.count_baselines
    out: dict[str, Recommender] = {}
    for name in config.baselines:
        if name in tuned_params:
            out[name] = make_tuned(name, tuned_params[name], config.seed)
            out[name].name = f"{name} (tuned)"
        elif name == "popularity":
            out[name] = PopularityRecommender(half_life_days=config.popularity_half_life_days)
        elif name == "als":
            als = config.als
            out[name] = ALSRecommender(
                factors=als.factors,
                iterations=als.iterations,
                regularization=als.regularization,
                alpha=als.alpha,
                seed=config.seed,
            )
        elif name == "item_knn":
            out[name] = ItemKNNRecommender(neighbors=config.item_knn_neighbors)
        elif name == "content":
            out[name] = ContentBasedRecommender()
        elif name == "bpr":
            out[name] = BPRRecommender(seed=config.seed)
        elif name == "ease":
            out[name] = EASERecommender()
        elif name == "most_viewed":
            out[name] = MostViewedRecommender(event_weights=count.event_weights)
        elif name == "most_recent":
            out[name] = MostRecentRecommender(event_weights=count.event_weights)
        elif name == "coview":
            out[name] = CoViewRecommender(
                session_gap_minutes=count.coview_session_gap_minutes,
                neighbors=count.coview_neighbors,
                decay=count.coview_decay,
                max_history=count.coview_max_history,
                event_weights=count.event_weights,
            )
        else:  # EvaluatorConfig validates names; this guards direct construction with model_construct
            raise ConfigError(f"evaluator.baselines: unknown baseline {name!r}")
    return out


def configured_params(config: EvaluatorConfig) -> dict[str, dict[str, Any]]:
    """Each tunable baseline's configured hyper-parameters (trial 0 of the tuning), in the tuner's terms."""
    count = config.count_baselines
    return {
        "als": {"factors": config.als.factors, "regularization": config.als.regularization,
                "alpha": config.als.alpha},
        "item_knn": {"neighbors": config.item_knn_neighbors},
        "coview": {"session_gap_minutes": count.coview_session_gap_minutes, "decay": count.coview_decay,
                   "max_history": count.coview_max_history},
    }


def skipped_baselines(config: EvaluatorConfig, train: pd.DataFrame) -> dict[str, str]:
    """The configured baselines that are not run on ``train``, with the reason: the dense item-by-item ones
    (:data:`recflow.baselines.DENSE_ITEM_ITEM_BASELINES`) when train has more than ``config.max_dense_items``
    items."""
    n_items = int(train["item_id"].nunique())
    reasons = {name: dense_skip_reason(name, n_items, config.max_dense_items) for name in config.baselines}
    return {name: why for name, why in reasons.items() if why is not None}


def tune_configured_baselines(
    examples_dir: Path, train: pd.DataFrame, items: pd.DataFrame | None, config: EvaluatorConfig
) -> tuple[dict[str, dict[str, Any]], str]:
    """Tune the baselines of ``config.tuned_baselines`` that are also in ``config.baselines`` (and not skipped,
    :func:`skipped_baselines`): each gets ``config.baseline_tuning_trials`` trials, fitted on ``train`` and
    scored on ``eval.parquet``. Returns ``({name: TuningResult as dict}, note)``; the note says why nothing was
    tuned (empty when tuning ran)."""
    skipped = skipped_baselines(config, train)
    names = [n for n in config.tuned_baselines if n in config.baselines and n not in skipped]
    if config.baseline_tuning_trials == 0:
        return {}, "baseline tuning off (evaluator.baseline_tuning_trials is 0): configured values used"
    if not names:
        return {}, "no tunable baseline among evaluator.baselines" + (
            f" ({'; '.join(skipped.values())})" if skipped else "")
    # only the event columns the tuning reads (every column of the 10M-event world's 1M-event eval split: 694 MB
    # more peak RSS, those three: 133 MB)
    validation = _read_table(Path(examples_dir) / "eval.parquet", _EVENT_COLUMNS, _EVENT_COLUMNS)
    try:
        results = tune_baselines(
            train,
            validation,
            items,
            names=names,
            budget=config.baseline_tuning_trials,
            seed=config.seed,
            k=config.k,
            exclude_train_items=config.exclude_train_items,
            metric=config.metric_key(),
            max_users=config.max_users,
            initial_params=configured_params(config),
        )
    except DataError as exc:
        return {}, f"baselines not tuned, configured values used: {exc}"
    finally:
        del validation
        release_freed_memory()
    note = ""
    if config.split == "eval":
        note = "baselines were tuned on the eval split, which is also the evaluated split (optimistic for them)"
    return {name: r.to_dict() for name, r in results.items()}, note


_SPLIT_FILES = {f"{name}.parquet" for name in SPLITS}


#: Rows of a split :func:`write_split_events` converts at a time (one Arrow record batch).
READ_BATCH_ROWS = 262_144


def read_split_objects(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """:func:`recflow.examplegen.read_split_path` of ``columns`` (those the split has): the same frame (rows in
    (timestamp, event id) order, string columns as object arrays, missing strings None), read with the trainers'
    reader :func:`recflow.training.columnar.read_split_events` (one row group at a time, strings
    dictionary-encoded, sorted in Arrow) and each categorical turned into an object array whose equal strings
    share one Python object: neither the whole Arrow table of strings nor a Python string per cell is made."""
    from recflow.training.columnar import object_values, read_split_events

    path = Path(path)
    frame = read_split_events(path.parent, path.name.removesuffix(".parquet"), columns)
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = object_values(frame[name])
    return frame


def read_split_compact(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """:func:`read_split_objects`'s rows and values, each string column kept a categorical with sorted
    categories (:func:`recflow.training.columnar.read_split_events`): an int8/int16/int32 code per row and each
    distinct string once, where the object column holds an 8-byte pointer per row. The Evaluator holds the
    train split this way for the whole evaluation (8.0M rows at 10M events): the baselines, the exclusions and
    the catalog context read categorical and object columns alike (``tests/test_evaluator_compact.py``)."""
    from recflow.training.columnar import read_split_events

    path = Path(path)
    return read_split_events(path.parent, path.name.removesuffix(".parquet"), columns)


def write_split_events(examples_dir: Path, split: str, dest: Path, batch_rows: int = READ_BATCH_ROWS) -> Path:
    """Write split ``split`` of ``examples_dir`` (either layout) to ``dest`` as one Parquet file, atomically: the
    rows :func:`recflow.examplegen.read_split` returns (log order) with the events schema's types, the table
    ``write_table(read_split(...), dest, "events")`` writes, converted ``batch_rows`` rows at a time. The split is
    never a pandas frame of Python strings: when its rows are already in log order they are streamed a record
    batch at a time; otherwise (shards out of order) the Arrow table is sorted and written in slices."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recflow.examplegen import has_split, read_split, split_path
    from recflow.io import atomic_path, to_arrow, write_table
    from recflow.training.columnar import files_in_log_order, log_order_indices

    path = split_path(Path(examples_dir), split)
    if not has_split(Path(examples_dir), split):
        raise DataError(f"{examples_dir}: no {split}.parquet (run ExampleGen first: recflow.examplegen)")
    shards = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    schemas = [pq.read_schema(shard) for shard in shards]
    keys = [c for c in ("timestamp", "event_id") if c in schemas[0].names]
    order = None
    if keys and not files_in_log_order(shards, keys, {name: schemas[0].field(name).type for name in keys}):
        sort_keys = {name: pa.chunked_array(
            [pq.read_table(shard, columns=[name]).column(name).cast(schemas[0].field(name).type) for shard in shards]
        ).combine_chunks() for name in keys}
        indices = log_order_indices(pa.table(sort_keys), keys)
        order = None if indices is None else np.asarray(indices.to_numpy())
        del sort_keys
    if order is None and len({tuple(s.names) for s in schemas}) > 1:
        order = np.arange(sum(pq.ParquetFile(s).metadata.num_rows for s in shards))  # promote via the table

    def slices() -> Any:
        if order is None:
            for shard in shards:
                for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows):
                    yield pa.Table.from_batches([batch])
        else:
            table = pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default")
            for start in range(0, len(order), batch_rows):
                yield table.take(pa.array(order[start:start + batch_rows]))

    writer: Any = None
    try:
        with atomic_path(dest) as tmp:
            for part in slices():
                converted = to_arrow(part.to_pandas(), "events")
                if writer is None:
                    writer = pq.ParquetWriter(tmp, converted.schema, compression="zstd")
                writer.write_table(converted.cast(writer.schema))
            if writer is None:  # no rows
                pq.write_table(to_arrow(read_split(Path(examples_dir), split), "events"), tmp, compression="zstd")
            else:
                writer.close()
                writer = None
        release_arrow_memory()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a batch's inferred extra column: the whole path
        if writer is not None:
            writer.close()
        write_table(read_split(Path(examples_dir), split), dest, "events")
    return Path(dest)


def _read_table(path: Path, required: Sequence[str], columns: Sequence[str] | None = None,
                compact: bool = False) -> pd.DataFrame:
    """The table at ``path`` (a split in log order); ``columns``: only those of them the file has. ``compact``
    (a split read with ``columns``): its string columns stay categoricals (:func:`read_split_compact`)."""
    if not (path.is_file() or path.is_dir()):  # a split may be a directory of shards (beam engine)
        raise DataError(
            f"{path}: file not found (an examples directory holds train.parquet, eval.parquet, "
            "test.parquet and optionally items.parquet, users.parquet)"
        )
    try:
        if columns is not None:
            import pyarrow.parquet as pq

            first = path if path.is_file() else min(path.glob("*.parquet"), default=path)
            available = set(pq.read_schema(first).names)
            columns = [c for c in columns if c in available]
        if path.name in _SPLIT_FILES and columns is not None:
            frame = read_split_compact(path, columns) if compact else read_split_objects(path, columns)
        elif path.name in _SPLIT_FILES:
            frame = read_split_path(path, columns)
        else:
            frame = pd.read_parquet(path, columns=None if columns is None else list(columns))
    except Exception as exc:  # noqa: BLE001  (pyarrow raises many types for a corrupt file)
        raise DataError(f"{path}: cannot be read as Parquet: {exc}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing} (see recflow/schema.py)")
    for column in ("user_id", "item_id"):
        if column in frame.columns:
            frame[column] = str_column(frame[column])
    return frame


def str_column(series: pd.Series) -> pd.Series:
    """``series.astype(str)`` (a missing value as ``'None'``, as Parquet's missing strings convert); a
    categorical of strings (what :func:`read_split_compact` reads) stays one, a missing value its ``'None'``
    category."""
    from recflow.training.columnar import sorted_categories

    if not isinstance(series.dtype, pd.CategoricalDtype) or not all(
            isinstance(c, str) for c in series.cat.categories):
        return series.astype(str)
    if not series.isna().any():
        return series
    if "None" not in series.cat.categories:
        series = series.cat.add_categories(["None"])
    return sorted_categories(series.fillna("None"))


def load_examples(
    examples_dir: Path, split: str = "test", columns: Sequence[str] | None = None, compact: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """``(train events, held-out events of split, items or None)`` from an examples directory; ``columns``
    (default all) are the event columns read, those the splits have. ``compact`` (with ``columns``): train's
    string columns stay categoricals (:func:`read_split_compact`; the held-out split is read as objects)."""
    examples_dir = Path(examples_dir)
    train = _read_table(examples_dir / "train.parquet", _EVENT_COLUMNS, columns, compact=compact)
    held_out = _read_table(examples_dir / f"{split}.parquet", _EVENT_COLUMNS, columns)
    items_path = examples_dir / "items.parquet"
    items = _read_table(items_path, ("item_id",)) if items_path.is_file() else None
    return train, held_out, items


def _sample_users(users: list[str], max_users: int | None, seed: int) -> list[str]:
    if max_users is None or len(users) <= max_users:
        return users
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(np.array(users, dtype=object), size=max_users, replace=False).tolist())


def _run_method(
    label: str,
    role: str,
    recommender: Recommender,
    users: list[str],
    truth: list[set[str]],
    exclude: Mapping[str, set[str]],
    catalog: set[str],
    config: EvaluatorConfig,
    seconds_before: float = 0.0,
    context: CatalogContext | None = None,
) -> MethodResult:
    start = time.perf_counter()
    recs = recommender.recommend(users, config.k, exclude)
    elapsed = time.perf_counter() - start + seconds_before
    if len(recs) != len(users):
        raise DataError(
            f"recommender {recommender.name!r} ({label}) returned {len(recs)} lists for "
            f"{len(users)} users; results must align with the user ids"
        )
    recs = [[str(i) for i in items] for items in recs]
    per_user = per_user_metrics(recs, truth, config.k, user_ids=users)
    keep = [f"{m}@{config.k}" for m in config.metrics]
    keep += [f"{m}@{config.k}" for m in config.thresholds.non_inferiority_margins if f"{m}@{config.k}" not in keep]
    if config.metric_key() not in keep:
        keep.append(config.metric_key())
    per_user = per_user[keep]
    metrics = aggregate(per_user)
    intervals = confidence_intervals(per_user)
    metrics[f"coverage@{config.k}"] = catalog_coverage(recs, catalog)
    metrics["exclusion_violations"] = float(
        sum(len(set(items[: config.k]) & exclude.get(u, set())) for u, items in zip(users, recs, strict=True))
    )
    exposure: dict[str, float] = {}
    if context is not None:
        metrics.update(beyond_accuracy_metrics(recs, context, config.k))
        if context.categories:
            exposure = exposure_by_group(recs, context.categories, config.k)
    # Coverage and the beyond-accuracy metrics: a seeded bootstrap over the same users (not per-user means).
    intervals.update(list_metric_intervals(recs, catalog, context, config.k, config.seed))
    return MethodResult(label, recommender.name, role, metrics, per_user, elapsed, exposure, intervals)


def _segments(methods: Mapping[str, MethodResult], user_type: pd.Series) -> pd.DataFrame:
    frames = []
    for m in methods.values():
        joined = m.per_user.join(user_type)
        grouped = joined.groupby("user_type", sort=True)
        table = grouped.mean(numeric_only=True)
        table.insert(0, "users", grouped.size())
        table.insert(0, "method", m.label)
        frames.append(table.reset_index())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def candidate_item_embeddings(candidate: Recommender) -> pd.DataFrame | None:
    """The candidate's item embeddings (``model_dir/item_embeddings.parquet`` of a TFRS model), else None."""
    model_dir = getattr(candidate, "model_dir", None)
    path = Path(model_dir) / bundle_layout.ITEM_EMBEDDINGS_FILE if model_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return pd.read_parquet(path, columns=["item_id", "embedding"])
    except Exception:  # noqa: BLE001 - embedding diversity is optional; a bad file must not stop the evaluation
        return None


@dataclass(frozen=True)
class _Population:
    """Who is evaluated on what: the sampled held-out users, their relevant items and exclusions, the catalog.
    ``train`` is the compact train split (string columns categorical, :func:`read_split_compact`), what the
    baselines fit on; the held-out split is not kept (its relevant items are in ``truth``)."""

    train: pd.DataFrame
    items: pd.DataFrame | None
    exclude: dict[str, set[str]]
    users: list[str]
    truth: list[set[str]]
    catalog: set[str]
    user_type: pd.Series
    eligible: int = 0

    def sample_note(self, config: EvaluatorConfig) -> str:
        """What the report says when the user sample bound (empty when every eligible user was evaluated)."""
        if len(self.users) >= self.eligible:
            return ""
        return (f"ranking metrics on a seeded sample of {len(self.users):,} of {self.eligible:,} held-out users "
                f"with a relevant item (evaluator.max_users {config.max_users:,}, seed {config.seed}); "
                "the confidence intervals are over the sampled users")


def _population(examples_dir: Path, config: EvaluatorConfig) -> _Population:
    """Load the examples and sample the users every method ranks for (DataError when none has a relevant item).
    Train is held compact (categoricals) for the whole evaluation; the held-out split only while sampling."""
    train, held_out, items = load_examples(Path(examples_dir), config.split, _TRAIN_COLUMNS, compact=True)
    held_out = held_out[list(_EVENT_COLUMNS)]
    # Train items are excluded only for held-out users, their sets built a chunk of users at a time and kept
    # only for the sampled users (relevant_by_user): never one per held-out user, let alone per user of the log.
    truth_by_user = relevant_by_user(train, held_out, config.exclude_train_items)
    if not truth_by_user:
        raise DataError(
            f"{Path(examples_dir) / (config.split + '.parquet')}: no user has a relevant held-out "
            "item (a click, add_to_cart, purchase or view not already seen in train); nothing to evaluate"
        )
    users = _sample_users(sorted(truth_by_user), config.max_users, config.seed)
    exclude = sampled_exclusions(train, users) if config.exclude_train_items else {}
    catalog = (set(items["item_id"]) if items is not None
               else set(train["item_id"].unique()) | set(held_out["item_id"].unique()))
    del held_out
    returning = pd.Index(users).isin(train["user_id"].unique())  # a hash table of the log's users, not its rows
    user_type = pd.Series(
        np.where(returning, "returning", "new").tolist(),
        index=pd.Index(users, name="user_id"),
        name="user_type",
    )
    release_arrow_memory()
    return _Population(train, items, exclude, users, [truth_by_user[u] for u in users], catalog,
                       user_type, eligible=len(truth_by_user))


def _run(label: str, role: str, recommender: Recommender, pop: _Population, config: EvaluatorConfig,
         context: CatalogContext | None, seconds_before: float = 0.0) -> MethodResult:
    return _run_method(label, role, recommender, pop.users, pop.truth, pop.exclude, pop.catalog, config,
                       seconds_before=seconds_before, context=context)


def _run_candidate_and_champion(
    pop: _Population, candidate: Recommender, champion: Recommender | None, config: EvaluatorConfig,
    context: CatalogContext | None, item_embeddings: pd.DataFrame | None,
) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """The candidate (re-ranked, with the unre-ranked one as a reference, when re-ranking is on) and the
    champion; returns the methods and the re-ranking's settings."""
    methods: dict[str, MethodResult] = {}
    reranking: dict[str, Any] = {}
    if config.reranking.enabled:
        embeddings = (
            context.embeddings
            if context is not None
            else CatalogContext.from_train(pop.train, pop.items, pop.catalog,
                                           item_embeddings=item_embeddings).embeddings
        )
        reranked = make_reranker(candidate, config.reranking, pop.train, pop.items,
                                 head_share=config.beyond_accuracy.head_share, item_embeddings=embeddings or None)
        methods[CANDIDATE] = _run(CANDIDATE, "candidate", reranked, pop, config, context)
        methods[UNRERANKED] = _run(UNRERANKED, "reference", candidate, pop, config, context)
        reranking = {**config.reranking.model_dump(), "name": reranked.name}
    else:
        methods[CANDIDATE] = _run(CANDIDATE, "candidate", candidate, pop, config, context)
    if champion is not None:
        methods[CHAMPION] = _run(CHAMPION, "champion", champion, pop, config, context)
    return methods, reranking


def _run_baselines(examples_dir: Path, pop: _Population, config: EvaluatorConfig, context: CatalogContext | None,
                   methods: dict[str, MethodResult]) -> tuple[dict[str, Any], str, dict[str, str]]:
    """Fit (after tuning the configured ones) and run every baseline into ``methods``, except the skipped ones
    (:func:`skipped_baselines`); returns the tuning, its note and the skipped baselines with their reasons."""
    skipped = skipped_baselines(config, pop.train)
    tuning, tuning_note = tune_configured_baselines(examples_dir, pop.train, pop.items, config)
    tuned_params = {name: t["best_params"] for name, t in tuning.items()}
    runnable = config.model_copy(update={"baselines": tuple(n for n in config.baselines if n not in skipped)})
    baselines = build_baselines(runnable, tuned_params)
    for name in list(baselines):
        baseline = baselines.pop(name)  # fitted one at a time: each fit is freed before the next is built
        start = time.perf_counter()
        baseline.fit(pop.train, pop.items)  # type: ignore[attr-defined]
        methods[name] = _run(name, "baseline", baseline, pop, config, context,
                             seconds_before=time.perf_counter() - start)
        del baseline
        release_freed_memory()
    return tuning, tuning_note, skipped


def _significance(methods: dict[str, MethodResult], candidate: Recommender, champion: Recommender | None,
                  config: EvaluatorConfig) -> tuple[dict[str, PairedTest], dict[str, Any]]:
    """Paired tests of the candidate's primary metric against the champion, the unre-ranked candidate and the
    best baseline; returns them and the best baseline's description."""
    primary = config.metric_key()
    confidence = 1.0 - config.thresholds.alpha
    cand_series = methods[CANDIDATE].per_user[primary]

    def test(label: str, reference: str) -> PairedTest:
        return paired_tests(cand_series, methods[label].per_user[primary], confidence, metric=primary,
                            reference=reference)

    significance: dict[str, PairedTest] = {}
    if champion is not None:
        significance["champion"] = test(CHAMPION, f"champion ({champion.name})")
    if UNRERANKED in methods:
        significance["without_reranking"] = test(UNRERANKED,
                                                 f"the candidate without re-ranking ({candidate.name})")
    baselines = {m.label: m.metrics for m in methods.values() if m.role == "baseline"}
    best = best_baseline(baselines, primary)
    best_info: dict[str, Any] = {}
    if best is not None:
        best_label, best_value = best
        best_info = {"label": best_label, "name": methods[best_label].name, "metric": primary, "value": best_value}
        significance["best_baseline"] = test(best_label, f"best baseline ({best_label})")
    return significance, best_info


def _non_inferiority(methods: dict[str, MethodResult], config: EvaluatorConfig) -> dict[str, NonInferiority]:
    """The candidate's non-inferiority test against the champion, one per margin metric."""
    th = config.thresholds
    out: dict[str, NonInferiority] = {}
    for metric, margin in th.non_inferiority_margins.items():
        key = config.metric_key(metric)
        out[key] = non_inferiority_test(
            methods[CANDIDATE].per_user[key], methods[CHAMPION].per_user[key], margin,
            alpha=th.alpha, min_power=th.min_power, test=th.significance_test, metric=key,
        )
    return out


def evaluate_recommenders(
    examples_dir: Path,
    candidate: Recommender,
    config: EvaluatorConfig,
    champion: Recommender | None = None,
    extra: dict[str, Any] | None = None,
    item_embeddings: pd.DataFrame | None = None,
    candidate_metrics: dict[str, float] | None = None,
) -> EvaluationResult:
    """Evaluate ``candidate`` (already trained) against freshly fitted baselines and the ``champion``.

    All methods rank for the same held-out users (at most ``config.max_users``, sampled with ``config.seed``)
    with the same exclusions, so their per-user metrics are paired. ``item_embeddings`` (columns ``item_id``,
    ``embedding``; default: the candidate's own, see :func:`candidate_item_embeddings`) adds
    ``embedding_diversity@k`` for every method, measured in that one embedding space. Raises
    :class:`~recflow.errors.DataError` when the examples are unusable or the held-out split has no user with a
    relevant item. ``candidate_metrics`` are measured elsewhere and join the candidate's metrics before the
    blessing (e.g. the retrieval index's ``index_recall@k`` from the trainer).
    """
    pop = _population(Path(examples_dir), config)
    context: CatalogContext | None = None
    beyond = config.beyond_accuracy
    if beyond.enabled:
        if item_embeddings is None:
            item_embeddings = candidate_item_embeddings(candidate)
        context = CatalogContext.from_train(pop.train, pop.items, pop.catalog, beyond.head_share, item_embeddings)
    methods, reranking = _run_candidate_and_champion(pop, candidate, champion, config, context, item_embeddings)
    tuning, tuning_note, skipped = _run_baselines(examples_dir, pop, config, context, methods)
    if candidate_metrics:
        methods[CANDIDATE].metrics.update(candidate_metrics)
    primary = config.metric_key()
    significance, best_info = _significance(methods, candidate, champion, config)
    vs_champion = _non_inferiority(methods, config) if champion is not None else {}
    blessing = decide_blessing(
        methods[CANDIDATE].metrics,
        {m.label: m.metrics for m in methods.values() if m.role == "baseline"},
        methods[CHAMPION].metrics if champion is not None else None,
        vs_champion,
        config,
        skipped=skipped,
    )
    return EvaluationResult(
        k=config.k,
        split=config.split,
        primary_metric=primary,
        n_users=len(pop.users),
        methods=methods,
        significance=significance,
        blessing=blessing,
        segments=_segments(methods, pop.user_type),
        extra=dict(extra or {}),
        catalog_size=len(pop.catalog),
        exposure_reference=context.group_reference() if context is not None else {},
        long_tail=(
            {"head_share": context.head_share, "head_items": float(len(context.head))}
            if context is not None
            else {}
        ),
        reranking=reranking,
        baseline_tuning=tuning,
        baseline_tuning_note=tuning_note,
        best_baseline=best_info,
        skipped_baselines=skipped,
        eligible_users=pop.eligible,
        user_sample_note=pop.sample_note(config),
    )
