"""Transform: tf.Transform on Apache Beam turns ExampleGen's events into model-ready features.

Steps: (1) joins of item and user attributes, impression labels and the point-in-time behaviour features
(:mod:`recflow.features.behaviour`) for every event, the serving user state and the candidates: in pandas in the
launching process (``prepare_engine: pandas``, :func:`prepare_features`) or as Beam pipelines over user shards on
the runner below (``prepare_engine: beam``, :mod:`recflow.features.beam_prepare`; the same outputs), staged as
Parquet; (2) tf.Transform analyses the *train* split on Beam
(vocabularies, z-score statistics) and applies the resulting graph to train, eval and test. The same graph
(``transform_graph/``) is loaded by the trainer's exported SavedModels, so serving applies exactly the training
transformation to raw features (no training/serving skew).

Output directory layout:

* ``transform_graph/``: a ``tft.TFTransformOutput`` directory;
* ``transformed/{train,eval,test}/part-*.tfrecord.gz``: gzipped TFRecords of ``tf.train.Example`` whose spec is
  ``TFTransformOutput.transformed_feature_spec()``; ``row_id`` restores the input order;
* ``feature_spec.json``: which raw features exist (the shop's optional fields decide), their types, the
  transformed feature names per tower and the fill values used for missing raw values;
* ``candidates.parquet``: the raw candidate features of every catalog item (item_id, category, price);
* ``user_state.parquet``: each user's raw behaviour features as of the start of the test split (what serving
  looks up for a user; unseen users get the no-history values).

The Beam runner is a parameter: DirectRunner by default, and ``beam_pipeline_args`` (for example
``--runner=DataflowRunner --project=... --temp_location=gs://...``) are passed straight to Beam.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from recflow import bundle_layout, schema
from recflow.errors import DataError
from recflow.examplegen import read_split
from recflow.features import beam_runner, behaviour
from recflow.features.beam_runner import DirectRunningMode
from recflow.io import staged_dir

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "eval", "test")
TRANSFORMED_FORMAT = "tfrecord_gzip"
#: Numeric code of each event type (the ``event_code`` feature) -- the index in the schema's funnel order.
EVENT_CODES: dict[str, int] = {name: i for i, name in enumerate(schema.EVENT_TYPES)}
CATEGORICAL_RAW = ("user_id", "item_id", "category", "brand", "device", "region", "segment")
#: Static user attributes read from the users table (looked up by user id at serving, known for new users too).
USER_ATTRIBUTES = ("segment",)


class TransformConfig(BaseModel):
    """How the Transform step builds features (the ``transform`` section of the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_oov_buckets: int = Field(
        1, ge=1, description="Hash buckets for values unseen in training (new users/items map here)."
    )
    vocab_frequency_threshold: int = Field(
        1, ge=1, description="Users/items seen fewer times than this in train share the OOV buckets."
    )
    beam_runner: str = Field(
        "DirectRunner", description="Beam runner: DirectRunner, DaskRunner (a dask.distributed cluster), "
        "DataflowRunner, FlinkRunner, SparkRunner... (docs/pipeline.md, Distributed data steps)")
    direct_num_workers: int = Field(1, ge=1, description="DirectRunner parallelism (1 is fastest for small data).")
    direct_running_mode: DirectRunningMode = Field(
        "in_memory", description="DirectRunner: in_memory (one process), multi_threading or multi_processing "
        "(direct_num_workers worker processes).")
    dask_address: str | None = Field(
        None, description="DaskRunner: the dask.distributed scheduler (tcp://host:8786); null: a LocalCluster of "
        "dask_workers processes is started for the run and stopped after it.")
    dask_workers: int = Field(2, ge=1, description="DaskRunner: worker processes of the LocalCluster (no address).")
    recent_items: int = Field(
        10, ge=0, description="Length N of the recent-items feature (the user's last N chosen items); 0: off."
    )
    batch_size: int = Field(4096, ge=1, description="Rows per Arrow record batch fed to Beam.")
    prepare_engine: Literal["pandas", "beam"] = Field(
        "pandas", description="Where the raw feature rows are prepared (joins, labels, behaviour features, user "
        "state, candidates): pandas (whole splits in the launching process) or beam (per-user shards on the "
        "runner above; recflow/features/beam_prepare.py).")
    prepare_shards: int = Field(
        8, ge=1, description="beam prepare engine: user shards at least (a shard's events are in one worker's "
        "memory).")
    prepare_rows_per_shard: int = Field(
        125_000, ge=1, description="beam prepare engine: more user shards when they would average more events "
        "than this (shards = max(prepare_shards, ceil(events / this))), so a shard's memory does not grow with "
        "the log.")
    temp_dir: str | None = Field(
        None, description="tf.Transform temp dir (a gs:// path on Dataflow); default: a local temp dir."
    )
    shared_work_dir: bool = Field(
        False, description="Whether the data steps' output and work directories are on a file system every Beam "
        "worker mounts at the same path (NFS, GCS FUSE). A runner whose workers may be other machines "
        "(Dataflow, Flink, Spark, a remote Dask scheduler) is refused without it: the beam engines pass spill and "
        "shard files through those directories.")


@dataclass(frozen=True)
class TransformResult:
    """Where the Transform step wrote its outputs."""

    out_dir: Path
    transform_graph_dir: Path
    transformed_dirs: dict[str, Path]
    feature_spec_path: Path
    candidates_path: Path
    user_state_path: Path
    feature_spec: dict[str, Any] = field(repr=False)

    @property
    def rows(self) -> dict[str, int]:
        return dict(self.feature_spec["rows"])


def _read_examples(examples_dir: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame | None]:
    splits = {}
    for name in SPLITS:
        splits[name] = read_split(examples_dir, name)  # a file or a directory of shards; DataError when missing
    items_path = examples_dir / "items.parquet"
    if not items_path.is_file():
        raise DataError(f"{examples_dir}: no items.parquet (run ExampleGen first: recflow.examplegen)")
    users_path = examples_dir / "users.parquet"
    return splits, pd.read_parquet(items_path), pd.read_parquet(users_path) if users_path.is_file() else None


def _has_values(df: pd.DataFrame | None, column: str) -> bool:
    return df is not None and column in df.columns and bool(df[column].notna().any())


@dataclass(frozen=True)
class LogFacts:
    """The whole log's facts that decide the feature set (:func:`describe_from_facts`), the behaviour plan and the
    impression-labelling rule: computable from a frame (:func:`log_facts`) or merged from parts (:meth:`merge`)."""

    columns: frozenset[str]
    #: Columns holding at least one value.
    with_values: frozenset[str]
    #: Columns holding at least one value on a purchase row.
    purchase_values: frozenset[str]
    event_types: frozenset[str]
    #: Every row has a session_id (vacuously true without rows; false when rows lack the column).
    session_ids_all_rows: bool
    #: Every impression has a request_id (vacuously true without impressions; false when they lack the column).
    requests_all_impressions: bool

    def merge(self, other: LogFacts) -> LogFacts:
        """The facts of the two parts' rows together (as pandas concatenates them)."""
        return LogFacts(columns=self.columns | other.columns, with_values=self.with_values | other.with_values,
                        purchase_values=self.purchase_values | other.purchase_values,
                        event_types=self.event_types | other.event_types,
                        session_ids_all_rows=self.session_ids_all_rows and other.session_ids_all_rows,
                        requests_all_impressions=self.requests_all_impressions and other.requests_all_impressions)

    @property
    def session_ids(self) -> bool:
        """Whether logged session ids are used (:func:`recflow.features.behaviour.behaviour_plan`)."""
        return "session_id" in self.columns and self.session_ids_all_rows

    @property
    def impression_requests(self) -> bool:
        """Whether impressions are labelled by request id (:func:`label_impressions`)."""
        return "request_id" in self.columns and self.requests_all_impressions

    def spend_column(self) -> str | None:
        """:func:`recflow.features.behaviour.spend_column` of the rows."""
        if "purchase" not in self.event_types:
            return None
        return next((name for name in ("order_value", "price") if name in self.purchase_values), None)

    def behaviour_columns(self) -> list[str]:
        """:func:`recflow.features.behaviour.behaviour_columns` of the rows."""
        cols = list(behaviour.ALWAYS_PRESENT)
        if self.spend_column() is not None:
            cols.append("monetary")
        if "dwell_time_s" in self.with_values:
            cols.append("dwell_mean")
        return cols

    def behaviour_plan(self, columns: list[str] | None = None) -> behaviour.BehaviourPlan:
        """:func:`recflow.features.behaviour.behaviour_plan` of the rows."""
        return behaviour.BehaviourPlan(columns=tuple(columns if columns is not None else self.behaviour_columns()),
                                       spend_col=self.spend_column(), session_ids=self.session_ids)


def log_facts(events: pd.DataFrame) -> LogFacts:
    """The :class:`LogFacts` of ``events``."""
    purchases = events["event_type"] == "purchase"
    is_imp = events["event_type"] == "impression"
    return LogFacts(
        columns=frozenset(events.columns),
        with_values=frozenset(c for c in events.columns if bool(events[c].notna().any())),
        purchase_values=frozenset(c for c in events.columns if bool(events.loc[purchases, c].notna().any())),
        event_types=frozenset(str(t) for t in events["event_type"].unique()),
        session_ids_all_rows=bool(events["session_id"].notna().all()) if "session_id" in events.columns
        else events.empty,
        requests_all_impressions=bool(events.loc[is_imp, "request_id"].notna().all()) if "request_id" in events.columns
        else not is_imp.any())


def frame_fields(frame: pd.DataFrame | None) -> frozenset[str] | None:
    """The columns of ``frame`` holding at least one value (None for no frame)."""
    return None if frame is None else frozenset(c for c in frame.columns if _has_values(frame, c))


def describe_features(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
                      recent_n: int = 0) -> dict[str, Any]:
    """Decide which raw features exist for this shop's log and how they are typed and filled.

    ``events`` are all events (every split): a field is used when it holds values anywhere in the log.
    ``recent_n`` > 0 adds ``recent_items`` (a list of N item ids) when the log has views or other choices.
    """
    return describe_from_facts(log_facts(events), items, frame_fields(users), recent_n)


def describe_from_facts(facts: LogFacts, items: pd.DataFrame, user_fields: frozenset[str] | None,
                        recent_n: int = 0) -> dict[str, Any]:
    """:func:`describe_features` of a log given by its facts (``user_fields``: the users table's columns with
    values, None without a users table)."""
    ev, us = facts.with_values, user_fields or frozenset()
    raw: dict[str, str] = {"user_id": "string", "item_id": "string"}
    context: list[str] = []
    candidate = ["item_id"]
    if _has_values(items, "category"):
        raw["category"] = "string"
        candidate.append("category")
    if _has_values(items, "brand"):
        raw["brand"] = "string"
        candidate.append("brand")
    if "price" in ev or _has_values(items, "price"):
        raw["price"] = "float32"
        candidate.append("price")
    for name in ("hour", "weekday"):
        if name in ev:
            raw[name] = "int64"
            context.append(name)
    for name in ("device", "region"):
        if name in ev or (name == "region" and "region" in us):
            raw[name] = "string"
            context.append(name)
    user_features = [name for name in USER_ATTRIBUTES if name in us]
    for name in user_features:
        raw[name] = "string"
    behaviour_cols = facts.behaviour_columns()
    for name in behaviour_cols:
        raw[name] = "float32"
    has_recent = recent_n > 0 and bool(facts.event_types & set(behaviour.CHOICE_EVENT_TYPES))
    if has_recent:
        raw["recent_items"] = "string_list"
    raw["event_code"] = "int64"
    raw["clicked"] = "int64"
    types = facts.event_types
    if "purchase" in types and "impression" in types:
        raw["purchased"] = "int64"
    raw["row_id"] = "int64"
    positives = [t for t in schema.POSITIVE_EVENT_TYPES if t in types] or (["view"] if "view" in types else [])
    transformed_query = ["user_idx"] + [f for f in ("hour_sin", "hour_cos") if "hour" in raw] \
        + [f for f in ("weekday_sin", "weekday_cos") if "weekday" in raw] \
        + [f"{n}_idx" for n in ("device", "region") if n in raw] + [f"{n}_idx" for n in user_features] \
        + [f"{b}_z" for b in behaviour_cols] \
        + (["recent_items_idx"] if has_recent else [])
    transformed_candidate = ["item_idx"] + (["category_idx"] if "category" in raw else []) \
        + (["brand_idx"] if "brand" in raw else []) \
        + (["price_z"] if "price" in raw else [])
    return {
        "raw_features": raw,
        "serving_inputs": ["user_id", *context],
        "context_features": context,
        "user_features": user_features,
        "behaviour_features": behaviour_cols,
        "candidate_features": candidate,
        "transformed_query_features": transformed_query,
        "transformed_candidate_features": transformed_candidate,
        "label_features": ["event_code", "clicked", *(["purchased"] if "purchased" in raw else [])],
        "event_codes": EVENT_CODES,
        "positive_event_types": positives,
        "has_impressions": "impression" in types,
        "has_clicks": "click" in types,
        "has_purchases": "purchased" in raw,
        "transformed_format": TRANSFORMED_FORMAT,
        "recent_items": recent_n if has_recent else 0,
    }


def label_impressions(events: pd.DataFrame, event_type: str = "click", by_request: bool | None = None
                      ) -> pd.Series:
    """Label of each impression: 1 when the user clicked (``event_type``: or e.g. purchased) that item from that
    slate, else 0; -1 for rows that are not impressions.

    An event belongs to an impression with the same user, item and ``request_id`` when request ids were logged,
    otherwise to an impression of the same user and item at most 30 minutes earlier. ``by_request`` gives that
    choice (the whole log's :attr:`LogFacts.impression_requests`, for a part of the log); None: decided here.
    """
    labels = pd.Series(-1, index=events.index, dtype=np.int64)
    is_imp = events["event_type"] == "impression"
    if not is_imp.any():
        return labels
    labels[is_imp] = 0
    clicks = events[events["event_type"] == event_type]
    if clicks.empty:
        return labels
    if by_request is None:
        by_request = bool("request_id" in events.columns and events.loc[is_imp, "request_id"].notna().all())
    if by_request:
        clicked = set(zip(clicks["user_id"], clicks["item_id"], clicks["request_id"], strict=True))
        imp = events[is_imp]
        hit = [k in clicked for k in zip(imp["user_id"], imp["item_id"], imp["request_id"], strict=True)]
        labels[imp.index[np.asarray(hit, dtype=bool)]] = 1
        return labels
    imp = events.loc[is_imp, ["user_id", "item_id", "timestamp"]].assign(_idx=events.index[is_imp])
    clk = clicks[["user_id", "item_id", "timestamp"]].rename(columns={"timestamp": "click_ts"})
    imp = imp.sort_values("timestamp")
    clk = clk.sort_values("click_ts")
    matched = pd.merge_asof(imp, clk, left_on="timestamp", right_on="click_ts", by=["user_id", "item_id"],
                            direction="forward", tolerance=pd.Timedelta(minutes=30))
    labels[matched.loc[matched["click_ts"].notna(), "_idx"].to_numpy()] = 1
    return labels


def fill_values(train: pd.DataFrame, items: pd.DataFrame, spec: dict[str, Any]) -> dict[str, Any]:
    """Values that replace missing raw values (the median train price; empty strings map to OOV)."""
    train_median = float(train["price"].dropna().median()) if _has_values(train, "price") else None
    return fill_values_from(train_median, items, spec)


def fill_values_from(train_median: float | None, items: pd.DataFrame, spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`fill_values` given the median of train's logged prices (None: train logged no price, the catalog's
    median is used)."""
    fills: dict[str, Any] = {name: "" for name, kind in spec["raw_features"].items() if kind == "string"}
    if "price" in spec["raw_features"]:
        if train_median is not None:
            median = train_median
        else:
            prices = items.get("price", pd.Series(dtype=float))
            median = float(prices.dropna().median()) if prices.notna().any() else 0.0
        fills["price"] = median if math.isfinite(median) else 0.0
    for name in ("hour", "weekday"):
        if name in spec["raw_features"]:
            fills[name] = 0
    return fills


def build_raw_frame(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
                    spec: dict[str, Any], fills: dict[str, Any]) -> pd.DataFrame:
    """Raw feature columns (exactly ``spec['raw_features']``) for ``events``, which carry behaviour features."""
    raw = spec["raw_features"]
    out = pd.DataFrame(index=events.index)
    out["user_id"] = events["user_id"].astype(str)
    out["item_id"] = events["item_id"].astype(str)
    item_attrs = items.set_index("item_id")
    for name in ("category", "brand"):
        if name in raw:
            out[name] = events["item_id"].map(item_attrs[name])
    for name in spec.get("user_features", []):
        out[name] = events["user_id"].map(users.drop_duplicates("user_id").set_index("user_id")[name])  # type: ignore[union-attr]
    if "price" in raw:
        event_price = events["price"] if "price" in events.columns else pd.Series(np.nan, index=events.index)
        catalog_price = (events["item_id"].map(item_attrs["price"]) if "price" in item_attrs.columns
                         else pd.Series(np.nan, index=events.index))
        out["price"] = event_price.fillna(catalog_price)
    for name in ("hour", "weekday", "device"):
        if name in raw:
            out[name] = events[name]
    if "region" in raw:
        region = events["region"] if "region" in events.columns else pd.Series(None, index=events.index)
        if _has_values(users, "region"):
            region = region.fillna(events["user_id"].map(users.set_index("user_id")["region"]))  # type: ignore[union-attr]
        out["region"] = region
    for name in spec["behaviour_features"]:
        out[name] = events[name]
    if "recent_items" in raw:
        out["recent_items"] = events["recent_items"]
    out["event_code"] = events["event_type"].map(EVENT_CODES).astype(np.int64)
    out["clicked"] = events["clicked"].astype(np.int64)
    if "purchased" in raw:
        out["purchased"] = events["purchased"].astype(np.int64)
    out["row_id"] = events["row_id"].astype(np.int64)
    return coerce_raw(out, spec, fills)


def coerce_raw(frame: pd.DataFrame, spec: dict[str, Any], fills: dict[str, Any]) -> pd.DataFrame:
    """Fill missing values and cast the columns of ``frame`` that are raw features to their raw types."""
    out = frame.copy()
    for name in out.columns:
        kind = spec["raw_features"].get(name)
        if kind == "string":
            out[name] = out[name].where(out[name].notna(), fills.get(name, "")).astype(str)
        elif kind == "int64":
            out[name] = out[name].fillna(fills.get(name, 0)).astype(np.int64)
        elif kind == "float32":
            out[name] = out[name].astype(np.float64).fillna(fills.get(name, 0.0)).astype(np.float32)
    return out


def raw_feature_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The tf.io feature spec of the raw features (every feature is a scalar per event)."""
    import tensorflow as tf

    dtypes = {"string": tf.string, "int64": tf.int64, "float32": tf.float32, "string_list": tf.string}
    return {name: tf.io.FixedLenFeature([spec["recent_items"]] if kind == "string_list" else [], dtypes[kind])
            for name, kind in spec["raw_features"].items()}


def make_preprocessing_fn(spec: dict[str, Any], config: TransformConfig):
    """The tf.Transform ``preprocessing_fn`` for the features in ``spec``.

    Vocabularies (users, items, categories, devices, regions) map unseen values to ``num_oov_buckets`` OOV ids;
    log prices and log behaviour counts are z-scored; hour and weekday become sin/cos pairs.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    raw = spec["raw_features"]

    def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "recent_items" in raw:
            # One item vocabulary for the candidate id and the user's recent items; padding maps to -1.
            item_vocab = tft.vocabulary(inputs["item_id"], frequency_threshold=(
                config.vocab_frequency_threshold if config.vocab_frequency_threshold > 1 else None),
                vocab_filename="item_id")
            out["item_idx"] = tft.apply_vocabulary(inputs["item_id"], item_vocab,
                                                   num_oov_buckets=config.num_oov_buckets)
            recent = tft.apply_vocabulary(inputs["recent_items"], item_vocab, num_oov_buckets=config.num_oov_buckets)
            out["recent_items_idx"] = tf.where(tf.equal(inputs["recent_items"], behaviour.PAD_ITEM),
                                               tf.constant(-1, tf.int64), recent)
        for name in CATEGORICAL_RAW:
            if name in raw and not (name == "item_id" and "item_idx" in out):
                min_count = config.vocab_frequency_threshold if name in ("user_id", "item_id") else 1
                threshold = min_count if min_count > 1 else None  # tft treats 1 as a no-op and warns
                out[f"{name.removesuffix('_id')}_idx"] = tft.compute_and_apply_vocabulary(
                    inputs[name], num_oov_buckets=config.num_oov_buckets, frequency_threshold=threshold,
                    vocab_filename=name)
        if "price" in raw:
            out["price_z"] = tft.scale_to_z_score(tf.math.log1p(tf.maximum(inputs["price"], 0.0)))
        for name, period in (("hour", 24.0), ("weekday", 7.0)):
            if name in raw:
                angle = 2.0 * math.pi * tf.cast(inputs[name], tf.float32) / period
                out[f"{name}_sin"] = tf.sin(angle)
                out[f"{name}_cos"] = tf.cos(angle)
        for name in spec["behaviour_features"]:
            out[f"{name}_z"] = tft.scale_to_z_score(tf.math.log1p(tf.maximum(inputs[name], 0.0)))
        for name in ("event_code", "clicked", "purchased", "row_id"):
            if name in raw:
                out[name] = tf.identity(inputs[name])
        return out

    return preprocessing_fn


def _arrow_type(kind: str) -> pa.DataType:
    return {"string": pa.large_binary(), "string_list": pa.large_binary(), "int64": pa.int64(),
            "float32": pa.float32()}[kind]


def to_record_batches(frame: pd.DataFrame, spec: dict[str, Any], batch_size: int,
                      arrow_schema: pa.Schema) -> list[pa.RecordBatch]:
    """Arrow record batches in the layout tfx-bsl's TFExample TensorAdapter expects (one-element lists)."""
    names = list(arrow_schema.names)
    batches = []
    for start in range(0, len(frame), batch_size):
        chunk = frame.iloc[start:start + batch_size]
        offsets = pa.array(np.arange(len(chunk) + 1, dtype=np.int64))
        arrays = []
        for name in names:
            kind = spec["raw_features"][name]
            values = chunk[name].to_numpy()
            if kind == "string_list":
                width = spec["recent_items"]
                flat = [v.encode("utf-8") for row in values for v in row]
                list_offsets = pa.array(np.arange(len(chunk) + 1, dtype=np.int64) * width)
                arrays.append(pa.LargeListArray.from_arrays(list_offsets, pa.array(flat, type=_arrow_type(kind))))
                continue
            if kind == "string":
                values = [v.encode("utf-8") for v in values]
            arrays.append(pa.LargeListArray.from_arrays(offsets, pa.array(values, type=_arrow_type(kind))))
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=arrow_schema))
    return batches


def pipeline_args(config: TransformConfig, beam_pipeline_args: list[str] | None) -> list[str]:
    """Beam options: the configured runner (quiet, single-worker DirectRunner defaults), then the caller's args."""
    return beam_runner.runner_args(config.beam_runner, config.direct_num_workers, config.direct_running_mode,
                                   config.dask_address) + list(beam_pipeline_args or [])


def _stage_split(batches: list[pa.RecordBatch], arrow_schema: pa.Schema, path: Path) -> str:
    """Write one split's raw record batches to a Parquet file for the Beam pipeline to read."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, arrow_schema, compression="snappy") as writer:
        for batch in batches:
            writer.write_batch(batch)
    return str(path)


def _as_record_batches(table: pa.Table, arrow_schema: pa.Schema, batch_size: int) -> list[pa.RecordBatch]:
    return table.cast(arrow_schema).to_batches(max_chunksize=batch_size)


def _read_split(pipeline: Any, label: str, path: str, arrow_schema: pa.Schema, batch_size: int) -> Any:
    """The staged split as a PCollection of record batches in the TensorAdapter's layout."""
    import apache_beam as beam

    return (pipeline
            | f"Read{label}" >> beam.io.ReadFromParquetBatched(path)
            | f"Batches{label}" >> beam.FlatMap(_as_record_batches, arrow_schema, batch_size))


def raw_tfxio(spec: dict[str, Any]) -> Any:
    """The TFXIO of the raw features: its ``ArrowSchema()`` is the staged raw rows' layout (one-element lists)."""
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.tfxio import tf_example_record

    raw_schema = schema_utils.schema_from_feature_spec(raw_feature_spec(spec))
    return tf_example_record.TFExampleBeamRecord(
        physical_format="inmem", telemetry_descriptors=["recflow"], schema=raw_schema)


def stage_raw_frames(raw_frames: dict[str, pd.DataFrame], spec: dict[str, Any], config: TransformConfig,
                     temp_dir: str) -> dict[str, str]:
    """Write the pandas engine's raw rows as one Parquet file per split (the paths, by split)."""
    arrow_schema = raw_tfxio(spec).ArrowSchema()
    # The raw batches are staged as Parquet files that the pipeline reads, not embedded with beam.Create: Beam
    # pickles (and bz2-compresses) a Create's data into the pipeline proto several times, which cost about 100 s
    # per 100k events and grew with the data. Reading files is also how Dataflow/Flink/Spark runners scale.
    return {name: _stage_split(to_record_batches(frame, spec, config.batch_size, arrow_schema), arrow_schema,
                               Path(temp_dir) / f"raw-{name}.parquet")
            for name, frame in raw_frames.items()}


def _run_beam(staged: dict[str, str], spec: dict[str, Any], config: TransformConfig,
              out_dir: Path, beam_pipeline_args: list[str] | None, temp_dir: str) -> None:
    """tf.Transform over the staged raw rows: ``staged`` maps each split to a Parquet file or file pattern."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tfx_bsl.coders import example_coder

    tfxio = raw_tfxio(spec)
    adapter_config, arrow_schema = tfxio.TensorAdapterConfig(), tfxio.ArrowSchema()
    preprocessing_fn = make_preprocessing_fn(spec, config)
    with beam_runner.beam_args(config.beam_runner, beam_pipeline_args, direct_num_workers=config.direct_num_workers,
                               direct_running_mode=config.direct_running_mode, dask_address=config.dask_address,
                               dask_workers=config.dask_workers) as args, \
            beam.Pipeline(options=PipelineOptions(args)) as pipeline, \
            tft_beam.Context(temp_dir=temp_dir, desired_batch_size=config.batch_size):
        # The train split is read twice: once for the analysis, once to transform it. AnalyzeAndTransformDataset
        # on one read makes the runner keep the whole split (the transform waits for the analysis's side input),
        # so the in-memory DirectRunner held every train row; two reads let both stream (same rows, same order).
        train = _read_split(pipeline, "Train", staged["train"], arrow_schema, config.batch_size)
        transform_fn = (train, adapter_config) | "AnalyzeTrain" >> tft_beam.AnalyzeDataset(preprocessing_fn)
        graph_dir = str(out_dir / bundle_layout.TRANSFORM_GRAPH_DIR)
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(graph_dir)
        outputs: dict[str, Any] = {}
        for name in ("train", "eval", "test"):
            label = "TrainAgain" if name == "train" else name.title()
            data = _read_split(pipeline, label, staged[name], arrow_schema, config.batch_size)
            outputs[name], _ = ((data, adapter_config), transform_fn) | f"Transform{name.title()}" >> \
                tft_beam.TransformDataset(output_record_batches=True)
        for name, data in outputs.items():
            _ = (data
                 # Arrow batches to tf.Examples in C++ (much faster than encoding instance dicts in Python).
                 | f"Encode{name.title()}" >> beam.FlatMap(lambda batch: example_coder.RecordBatchToExamples(batch[0]))
                 | f"Write{name.title()}" >> beam.io.WriteToTFRecord(
                     str(out_dir / bundle_layout.TRANSFORMED_DIR / name / "part"), file_name_suffix=".tfrecord.gz"))


@dataclass(frozen=True)
class PreparedFeatures:
    """Everything the Beam step needs, computed with pandas: raw feature rows per split and serving tables."""

    spec: dict[str, Any]
    raw_frames: dict[str, pd.DataFrame]
    candidates: pd.DataFrame
    user_state: pd.DataFrame


def prepare_features(examples_dir: Path, config: TransformConfig) -> PreparedFeatures:
    """Read ExampleGen's output and build the raw feature rows (joins, labels, point-in-time behaviour)."""
    splits, items, users = _read_examples(Path(examples_dir))
    sizes = {name: len(df) for name, df in splits.items()}
    events = pd.concat([splits[n].assign(_split=n) for n in SPLITS], ignore_index=True)
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    events["row_id"] = np.arange(len(events), dtype=np.int64)
    events["clicked"] = label_impressions(events)
    events["purchased"] = label_impressions(events, "purchase")
    spec = describe_features(events, items, users, config.recent_items)
    if spec["recent_items"]:
        events["recent_items"] = behaviour.recent_items(events, spec["recent_items"])
    # Behaviour features over the whole timeline: each uses strictly earlier events only, so eval/test rows may
    # see training history (as serving would) but nothing of their own future.
    events = behaviour.add_behaviour_features(events, spec["behaviour_features"])
    fills = fill_values(splits["train"], items, spec)
    spec["fill_values"] = fills
    spec["num_oov_buckets"] = config.num_oov_buckets
    spec["rows"] = sizes
    raw_frames = {name: build_raw_frame(events[events["_split"] == name], items, users, spec, fills)
                  for name in SPLITS}
    state_at = splits["test"]["timestamp"].min() if sizes["test"] else events["timestamp"].max() + pd.Timedelta(1, "s")
    user_state = behaviour.user_state_at(
        events.drop(columns=[*spec["behaviour_features"], *(["recent_items"] if spec["recent_items"] else [])]),
        state_at, spec["behaviour_features"], recent_n=spec["recent_items"])
    if spec["user_features"] and users is not None:
        user_state = with_user_attributes(user_state, users, spec)
    spec["user_state_at"] = pd.Timestamp(state_at).isoformat()
    spec["no_history_state"] = behaviour.no_history_state(spec["behaviour_features"])
    candidates = coerce_raw(build_candidates(items, events, spec), spec, fills)
    return PreparedFeatures(spec=spec, raw_frames=raw_frames, candidates=candidates, user_state=user_state)


def with_user_attributes(user_state: pd.DataFrame, users: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """Add the static user attributes (``spec['user_features']``) to the serving snapshot, and a no-history row
    for every user of the users table without events yet: a new user's segment is known at sign-up, so the
    query tower gives them a segment-specific (not a generic) embedding."""
    attrs = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id").set_index("user_id")
    missing = sorted(set(attrs.index) - set(user_state["user_id"].astype(str)))
    if missing:
        extra = pd.DataFrame({"user_id": missing})
        for name, value in behaviour.no_history_state(spec["behaviour_features"]).items():
            extra[name] = value
        if spec["recent_items"]:
            extra["recent_items"] = [[behaviour.PAD_ITEM] * spec["recent_items"] for _ in missing]
        user_state = pd.concat([user_state, extra], ignore_index=True).sort_values("user_id").reset_index(drop=True)
    for name in spec["user_features"]:
        user_state[name] = user_state["user_id"].astype(str).map(attrs[name]).fillna("").astype(str)
    return user_state


def run_transform(examples_dir: Path, out_dir: Path, config: TransformConfig,
                  beam_pipeline_args: list[str] | None = None) -> TransformResult:
    """Run the Transform step on ExampleGen's output ``examples_dir`` and write ``out_dir`` (layout above).

    The analysis (vocabularies, means, variances) sees the train split only; eval and test are transformed
    with the same graph. Raises DataError when ``examples_dir`` is not ExampleGen output.
    """
    examples_dir, out_dir = Path(examples_dir), Path(out_dir)
    beam_runner.check_tf_transform_runner(pipeline_args(config, beam_pipeline_args))
    beam_runner.check_shared_files(pipeline_args(config, beam_pipeline_args), config.shared_work_dir, "Transform",
                                   f"{out_dir.parent} (the staged raw rows, the user shards' spill)")
    if config.prepare_engine == "beam":
        from recflow.features import beam_prepare

        beam_prepare.check_examples(examples_dir)
        with staged_dir(out_dir) as tmp_dir:
            beam_temp = config.temp_dir or str(tmp_dir / "tft_tmp")
            # The raw rows, candidates.parquet and user_state.parquet are written by the preparation pipeline.
            staged_beam = beam_prepare.prepare_features_beam(examples_dir, config, tmp_dir, tmp_dir / "prepare",
                                                             beam_pipeline_args)
            spec = staged_beam.spec
            _run_beam(staged_beam.raw_patterns, spec, config, tmp_dir, beam_pipeline_args, beam_temp)
            shutil.rmtree(tmp_dir / "tft_tmp", ignore_errors=True)
            shutil.rmtree(tmp_dir / "prepare", ignore_errors=True)
            _write_spec(spec, tmp_dir)
        return _result(out_dir, spec)
    prepared = prepare_features(examples_dir, config)
    spec, raw_frames, candidates, user_state = (prepared.spec, prepared.raw_frames, prepared.candidates,
                                                prepared.user_state)

    with staged_dir(out_dir) as tmp_dir:
        beam_temp = config.temp_dir or str(tmp_dir / "tft_tmp")
        staged = stage_raw_frames(raw_frames, spec, config, beam_temp)
        _run_beam(staged, spec, config, tmp_dir, beam_pipeline_args, beam_temp)
        shutil.rmtree(tmp_dir / "tft_tmp", ignore_errors=True)
        candidates.to_parquet(tmp_dir / bundle_layout.CANDIDATES_FILE, index=False)
        user_state.to_parquet(tmp_dir / bundle_layout.USER_STATE_FILE, index=False)
        _write_spec(spec, tmp_dir)
    return _result(out_dir, spec)


def _write_spec(spec: dict[str, Any], out_dir: Path) -> None:
    (out_dir / bundle_layout.FEATURE_SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True),
                                                           encoding="utf-8")


def _result(out_dir: Path, spec: dict[str, Any]) -> TransformResult:
    return TransformResult(
        out_dir=out_dir,
        transform_graph_dir=out_dir / bundle_layout.TRANSFORM_GRAPH_DIR,
        transformed_dirs={name: out_dir / bundle_layout.TRANSFORMED_DIR / name for name in SPLITS},
        feature_spec_path=out_dir / bundle_layout.FEATURE_SPEC_FILE,
        candidates_path=out_dir / bundle_layout.CANDIDATES_FILE,
        user_state_path=out_dir / bundle_layout.USER_STATE_FILE,
        feature_spec=spec,
    )


def build_candidates(items: pd.DataFrame, events: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """Raw candidate features of every item in the catalog or the events, sorted by item id."""
    latest = (events.dropna(subset=["price"]).groupby("item_id")["price"].last() if _has_values(events, "price")
              else None)
    return candidates_frame(items, events["item_id"].astype(str), latest, spec)


def candidates_frame(items: pd.DataFrame, event_items: pd.Series, latest: pd.Series | None,
                     spec: dict[str, Any]) -> pd.DataFrame:
    """:func:`build_candidates` from the events' item ids and each item's latest logged price (None: the log
    has no prices)."""
    ids = sorted(set(items["item_id"].astype(str)) | set(event_items))
    out = pd.DataFrame({"item_id": ids})
    attrs = items.assign(item_id=items["item_id"].astype(str)).set_index("item_id")
    for name in ("category", "brand"):
        if name in spec["raw_features"]:
            out[name] = out["item_id"].map(attrs[name])
    if "price" in spec["raw_features"]:
        price = out["item_id"].map(attrs["price"]) if "price" in attrs.columns else pd.Series(np.nan, index=out.index)
        if latest is not None:
            price = price.fillna(out["item_id"].map(latest))
        out["price"] = price
    return out


def load_transformed(transformed_dir: Path, transform_graph_dir: Path) -> dict[str, np.ndarray]:
    """Read one transformed split into memory as numpy arrays, in ``row_id`` (time) order."""
    import tensorflow as tf
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(str(transform_graph_dir)).transformed_feature_spec()
    files = sorted(str(p) for p in Path(transformed_dir).glob("part-*"))
    columns: dict[str, list[np.ndarray]] = {name: [] for name in spec}
    if files:
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65536)
        for batch in ds:
            parsed = tf.io.parse_example(batch, spec)
            for name in spec:
                columns[name].append(parsed[name].numpy())
    data = {name: (np.concatenate(parts) if parts else np.zeros((0,), dtype=spec[name].dtype.as_numpy_dtype))
            for name, parts in columns.items()}
    order = np.argsort(data["row_id"], kind="stable")
    return {name: values[order] for name, values in data.items()}


def apply_transform_graph(transform_graph_dir: Path, spec: dict[str, Any], frame: pd.DataFrame
                          ) -> dict[str, np.ndarray]:
    """Transform raw rows (any subset of the raw features; the rest get placeholders) with the saved graph.

    Outputs that depend on a missing raw feature are meaningless for these rows; callers read only the
    outputs whose inputs they gave (for example the candidate features from item_id, category and price).
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    layer = tft.TFTransformOutput(str(transform_graph_dir)).transform_features_layer()
    fills = spec.get("fill_values", {})
    rows = coerce_raw(frame, spec, fills)
    n = len(rows)
    dtypes = {"string": tf.string, "int64": tf.int64, "float32": tf.float32, "string_list": tf.string}
    raw = {}
    for name, kind in spec["raw_features"].items():
        if kind == "string_list":
            width = spec["recent_items"]
            values = (np.array(rows[name].tolist(), dtype=object).reshape(n, width) if name in rows.columns
                      else np.full((n, width), behaviour.PAD_ITEM, dtype=object))
            raw[name] = tf.constant(values, tf.string)
        elif name in rows.columns:
            values = rows[name].to_numpy()
            raw[name] = tf.constant(values.astype(object) if kind == "string" else values, dtypes[kind])
        else:
            raw[name] = tf.fill([n], tf.constant(fills.get(name, "" if kind == "string" else 0), dtypes[kind]))
    return {name: value.numpy() for name, value in layer(raw).items()}
