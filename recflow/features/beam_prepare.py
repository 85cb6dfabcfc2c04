"""Transform's feature preparation as Beam pipelines (``transform.prepare_engine: beam``): the same raw feature
rows, user-state snapshot, candidates and feature spec as :func:`recflow.features.transform.prepare_features`,
computed on the Beam runner of the Transform step, with no events table in the launching process.

Two pipelines, on the runner settings of tf.Transform (:func:`recflow.features.beam_runner.beam_args`):

1. **Facts.** One task per split reads the split's files (a file or a directory of shards, in name order) in
   batches and reduces them to the split's :class:`~recflow.features.transform.LogFacts` (which fields hold
   values, event types, whether session and request ids are complete), its row count, first and last
   timestamp, and for train the counts of each logged price (the exact median fill value). It also checks that
   the split is in ``(timestamp, event_id)`` order, which both ExampleGen engines write; the users table gives
   its fields with values. The launcher merges these small facts into the feature spec (the same
   :func:`~recflow.features.transform.describe_from_facts` as the pandas engine), the fill values and the
   user-state instant (the test split's first timestamp).
2. **Rows.** Each split is read again; each event gets ``row_id``, its position in the time order of all
   events. Splits are strictly time-ordered (checked from the facts), so that is the rows of the earlier
   splits plus the row's position in its split: the pandas engine's stable time sort. Events and users go to a
   user shard (CRC-32 of the user id: :func:`recflow.features.beam_behaviour.shard_of`) and each shard, which
   holds all events of its users, runs the pandas engine's own functions under the whole log's decisions:
   impression labels (same user, item and request, or the 30-minute rule), recent items, the point-in-time
   behaviour features, the joins with items (each worker reads the catalog) and users, and the user-state
   snapshot. It writes its raw rows per split as Parquet in tf.Transform's input layout (what
   ``transform._run_beam`` reads), its user-state rows and each of its items' latest logged price.

The launcher then writes ``user_state.parquet`` (the shards' rows sorted by user id, with Arrow) and
``candidates.parquet`` from the catalog and the shards' latest prices: tables of users and items, not events.
Shard files go to a local directory, so the pipelines run where the launcher's disk is reachable (the
DirectRunner, in one process or several); a cluster runner needs ``work_dir`` on a shared file system.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.examplegen import has_split, split_path
from recflow.features import behaviour
from recflow.features.beam_behaviour import shard_of
from recflow.features.beam_runner import beam_args, shard_count, wait_for_all
from recflow.io import atomic_path

#: Input index of each split, and of the users table, in the rows pipeline.
SPLIT_INDEX: dict[str, int] = {"train": 0, "eval": 1, "test": 2}
USERS_INDEX = 3
SPLIT_COL = "_split"


def split_files(examples_dir: Path, name: str) -> list[str]:
    """The files of split ``name`` in the order :func:`recflow.examplegen.read_split` concatenates them."""
    path = split_path(examples_dir, name)
    return [str(path)] if path.is_file() else [str(p) for p in sorted(path.glob("*.parquet"))]


def check_examples(examples_dir: Path) -> None:
    """The pandas engine's errors for a directory that is not ExampleGen output, before any pipeline runs."""
    for name in SPLIT_INDEX:
        if not has_split(examples_dir, name):
            raise DataError(f"{examples_dir}: no {name}.parquet (run ExampleGen first: recflow.examplegen)")
    if not (examples_dir / "items.parquet").is_file():
        raise DataError(f"{examples_dir}: no items.parquet (run ExampleGen first: recflow.examplegen)")


# ------------------------------------------------------------------------------------------------ 1. facts


@dataclass(frozen=True)
class SplitFacts:
    """What the facts pipeline learns about one split."""

    name: str
    rows: int
    facts: Any  # transform.LogFacts
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    #: Train only: each logged (non-missing) price and how often it occurs, in the file's dtype.
    price_counts: pd.Series | None


def _sort_keys(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    return ts, (frame["event_id"].astype(str).to_numpy() if "event_id" in frame.columns else None)


def _check_order(path: str, offset: int, frame: pd.DataFrame, previous: tuple[int, str | None] | None) -> None:
    """Raise DataError at the first row out of ``(timestamp, event_id)`` order (``previous``: the row before)."""
    ts, ids = _sort_keys(frame)
    if previous is not None:
        ts = np.concatenate([[previous[0]], ts])
        ids = None if ids is None else np.concatenate([[previous[1]], ids])
        offset -= 1
    later_ts, same_ts = ts[1:] > ts[:-1], ts[1:] == ts[:-1]
    ok = later_ts | (same_ts & (ids[1:] >= ids[:-1] if ids is not None else True))
    if not ok.all():
        row = offset + 1 + int(np.argmin(ok))
        raise DataError(f"{path}: row {row}: field timestamp: the split is not in (timestamp, event_id) order "
                        "as ExampleGen writes it (transform.prepare_engine beam needs ExampleGen's output; the "
                        "pandas engine sorts in memory)")


def split_facts(task: tuple[str, list[str]], batch_rows: int) -> SplitFacts:
    """Read one split's files in order and reduce them to its :class:`SplitFacts`."""
    from recflow.features.transform import log_facts

    name, files = task
    facts, rows, first, last, previous = None, 0, None, None, None
    counts: list[pd.Series] = []
    for path in files:
        offset = 0
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
            for batch in batches:
                frame = batch.to_pandas()
                if frame.empty:
                    continue
                _check_order(path, offset, frame, previous)
                part = log_facts(frame)
                facts = part if facts is None else facts.merge(part)
                first = frame["timestamp"].iloc[0] if first is None else first
                last = frame["timestamp"].iloc[-1]
                ts, ids = _sort_keys(frame.iloc[-1:])
                previous = (int(ts[0]), None if ids is None else str(ids[0]))
                if name == "train" and "price" in frame.columns:
                    counts.append(frame["price"].dropna().value_counts(sort=False))
                rows += len(frame)
                offset += len(frame)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the {name} split: {exc}") from None
        if facts is None:  # an empty file still gives its columns
            facts = log_facts(pq.read_schema(path).empty_table().to_pandas())
    price_counts = None
    if counts:
        merged = pd.concat(counts)
        price_counts = merged.groupby(level=0, sort=True).sum()
    return SplitFacts(name=name, rows=rows, facts=facts, first=first, last=last, price_counts=price_counts)


def user_fields(path: str, batch_rows: int) -> frozenset[str]:
    """The users table's columns that hold at least one value."""
    from recflow.features.transform import frame_fields

    fields: frozenset[str] = frozenset()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        fields |= frame_fields(batch.to_pandas()) or frozenset()
    return fields


def median_of_counts(counts: pd.Series) -> float:
    """``Series.median()`` of the values that ``counts`` counts (index: the values in ascending order)."""
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    ends = np.cumsum(counts.to_numpy())
    values = counts.index.to_numpy()

    def kth(k: int) -> Any:
        return values[int(np.searchsorted(ends, k, side="right"))]

    middle = [kth(total // 2)] if total % 2 else [kth(total // 2 - 1), kth(total // 2)]
    return float(pd.Series(middle, dtype=values.dtype).median())


def _save(value: Any, path: str) -> str:
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(pickle.dumps(value))
    return path


# ------------------------------------------------------------------------------------------------- 2. rows


@dataclass(frozen=True)
class ShardContext:
    """The whole log's decisions each shard computes under."""

    spec: dict[str, Any]
    fills: dict[str, Any]
    plan: behaviour.BehaviourPlan
    state_plan: behaviour.BehaviourPlan
    by_request: bool
    state_at: pd.Timestamp
    items_path: str
    users_path: str | None
    arrow_schema: pa.Schema
    batch_size: int
    out_dir: str
    num_shards: int


def read_rows(task: tuple[int, list[str]], offsets: dict[int, int], num_shards: int, batch_rows: int,
              spill_dir: str) -> Iterator[tuple[int, tuple[int, str]]]:
    """One split's (or the users table's) rows cut into user shards; events get their ``row_id``.

    Each (batch, shard) piece is written to a Parquet file under ``spill_dir`` and only its path travels:
    (shard, (input index, path)). The runner then groups paths, not rows, so what it buffers between the
    stages does not grow with the events (the in-memory DirectRunner keeps a grouped PCollection whole)."""
    index, files = task
    position = offsets.get(index, 0)
    for file_no, path in enumerate(files):
        for batch_no, batch in enumerate(pq.ParquetFile(path).iter_batches(batch_size=batch_rows)):
            table = pa.Table.from_batches([batch])
            if index != USERS_INDEX:
                table = table.append_column("row_id", pa.array(np.arange(position, position + len(table),
                                                                         dtype=np.int64)))
                position += len(table)
            shards = shard_of(pd.Series(table.column("user_id").to_pylist(), dtype=object), num_shards)
            for shard in np.unique(shards):
                piece = Path(spill_dir) / f"{int(shard):05d}" / f"{index}-{file_no:05d}-{batch_no:06d}.parquet"
                piece.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(piece) as tmp:
                    pq.write_table(table.filter(pa.array(shards == shard)), tmp)
                yield int(shard), (index, str(piece))


def _empty_state(spec: dict[str, Any]) -> pd.DataFrame:
    columns: dict[str, Any] = {"user_id": pd.Series([], dtype=object)}
    columns.update({name: pd.Series([], dtype=np.float64) for name in spec["behaviour_features"]})
    if spec["recent_items"]:
        columns["recent_items"] = pd.Series([], dtype=object)
    return pd.DataFrame(columns)


def shard_rows(pieces: Iterable[tuple[int, pa.Table | str]], ctx: ShardContext
               ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One shard's events (in time order, with their split index) and users (None without a users table);
    a piece is a table or the path of one (:func:`read_rows`)."""
    events_parts: list[pa.Table] = []
    users_parts: list[pa.Table] = []
    for index, piece in pieces:
        table = pq.read_table(piece) if isinstance(piece, str) else piece
        (users_parts if index == USERS_INDEX else events_parts).append(
            table if index == USERS_INDEX else table.append_column(SPLIT_COL, pa.array(np.full(len(table), index))))
    events = (pa.concat_tables(events_parts, promote_options="default").to_pandas() if events_parts
              else pd.DataFrame())
    if not events.empty:
        events = events.sort_values("row_id", kind="stable").reset_index(drop=True)
    users = None
    if ctx.users_path is not None:
        users = (pa.concat_tables(users_parts, promote_options="default") if users_parts
                 else pq.read_schema(ctx.users_path).empty_table()).to_pandas()
    return events, users


def prepare_shard(keyed: tuple[int, Iterable[tuple[int, pa.Table | str]]], ctx: ShardContext) -> int:
    """Compute and write one user shard's raw rows, user-state rows and latest item prices; return its events."""
    from recflow.features import transform as tf_

    shard, pieces = keyed
    events, users = shard_rows(pieces, ctx)
    spec, out = ctx.spec, Path(ctx.out_dir)
    user_state = _empty_state(spec)
    if not events.empty:
        events["clicked"] = tf_.label_impressions(events, by_request=ctx.by_request)
        events["purchased"] = tf_.label_impressions(events, "purchase", by_request=ctx.by_request)
        if spec["recent_items"]:
            events["recent_items"] = behaviour.recent_items(events, spec["recent_items"])
        events = behaviour.add_behaviour_features(events, plan=ctx.plan)
        items = pd.read_parquet(ctx.items_path)
        for name, index in SPLIT_INDEX.items():
            raw = tf_.build_raw_frame(events[events[SPLIT_COL] == index], items, users, spec, ctx.fills)
            if raw.empty:
                continue
            batches = tf_.to_record_batches(raw, spec, ctx.batch_size, ctx.arrow_schema)
            tf_._stage_split(batches, ctx.arrow_schema, out / "raw" / name / f"part-{shard:05d}.parquet")
        history = events.drop(columns=[*spec["behaviour_features"],
                                       *(["recent_items"] if spec["recent_items"] else [])])
        if bool((history["timestamp"] < ctx.state_at).any()):
            user_state = behaviour.user_state_at(history, ctx.state_at, recent_n=spec["recent_items"],
                                                 plan=ctx.state_plan)
        latest = pd.DataFrame({"item_id": pd.unique(events["item_id"].astype(str))})
        if "price" in events.columns:
            priced = events.dropna(subset=["price"])
            last = priced.assign(item_id=priced["item_id"].astype(str)).groupby("item_id")[["row_id", "price"]].last()
            latest = latest.join(last, on="item_id")
        _write_frame(latest, out / "latest" / f"part-{shard:05d}.parquet")
    if spec["user_features"] and users is not None:
        user_state = tf_.with_user_attributes(user_state, users, spec)
    if len(user_state):
        _write_frame(user_state, out / "user_state" / f"part-{shard:05d}.parquet")
    return len(events)


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


# ---------------------------------------------------------------------------------------------- the launcher


@dataclass(frozen=True)
class PreparedBeam:
    """What the beam engine leaves for tf.Transform: the spec and each split's raw-row files (a glob)."""

    spec: dict[str, Any]
    raw_patterns: dict[str, str]


def _run(settings: Any, beam_pipeline_args: Sequence[str] | None, build: Any) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from recflow.examplegen_beam import _unwrap_data_error

    try:
        with beam_args(settings.beam_runner, list(beam_pipeline_args or []),
                       direct_num_workers=settings.direct_num_workers,
                       direct_running_mode=settings.direct_running_mode, dask_address=settings.dask_address,
                       dask_workers=settings.dask_workers) as args, \
                beam.Pipeline(options=PipelineOptions(args)) as pipeline:
            build(pipeline)
    except Exception as exc:
        found = _unwrap_data_error(exc)
        if found is not None:
            raise found from None
        raise


def _check_time_order(facts: dict[str, SplitFacts], examples_dir: Path) -> None:
    filled = [f for f in facts.values() if f.rows]
    for earlier, later in zip(filled, filled[1:], strict=False):
        if earlier.last is None or later.first is None or not earlier.last < later.first:
            raise DataError(f"{examples_dir}: the {later.name} split (from {later.first}) does not start after the "
                            f"{earlier.name} split (until {earlier.last}): not ExampleGen's time split")


def prepare_features_beam(examples_dir: Path, config: Any, out_dir: Path, work_dir: Path,
                          beam_pipeline_args: Sequence[str] | None = None, batch_rows: int = 65_536) -> PreparedBeam:
    """Run both pipelines on ExampleGen's ``examples_dir``; write ``candidates.parquet`` and
    ``user_state.parquet`` to ``out_dir``, the raw rows under ``work_dir``; return the spec and the raw files."""
    import apache_beam as beam

    from recflow.features import transform as tf_

    examples_dir, work_dir = Path(examples_dir), Path(work_dir)
    check_examples(examples_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files = {name: split_files(examples_dir, name) for name in SPLIT_INDEX}
    items_path = str(examples_dir / "items.parquet")
    users_file = examples_dir / "users.parquet"
    users_path = str(users_file) if users_file.is_file() else None
    facts_dir = work_dir / "facts"
    facts_dir.mkdir(exist_ok=True)

    def build_facts(p: Any) -> None:
        saved = [p | "Splits" >> beam.Create(list(files.items()))
                 | "SplitFacts" >> beam.Map(split_facts, batch_rows)
                 | "SaveFacts" >> beam.Map(lambda f: _save(f, str(facts_dir / f"{f.name}.pkl")))]
        if users_path is not None:
            saved.append(p | "Users" >> beam.Create([users_path]) | "UserFields" >> beam.Map(user_fields, batch_rows)
                         | "SaveUserFields" >> beam.Map(_save, str(facts_dir / "users.pkl")))
        wait_for_all(p, *saved)  # every branch runs on every runner (Beam's Dask runner computes the last only)

    _run(config, beam_pipeline_args, build_facts)
    facts: dict[str, SplitFacts] = {name: pickle.loads((facts_dir / f"{name}.pkl").read_bytes())
                                    for name in SPLIT_INDEX}
    users_fields = pickle.loads((facts_dir / "users.pkl").read_bytes()) if users_path is not None else None
    _check_time_order(facts, examples_dir)

    items = pd.read_parquet(items_path)  # the catalog (<= 10^6 rows): the launcher's largest table
    everything = facts["train"].facts.merge(facts["eval"].facts).merge(facts["test"].facts)
    spec = tf_.describe_from_facts(everything, items, users_fields, config.recent_items)
    fills = fill_values(facts["train"], items, spec)
    sizes = {name: f.rows for name, f in facts.items()}
    spec["fill_values"] = fills
    spec["num_oov_buckets"] = config.num_oov_buckets
    spec["rows"] = sizes
    if sizes["test"]:
        state_at, earlier = facts["test"].first, facts["train"].facts.merge(facts["eval"].facts)
    else:
        state_at = max(f.last for f in facts.values() if f.last is not None) + pd.Timedelta(1, "s")
        earlier = everything
    spec["user_state_at"] = pd.Timestamp(state_at).isoformat()
    spec["no_history_state"] = behaviour.no_history_state(spec["behaviour_features"])

    cols = list(spec["behaviour_features"])
    offsets = {SPLIT_INDEX["train"]: 0, SPLIT_INDEX["eval"]: sizes["train"],
               SPLIT_INDEX["test"]: sizes["train"] + sizes["eval"]}
    arrow_schema = tf_.raw_tfxio(spec).ArrowSchema()
    ctx = ShardContext(spec=spec, fills=fills, plan=everything.behaviour_plan(cols),
                       state_plan=earlier.behaviour_plan(cols), by_request=everything.impression_requests,
                       state_at=state_at, items_path=items_path, users_path=users_path, arrow_schema=arrow_schema,
                       batch_size=config.batch_size, out_dir=str(work_dir),
                       num_shards=shard_count(sum(sizes.values()), config.prepare_shards,
                                              config.prepare_rows_per_shard))
    tasks = [(SPLIT_INDEX[name], paths) for name, paths in files.items()]
    if users_path is not None:
        tasks.append((USERS_INDEX, [users_path]))

    def build_rows(p: Any) -> None:
        _ = (p | "Inputs" >> beam.Create(tasks)
             | "ReadKeyed" >> beam.FlatMap(read_rows, offsets, ctx.num_shards, batch_rows, str(work_dir / "spill"))
             | "GroupShards" >> beam.GroupByKey()
             | "PrepareShards" >> beam.Map(prepare_shard, ctx))

    _run(config, beam_pipeline_args, build_rows)
    shutil.rmtree(work_dir / "spill", ignore_errors=True)
    patterns = raw_patterns(work_dir, arrow_schema)
    write_user_state(sorted((work_dir / "user_state").glob("part-*.parquet")), spec,
                     Path(out_dir) / bundle_layout.USER_STATE_FILE)
    candidates = candidates_from(items, sorted((work_dir / "latest").glob("part-*.parquet")), spec, everything)
    tf_.coerce_raw(candidates, spec, fills).to_parquet(Path(out_dir) / bundle_layout.CANDIDATES_FILE, index=False)
    return PreparedBeam(spec=spec, raw_patterns=patterns)


def raw_patterns(work_dir: Path, arrow_schema: pa.Schema) -> dict[str, str]:
    """Each split's raw-row files (a glob); a split no shard had rows of gets one empty file."""
    from recflow.features import transform as tf_

    patterns = {}
    for name in SPLIT_INDEX:
        directory = work_dir / "raw" / name
        if not any(directory.glob("part-*.parquet")):
            tf_._stage_split([], arrow_schema, directory / "part-empty.parquet")
        patterns[name] = str(directory / "part-*.parquet")
    return patterns


def fill_values(train: SplitFacts, items: pd.DataFrame, spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`recflow.features.transform.fill_values` from the train split's price counts."""
    from recflow.features import transform as tf_

    has_prices = train.price_counts is not None and bool(train.price_counts.sum() > 0)
    median = median_of_counts(train.price_counts) if train.price_counts is not None and has_prices else None
    return tf_.fill_values_from(median, items, spec)


def write_user_state(parts: list[Path], spec: dict[str, Any], path: Path) -> None:
    """The shards' user-state rows as one file sorted by user id (as the pandas engine writes it)."""
    tables = [pq.read_table(p) for p in parts]
    if not tables:
        _empty_state(spec).to_parquet(path, index=False)
        return
    table = pa.concat_tables(tables, promote_options="default")
    table = table.sort_by([("user_id", "ascending")])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def candidates_from(items: pd.DataFrame, parts: list[Path], spec: dict[str, Any], facts: Any) -> pd.DataFrame:
    """:func:`recflow.features.transform.build_candidates` from the shards' item ids and latest prices."""
    from recflow.features import transform as tf_

    # The shards' parts are folded one at a time (their total grows with the shards): every item id seen and,
    # per priced item, the price of its latest event (highest row_id; row ids are unique).
    seen: set[str] = set()
    best: pd.DataFrame | None = None
    for part in parts:
        frame = pd.read_parquet(part)
        seen.update(frame["item_id"].astype(str))
        if "price" in facts.with_values and "row_id" in frame.columns:
            priced = frame.dropna(subset=["row_id"])[["item_id", "row_id", "price"]]
            both = priced if best is None else pd.concat([best, priced], ignore_index=True)
            best = both.sort_values("row_id", kind="stable").groupby("item_id", sort=False).tail(1)
    latest = None
    if "price" in facts.with_values and best is not None:
        latest = best.set_index("item_id")["price"]
    return tf_.candidates_frame(items, pd.Series(sorted(seen), dtype=object), latest, spec)
