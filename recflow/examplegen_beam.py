"""ExampleGen's beam engine: the same validation, time split, catalog and statistics as the pandas engine
(:mod:`recflow.examplegen`), as an Apache Beam pipeline whose launcher reads file footers and headers only.

The pipeline reads the source's files in batches (a single ``events.parquet``/``events.csv`` or an ``events/``
directory of shards, and the same for items and users), and:

* validates each batch with :func:`recflow.validation.check_table` (the pandas engine's per-row rules). The one
  cross-row rule, a repeated unique id (``event_id``, ``item_id``, ``user_id``), is decided over the whole table:
  the ids are grouped by a hash of the id (GroupByKey), and every occurrence after the first (in row order) is
  a duplicate. Rows are numbered as the pandas engine numbers them (a shard directory's files in name order).
  The quarantine and a summary (rows, bad rows, reasons, the first issues) are written from the pipeline; the
  launcher raises the same ValidationFailed as the pandas engine from that summary;
* computes the cut points with Beam's quantile sketch (:class:`HigherRanks`, the accumulator of
  ``ApproximateQuantilesCombineFn`` fed whole batches with ``input_batched``), picking the element of rank
  ``ceil(q * (n - 1))``: pandas' ``quantile(q, interpolation="higher")``. Exact while the sketch holds every
  timestamp at weight 1 (measured at 1.16 million events with the default epsilon), else within ``epsilon * n``
  ranks;
* writes each split as ``<split>.parquet/part-SSSSS.parquet`` shards, each a time range of the split (the
  ranges are quantiles too) sorted by timestamp, event id and row, so the shards in name order are the pandas
  engine's file row for row; ``items.parquet`` (given, or the latest logged price per item: CombinePerKey),
  ``users.parquet`` and ``stats.json`` (exact distinct users/items per split: Distinct then Count).

Everything goes to a staged directory renamed into place by :func:`recflow.examplegen.run_example_gen`.
"""

from __future__ import annotations

import functools
import json
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recflow import schema
from recflow.errors import ConfigError, DataError, ValidationFailed
from recflow.features.beam_runner import (
    DirectRunningMode,
    beam_args,
    check_shared_files,
    runner_args,
    shard_count,
    wait_for_all,
)
from recflow.io import atomic_path, to_arrow
from recflow.validation import checks as vchecks
from recflow.validation.reading import TableFiles, inspect_table, iter_raw_batches
from recflow.validation.report import TableReport, ValidationReport, quarantine_block, quarantine_table

#: Composite row key: file index in the high bits, row within the file in the low ones (sorts in table order).
_ROW_BITS = 40
_KEY = "_recflow_key"
_SPLIT_IDS = {"train": 0, "eval": 1, "test": 2}
SUMMARY_NAME = ".validation_summary.json"


@dataclass(frozen=True)
class BeamSettings:
    """The runner the beam engine uses: the ``transform`` section's runner settings (one place for both data
    steps' Beam runner), plus ``beam_pipeline_args`` appended after them like Transform's."""

    runner: str = "DirectRunner"
    direct_num_workers: int = 1
    direct_running_mode: DirectRunningMode = "in_memory"
    dask_address: str | None = None
    dask_workers: int = 2
    beam_pipeline_args: tuple[str, ...] = ()
    shared_work_dir: bool = False

    @classmethod
    def from_transform(cls, transform: Any, beam_pipeline_args: Sequence[str] | None = None) -> BeamSettings:
        """The settings of a ``TransformConfig`` (any object with its runner fields)."""
        return cls(runner=transform.beam_runner, direct_num_workers=transform.direct_num_workers,
                   direct_running_mode=transform.direct_running_mode, dask_address=transform.dask_address,
                   dask_workers=transform.dask_workers, beam_pipeline_args=tuple(beam_pipeline_args or ()),
                   shared_work_dir=getattr(transform, "shared_work_dir", False))

    def args(self) -> list[str]:
        """The Beam options these settings give (before a Dask LocalCluster exists)."""
        return runner_args(self.runner, self.direct_num_workers, self.direct_running_mode,
                           self.dask_address) + list(self.beam_pipeline_args)


# ---------------------------------------------------------------------------------------------------- quantiles


def higher_rank(q: float, n: int) -> int:
    """The 0-based rank pandas' ``quantile(q, interpolation="higher")`` takes from ``n`` sorted values."""
    return min(int(np.ceil(q * (n - 1))), n - 1)


class HigherRanks:
    """A CombineFn: the values of rank ``ceil(q * (n - 1))`` for each q, from Beam's quantile sketch.

    It is ``ApproximateQuantilesCombineFn`` (batched input) with another output step: Beam's picks evenly
    spaced ranks ``floor((i * n - 1) / (k - 1))``, which cannot express pandas' "higher" rank of an arbitrary q,
    so the sketch's weighted buffers are read here and the element whose cumulative weight first exceeds the
    rank is taken. With every buffer of weight 1 (the sketch did not need to collapse) that is the exact value.
    """

    def __init__(self, quantiles: Sequence[float], epsilon: float,
                 more: Callable[[int], list[float]] | None = None) -> None:
        from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

        self.quantiles = list(quantiles)
        self.more = more  # further quantiles that depend on the number of values (appended to ``values``)
        self.inner = ApproximateQuantilesCombineFn.create(num_quantiles=2, epsilon=epsilon, input_batched=True)

    def as_combine_fn(self) -> Any:
        import apache_beam as beam

        outer = self

        class _Fn(beam.CombineFn):
            def create_accumulator(self) -> Any:
                return outer.inner.create_accumulator()

            def add_input(self, acc: Any, batch: list[int]) -> Any:
                return outer.inner.add_input(acc, batch)

            def merge_accumulators(self, accs: Iterable[Any]) -> Any:
                return outer.inner.merge_accumulators(accs)

            def compact(self, acc: Any) -> Any:
                return outer.inner.compact(acc)

            def extract_output(self, acc: Any) -> dict[str, Any]:
                return outer.extract(acc)

        return _Fn()

    def extract(self, acc: Any) -> dict[str, Any]:
        if acc.is_empty():
            return {"n": 0, "values": [None] * len(self.quantiles), "exact": True}
        acc.finalize()
        # numpy arrays, not a list of (value, weight) tuples: the sketch holds up to num_buffers x buffer_size
        # values (1.7 million at epsilon 1e-4), and the tuples cost about 5x the memory.
        values = np.fromiter((v for buffer in acc.buffers for v, _ in buffer), dtype=np.int64)
        weights = np.fromiter((w for buffer in acc.buffers for _, w in buffer), dtype=np.int64, count=len(values))
        order = np.lexsort((weights, values))
        values, weights = values[order], weights[order]
        cumulative = np.cumsum(weights)
        n = int(cumulative[-1])
        quantiles = [*self.quantiles, *(self.more(n) if self.more is not None else [])]
        picked = [int(values[min(int(np.searchsorted(cumulative, higher_rank(q, n), side="right")), len(values) - 1)])
                  for q in quantiles]
        return {"n": n, "values": picked, "exact": bool((weights == 1).all())}


# ------------------------------------------------------------------------------------------------ reading, checks


def _ms(timestamps: pd.Series) -> np.ndarray:
    """UTC timestamps as int64 milliseconds since the epoch."""
    return pd.DatetimeIndex(timestamps).as_unit("ms").asi8


def _key(file_index: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(file_index) << np.int64(_ROW_BITS)) + rows.astype(np.int64)


def _shard_of(ids: pd.Series, buckets: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(str(v).encode("utf-8")) % buckets for v in ids), dtype=np.int64,
                       count=len(ids))


def _unique_field(kind: schema.TableKind) -> str | None:
    return next((f.name for f in schema.fields(kind) if f.unique), None)


def _spill(frame: pd.DataFrame, path: Path) -> str:
    """Write ``frame`` (pickled: dtypes exactly as they are) for a later stage to read; return the path.

    The events travel between the pipeline's stages as such files, not as rows, so what the runner buffers at a
    GroupByKey or for a side input's wait does not grow with the events (the in-memory DirectRunner keeps those
    PCollections whole). A runner whose workers are other machines needs ``path`` on a shared file system."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_pickle(tmp)
    return str(path)


def _events_frame(piece: pd.DataFrame | str) -> pd.DataFrame:
    """A valid events batch, given as a frame or the path :func:`_spill` wrote it to."""
    return cast(pd.DataFrame, pd.read_pickle(piece)) if isinstance(piece, str) else piece


def estimated_rows(table: TableFiles) -> int:
    """A table's rows from its Parquet footers, or for CSV its bytes / 50 (no data is read)."""
    if table.format == "parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in table.files)
    return sum(f.stat().st_size for f in table.files) // 50


def read_ids(task: tuple[str, int, str, str], batch_rows: int, buckets: int, spill_dir: str
             ) -> Iterator[tuple[int, pd.DataFrame | str]]:
    """(hash bucket, [id, key, value]) of every row with an id, for the whole-table duplicate rule; with
    ``spill_dir`` each piece is a file's path (:func:`_spill`)."""
    kind, file_index, path, fmt = task
    field = _unique_field(kind)  # type: ignore[arg-type]
    assert field is not None
    for start, raw in iter_raw_batches(Path(path), fmt, batch_rows, columns=[field]):  # type: ignore[arg-type]
        if field not in raw.columns:
            return
        col = raw[field]
        typed = vchecks._coerce_string(col, vchecks._present(col))
        has = typed.notna().to_numpy()
        if not has.any():
            continue
        piece = pd.DataFrame({"id": typed[has].to_numpy(), _KEY: _key(file_index, np.flatnonzero(has) + start),
                              "value": vchecks.values_as_text(col[has]).to_numpy()})
        shards = _shard_of(piece["id"], buckets)
        for shard in np.unique(shards):
            part = piece[shards == shard]
            yield int(shard), (_spill(part, Path(spill_dir) / "ids" / kind / f"{shard:05d}"
                                      / f"{file_index:05d}-{start:012d}.pkl") if spill_dir else part)


def find_duplicates(keyed: tuple[int, Iterable[pd.DataFrame | str]]) -> pd.DataFrame:
    """Rows whose id an earlier row (lower key) already has: [key, value] (the first occurrence is kept)."""
    _, pieces = keyed
    ids = pd.concat([_events_frame(p) for p in pieces], ignore_index=True).sort_values(_KEY, kind="stable")
    dup = ids[ids["id"].duplicated(keep="first")]
    return dup[[_KEY, "value"]].reset_index(drop=True)


def validate_batch(task: tuple[str, int, str, str], batch_rows: int, table_path: str, config: Any,
                   now: pd.Timestamp, catalog_name: str, catalog: list[Any] | None, duplicates: list[pd.DataFrame],
                   spill_dir: str | None = None) -> Iterator[tuple[str, Any]]:
    """Check one file's batches; emit ("valid", (kind, frame with key)), ("issues", (kind, quarantine block
    with key)) and ("rows", (kind, file index, rows)). With ``spill_dir`` the valid events are written there
    and their path comes instead of the frame (:func:`_spill`)."""
    kind, file_index, path, fmt = task
    field = _unique_field(kind)  # type: ignore[arg-type]
    dup_keys = np.concatenate([d[_KEY].to_numpy() for d in duplicates]) if duplicates else np.empty(0, np.int64)
    dup_values = pd.concat(duplicates, ignore_index=True) if duplicates else None
    ids = None
    if kind == "events" and catalog is not None:
        ids = catalog
    for start, raw in iter_raw_batches(Path(path), fmt, batch_rows):  # type: ignore[arg-type]
        keys = _key(file_index, np.arange(start, start + len(raw)))
        yield "rows", (kind, file_index, len(raw))
        chk = vchecks.check_table(raw, cast(schema.TableKind, kind), config, item_ids=ids,
                                  catalog_name=catalog_name, now=now)
        issues = chk.issues
        if field is not None:
            issues = issues[~((issues["field"] == field) & (issues["reason"] == vchecks.Reason.DUPLICATE.value))]
            mine = np.isin(keys, dup_keys)
            if mine.any():
                local = np.flatnonzero(mine)
                values = dup_values.set_index(_KEY).loc[keys[local], "value"].to_numpy()  # type: ignore[union-attr]
                extra = pd.DataFrame({"row": local.astype(np.int64), "field": field,
                                      "reason": vchecks.Reason.DUPLICATE.value,
                                      "detail": "repeats an earlier row's value (the first occurrence is kept)",
                                      "value": values})
                issues = pd.concat([issues, extra], ignore_index=True).sort_values(["row", "field"], kind="stable",
                                                                                   ignore_index=True)
        bad = np.unique(issues["row"].to_numpy(dtype=np.int64))
        good = np.ones(len(raw), dtype=bool)
        good[chk.bad_rows] = False
        valid = chk.valid
        valid[_KEY] = keys[good]
        still = ~np.isin(np.flatnonzero(good), bad)
        if not still.all():
            valid = valid[still].reset_index(drop=True)
        if spill_dir is not None and kind == "events":
            yield "valid", (kind, _spill(valid, Path(spill_dir) / "events" / f"{file_index:05d}-{start:012d}.pkl"))
        else:
            yield "valid", (kind, valid)
        if len(issues):
            issues.insert(0, "file", table_path)
            issues.insert(0, "table", kind)
            block = quarantine_block(issues, raw)
            block[_KEY] = keys[issues["row"].to_numpy(dtype=np.int64)]
            yield "issues", (kind, block)


def catalog_ids(task: tuple[str, int, str, str], batch_rows: int) -> Iterator[str]:
    """The item ids of one catalog file, as :func:`recflow.validation.catalog_item_ids` takes them."""
    from recflow.validation import catalog_item_ids

    _, _, path, fmt = task
    for _, raw in iter_raw_batches(Path(path), fmt, batch_rows, columns=["item_id"]):  # type: ignore[arg-type]
        yield from catalog_item_ids(raw).tolist()


# ------------------------------------------------------------------------------------------- quarantine, summary


def write_quarantine_and_summary(blocks: list[tuple[str, pd.DataFrame]], counts: list[tuple[str, int, int]],
                                 tables: dict[str, dict[str, Any]], quarantine: str, summary: str,
                                 examples: int = 5) -> str:
    """Number the issues' rows as the pandas engine does and write the quarantine and the validation summary."""
    rows_of: dict[tuple[str, int], int] = {}
    for kind, file_index, n in counts:
        rows_of[(kind, file_index)] = rows_of.get((kind, file_index), 0) + n
    by_kind: dict[str, list[pd.DataFrame]] = {}
    for kind, block in blocks:
        by_kind.setdefault(kind, []).append(block)
    ordered: dict[str, pd.DataFrame] = {}
    report: dict[str, Any] = {}
    for kind in schema.TABLE_KINDS:
        if kind not in tables:
            continue
        n_files = tables[kind]["files"]
        sizes = [rows_of.get((kind, i), 0) for i in range(n_files)]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        frame = pd.concat(by_kind[kind], ignore_index=True) if kind in by_kind else None
        if frame is not None:
            file_index = (frame[_KEY].to_numpy() >> _ROW_BITS).astype(np.int64)
            local = frame[_KEY].to_numpy() & ((1 << _ROW_BITS) - 1)
            frame["row"] = offsets[file_index] + local
            frame = frame.sort_values(["row", "field"], kind="stable", ignore_index=True).drop(columns=[_KEY])
            ordered[kind] = frame
        issues = frame if frame is not None else pd.DataFrame(columns=["row", "field", "reason"])
        counted = issues.groupby(["field", "reason"], sort=False).size().sort_values(ascending=False)
        report[kind] = {
            "rows": int(offsets[-1]),
            "bad_rows": int(issues["row"].nunique()) if len(issues) else 0,
            "reason_counts": [[f, r, int(c)] for (f, r), c in counted.items()],
            "examples": issues.head(examples)[["row", "field", "reason", "detail", "value"]].astype(
                {"row": "int64"}).to_dict("records") if len(issues) else [],
        }
    with atomic_path(Path(quarantine)) as tmp:
        pq.write_table(quarantine_table(list(ordered.values())), tmp, compression="zstd")
    Path(summary).write_text(json.dumps(report, default=str), encoding="utf-8")
    return summary


def validation_report(summary_path: Path, tables: dict[schema.TableKind, TableFiles], max_bad_share: float,
                      quarantine: Path) -> ValidationReport:
    """The pandas engine's :class:`ValidationReport` (its gate and message) from the pipeline's summary."""
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    reports: dict[str, TableReport] = {}
    examples: list[dict[str, Any]] = []
    for kind in (k for k in schema.TABLE_KINDS if k in summary):
        s, t = summary[kind], tables[kind]
        reports[kind] = TableReport(kind=kind, path=t.path, format=t.format, rows=s["rows"],
                                    bad_rows=s["bad_rows"],
                                    reason_counts={(f, r): c for f, r, c in s["reason_counts"]})
        examples += [{"table": kind, "file": str(t.path), **e} for e in s["examples"]]
    issues = pd.DataFrame(examples, columns=["table", "file", "row", "field", "reason", "detail", "value"])
    return ValidationReport(tables=reports, max_bad_share=max_bad_share, quarantine_path=quarantine, valid={},
                            issues=issues)


# ---------------------------------------------------------------------------------------- split, write, statistics


def shard_quantiles(q1: float, q2: float, min_shards: int, rows_per_shard: int, n: int) -> list[float]:
    """The shards' time-range boundaries, as quantiles of the ``n`` events: inside each split (between its cut
    quantiles) evenly spaced, ``min_shards`` ranges, more when a range would average more than ``rows_per_shard``
    events (so one range, which one worker holds while writing it, does not grow with the log)."""
    out: list[float] = []
    for lo, hi in ((0.0, q1), (q1, q2), (q2, 1.0)):
        if hi > lo:
            k = shard_count((hi - lo) * n, min_shards, rows_per_shard)
            out += [lo + j * (hi - lo) / k for j in range(1, k)]
    return out


def split_and_range(frame: pd.DataFrame, cuts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Each event's split (train before the first cut, eval up to the second, test after) and time range."""
    ts = _ms(frame["timestamp"])
    split = np.zeros(len(frame), dtype=np.int64)
    if cuts["cut1"] is not None:
        split += ts >= cuts["cut1"]
    if cuts["cut2"] is not None:
        split += ts >= cuts["cut2"]
    else:
        split = np.minimum(split, 1)
    bucket = np.searchsorted(np.asarray(cuts["bounds"], dtype=np.int64), ts, side="right")
    return split, bucket


def ranges_of(item: tuple[str, str], cuts: dict[str, Any]) -> Iterator[tuple[tuple[int, int], str]]:
    """(split, time range) -> the spilled batch's path, once for each range the batch has events of."""
    frame = _events_frame(item[1])
    if not len(frame):
        return
    split, bucket = split_and_range(frame, cuts)
    for s, b in sorted({(int(a), int(c)) for a, c in zip(split, bucket, strict=True)}):
        yield (s, b), item[1]


def _range_rows(piece: pd.DataFrame | str, key: tuple[int, int], cuts: dict[str, Any] | None) -> pd.DataFrame:
    """A range's rows of one piece: a frame of them, or a spilled batch (filtered here with ``cuts``)."""
    if not isinstance(piece, str):
        return piece
    assert cuts is not None
    frame = _events_frame(piece)
    split, bucket = split_and_range(frame, cuts)
    return frame[(split == key[0]) & (bucket == key[1])]


def write_shard(keyed: tuple[tuple[int, int], Iterable[pd.DataFrame | str]], out_dir: str,
                cuts: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """Write one time range of one split, in the pandas engine's order; return its statistics' partial sums.

    The pieces are frames of the range's rows or paths of spilled batches (then ``cuts`` picks the rows)."""
    (split, bucket), pieces = keyed
    frame = pd.concat([_range_rows(p, (split, bucket), cuts) for p in pieces],
                      ignore_index=True).sort_values(_KEY, kind="stable")
    frame = frame.sort_values(["timestamp", *(c for c in ("event_id",) if c in frame.columns)],
                              kind="stable").drop(columns=[_KEY]).reset_index(drop=True)
    name = next(n for n, i in _SPLIT_IDS.items() if i == split)
    path = Path(out_dir) / f"{name}.parquet" / f"part-{bucket:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(to_arrow(frame, "events"), tmp, compression="zstd")
    return split, _partial(frame)


def _partial(frame: pd.DataFrame) -> dict[str, Any]:
    ts = frame["timestamp"]
    return {"rows": len(frame), "event_types": {str(k): int(v) for k, v in frame["event_type"].value_counts().items()},
            "time_min": ts.min() if len(frame) else None, "time_max": ts.max() if len(frame) else None,
            "present": [c for c in frame.columns if frame[c].notna().any()]}


def merge_partials(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": 0, "event_types": {}, "time_min": None, "time_max": None, "present": []}
    present: set[str] = set()
    for p in parts:
        out["rows"] += p["rows"]
        for k, v in p["event_types"].items():
            out["event_types"][k] = out["event_types"].get(k, 0) + v
        if p["time_min"] is not None:
            out["time_min"] = p["time_min"] if out["time_min"] is None else min(out["time_min"], p["time_min"])
            out["time_max"] = p["time_max"] if out["time_max"] is None else max(out["time_max"], p["time_max"])
        present.update(p["present"])
    out["present"] = sorted(present)
    return out


def distinct_ids(item: tuple[str, pd.DataFrame | str], cuts: dict[str, Any]) -> Iterator[tuple[str, list[Any]]]:
    """(split:field, the batch's distinct ids) and (all:field, ...) of a valid batch (:class:`CountDistinct`
    makes them distinct overall)."""
    frame = _events_frame(item[1])
    if not len(frame):
        return
    split, _ = split_and_range(frame, cuts)
    for field in ("user_id", "item_id"):
        yield f"all:{field}", pd.unique(frame[field]).tolist()
        for name, i in _SPLIT_IDS.items():
            mine = split == i
            if mine.any():
                yield f"{name}:{field}", pd.unique(frame.loc[mine, field]).tolist()


def _count_distinct() -> Any:
    """A CombineFn: how many distinct values the input lists hold (a set per key: memory grows with the distinct
    ids, users and items, not with the events)."""
    import apache_beam as beam

    class CountDistinct(beam.CombineFn):
        def create_accumulator(self) -> set[Any]:
            return set()

        def add_input(self, acc: set[Any], values: list[Any]) -> set[Any]:
            acc.update(values)
            return acc

        def merge_accumulators(self, accs: Iterable[set[Any]]) -> set[Any]:
            out: set[Any] = set()
            for acc in accs:
                out |= acc
            return out

        def extract_output(self, acc: set[Any]) -> int:
            return len(acc)

    return CountDistinct()


def latest_prices(item: tuple[str, pd.DataFrame | str]) -> Iterator[tuple[str, tuple[int, int, float] | None]]:
    """Per item of a batch: its latest logged price as (timestamp, key, price), or None when it has none."""
    frame = _events_frame(item[1])
    if "price" not in frame.columns:
        for value in pd.unique(frame["item_id"]):
            yield value, None
        return
    priced = frame[frame["price"].notna()]
    ts = _ms(priced["timestamp"])
    order = np.lexsort((priced[_KEY].to_numpy(), ts))
    last = priced.iloc[order].assign(_ts=ts[order]).groupby("item_id", sort=False).tail(1)
    for rec in last[["item_id", "_ts", _KEY, "price"]].itertuples(index=False):
        yield rec[0], (int(rec[1]), int(rec[2]), float(rec[3]))
    for value in pd.unique(frame.loc[~frame["item_id"].isin(last["item_id"]), "item_id"]):
        yield value, None


def latest(values: Iterable[tuple[int, int, float] | None]) -> tuple[int, int, float] | None:
    best = None
    for v in values:
        if v is not None and (best is None or v[:2] > best[:2]):
            best = v
    return best


def write_items(prices: list[tuple[str, tuple[int, int, float] | None]], has_price: bool, out_dir: str
                ) -> dict[str, Any]:
    """The derived catalog, sorted by item id (:func:`recflow.examplegen.derive_items`)."""
    prices = sorted(prices, key=lambda p: p[0])
    items = pd.DataFrame({"item_id": [p[0] for p in prices]})
    if has_price:
        items["price"] = [np.nan if p[1] is None else p[1][2] for p in prices]
    return _write_table(items, "items", out_dir)


def write_valid_table(pieces: list[tuple[str, pd.DataFrame]], kind: str, out_dir: str) -> dict[str, Any]:
    """A given items/users table's good rows, in source order."""
    frames = [f for _, f in pieces]
    frame = pd.concat(frames, ignore_index=True).sort_values(_KEY, kind="stable").drop(columns=[_KEY])
    return _write_table(frame.reset_index(drop=True), kind, out_dir)


def _write_table(frame: pd.DataFrame, kind: str, out_dir: str) -> dict[str, Any]:
    from recflow.examplegen import present_optional_fields

    with atomic_path(Path(out_dir) / f"{kind}.parquet") as tmp:
        pq.write_table(to_arrow(frame, kind), tmp, compression="zstd")  # type: ignore[arg-type]
    return {"kind": kind, "rows": len(frame), "fields": present_optional_fields(frame, kind)}  # type: ignore[arg-type]


def write_stats(_: Any, partials: dict[int, dict[str, Any]], distinct: dict[str, int], tables: list[dict[str, Any]],
                cuts: dict[str, Any], items_given: bool, users_given: bool, out_dir: str) -> str:
    """``stats.json``, the keys and values :func:`recflow.examplegen.compute_stats` writes."""
    from recflow.examplegen import _iso

    written = {t["kind"]: t for t in tables}
    splits = {}
    for name, i in _SPLIT_IDS.items():
        p = partials.get(i) or merge_partials([])
        splits[name] = {"rows": p["rows"], "users": distinct.get(f"{name}:user_id", 0),
                        "items": distinct.get(f"{name}:item_id", 0),
                        "event_types": dict(sorted(p["event_types"].items())),
                        "time_min": _iso(p["time_min"]), "time_max": _iso(p["time_max"])}
    everything = merge_partials(list(partials.values()))
    optional = [f.name for f in schema.fields("events") if not f.required and f.name in everything["present"]]
    stats = {
        "schema_version": schema.SCHEMA_VERSION,
        "rows": everything["rows"],
        "users": distinct.get("all:user_id", 0),
        "items": written["items"]["rows"],
        "items_given": items_given,
        "users_given": users_given,
        "event_types": dict(sorted(everything["event_types"].items())),
        "time_min": _iso(everything["time_min"]),
        "time_max": _iso(everything["time_max"]),
        "cut_points": {"train_end": _iso(partials[1]["time_min"]) if 1 in partials else None,
                       "eval_end": _iso(partials[2]["time_min"]) if 2 in partials else None},
        "splits": splits,
        "optional_fields": optional,
        "item_fields": written["items"]["fields"],
        "user_fields": written["users"]["fields"] if "users" in written else [],
    }
    path = Path(out_dir) / "stats.json"
    path.write_text(json.dumps(stats, indent=2, sort_keys=True), encoding="utf-8")
    return str(path)


def _cuts(ranked: dict[str, Any], eval_fraction: float, test_fraction: float, num_shards: int) -> dict[str, Any]:
    values = ranked["values"]
    cut1 = values[0] if eval_fraction + test_fraction > 0 else None
    cut2 = values[1] if test_fraction > 0 else None
    bounds = sorted({v for v in values[2:] if v is not None})
    return {"cut1": cut1, "cut2": cut2, "bounds": bounds, "n": ranked["n"], "exact": ranked["exact"]}


# ------------------------------------------------------------------------------------------------------ pipeline


def _route(element: tuple[str, Any], tag: str) -> Iterator[Any]:
    if element[0] == tag:
        yield element[1]


def _unwrap_data_error(exc: BaseException) -> BaseException | None:
    """The DataError/ValidationFailed a Beam worker raised, from the runner's wrapped exception, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DataError | ValidationFailed):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    for name, cls in (("DataError", DataError), ("ValidationFailed", ValidationFailed)):
        marker = f"recflow.errors.{name}: "
        if marker in text:
            return cls(text.split(marker, 1)[1].splitlines()[0].strip())
    return None


# The stages are the module's functions above; splitting the wiring would only pass the PCollections around.
# long-function: one Beam graph, read top to bottom (validation, cut points, shards, catalog, statistics)
def run_beam_example_gen(source: Path, tmp_dir: Path, config: Any, validation: Any, settings: BeamSettings,
                         quarantine: Path, batch_rows: int = 65_536) -> dict[str, Any]:
    """Run the pipeline on ``source`` into ``tmp_dir``, bad rows to ``quarantine``; return the statistics.

    ``config``: the ExampleGenConfig; ``validation``: the ValidationConfig. Raises DataError for an unusable file
    (before the pipeline, from footers and headers, or from the worker that read it), ValidationFailed when too
    many rows are bad (after it, from its summary). The caller checks the split sizes and renames ``tmp_dir``.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from recflow.examplegen import find_source_tables
    from recflow.validation import parse_min_timestamp

    check_shared_files(settings.args(), settings.shared_work_dir, "ExampleGen (engine beam)",
                       f"{tmp_dir} (the spilled batches and the shards)")
    paths = find_source_tables(source)
    tables = {kind: inspect_table(path, kind) for kind, path in paths.items() if path is not None}
    if not config.validate_input:
        raise ConfigError("example_gen.engine beam always validates its input (it reads the values as the "
                          "validator does): set example_gen.validate_input true or use engine pandas")
    parse_min_timestamp(validation)
    now = pd.Timestamp.now(tz="UTC")
    tasks = {kind: [(kind, i, str(p), t.format) for i, p in enumerate(t.files)] for kind, t in tables.items()}
    meta = {kind: {"files": len(t.files)} for kind, t in tables.items()}
    summary = tmp_dir / SUMMARY_NAME
    q1, q2 = 1.0 - config.eval_fraction - config.test_fraction, 1.0 - config.test_fraction
    # Shard boundaries: time ranges inside each split, from the number of events (shard_quantiles).
    more = functools.partial(shard_quantiles, q1, q2, config.num_shards, config.rows_per_shard)
    out = str(tmp_dir)
    spill = tmp_dir / ".spill"
    # The events' unknown-item message names the catalog file, as the pandas engine's does.
    catalog_name = str(tables["items"].path) if "items" in tables else "the item catalog"
    # The duplicate-id buckets: one holds about rows_per_shard ids at most (a bucket is in one worker's memory).
    buckets = {kind: shard_count(estimated_rows(t), settings.direct_num_workers * 4, config.rows_per_shard)
               for kind, t in tables.items()}

    try:
        with beam_args(settings.runner, list(settings.beam_pipeline_args),
                       direct_num_workers=settings.direct_num_workers,
                       direct_running_mode=settings.direct_running_mode, dask_address=settings.dask_address,
                       dask_workers=settings.dask_workers) as args, \
                beam.Pipeline(options=PipelineOptions(args)) as p:
            catalog = None
            if "items" in tasks:
                catalog = beam.pvalue.AsList(
                    p | "CatalogFiles" >> beam.Create(tasks["items"])
                    | "CatalogIds" >> beam.FlatMap(catalog_ids, batch_rows) | "CatalogDistinct" >> beam.Distinct())
            valid, issues, counts = {}, [], []
            for kind, kind_tasks in tasks.items():
                files = p | f"{kind}Files" >> beam.Create(kind_tasks)
                dups = (files | f"{kind}Ids" >> beam.FlatMap(read_ids, batch_rows, buckets[kind], str(spill))
                        | f"{kind}GroupIds" >> beam.GroupByKey()
                        | f"{kind}Duplicates" >> beam.Map(find_duplicates))
                checked = files | f"{kind}Validate" >> beam.FlatMap(
                    validate_batch, batch_rows, str(tables[kind].path), validation, now, catalog_name,
                    catalog if kind == "events" else None, beam.pvalue.AsList(dups), str(spill))
                # Three plain ParDos, not a Partition: Beam's Dask runner mixes up tagged outputs (docs/pipeline.md).
                valid[kind] = checked | f"{kind}Valid" >> beam.FlatMap(_route, "valid")
                issues.append(checked | f"{kind}Issues" >> beam.FlatMap(_route, "issues"))
                counts.append(checked | f"{kind}Counts" >> beam.FlatMap(_route, "rows"))
            all_issues = tuple(issues) | "AllIssues" >> beam.Flatten() | "IssueList" >> beam.combiners.ToList()
            all_counts = tuple(counts) | "AllCounts" >> beam.Flatten() | "CountList" >> beam.combiners.ToList()
            validated = (all_issues | "WriteQuarantine" >> beam.Map(
                write_quarantine_and_summary, beam.pvalue.AsSingleton(all_counts), meta, str(quarantine),
                str(summary)))

            events = valid["events"]
            ranked = (events | "Timestamps" >> beam.Map(lambda e: _ms(_events_frame(e[1])["timestamp"]).tolist())
                | "Quantiles" >> beam.CombineGlobally(
                    HigherRanks([q1, q2], config.quantile_epsilon, more).as_combine_fn()))
            cuts = beam.pvalue.AsSingleton(ranked | "Cuts" >> beam.Map(
                _cuts, config.eval_fraction, config.test_fraction, config.num_shards))
            shards = (events | "AssignSplits" >> beam.FlatMap(ranges_of, cuts)
                      | "GroupRanges" >> beam.GroupByKey() | "WriteShards" >> beam.Map(write_shard, out, cuts))
            partials = shards | "SplitStats" >> beam.CombinePerKey(merge_partials)
            distinct = (events | "Ids" >> beam.FlatMap(distinct_ids, cuts)
                        | "CountDistinctIds" >> beam.CombinePerKey(_count_distinct()))
            if "items" in tables:
                items_written = (valid["items"] | "ItemList" >> beam.combiners.ToList()
                                 | "WriteItems" >> beam.Map(write_valid_table, "items", out))
            else:
                has_price = "price" in tables["events"].columns
                items_written = (events | "Prices" >> beam.FlatMap(latest_prices)
                                 | "LatestPrice" >> beam.CombinePerKey(latest)
                                 | "PriceList" >> beam.combiners.ToList()
                                 | "WriteDerivedItems" >> beam.Map(write_items, has_price, out))
            written = [items_written]
            if "users" in tables:
                written.append(valid["users"] | "UserList" >> beam.combiners.ToList()
                               | "WriteUsers" >> beam.Map(write_valid_table, "users", out))
            table_info = tuple(written) | "Tables" >> beam.Flatten()
            stats_written = (p | "StatsSeed" >> beam.Create([None]) | "WriteStats" >> beam.Map(
                write_stats, beam.pvalue.AsDict(partials), beam.pvalue.AsDict(distinct),
                beam.pvalue.AsList(table_info), cuts, "items" in tables, "users" in tables, out))
            wait_for_all(p, validated, stats_written)
    except Exception as exc:
        found = _unwrap_data_error(exc)
        if found is not None:
            raise found from None
        raise
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    report = validation_report(summary, tables, validation.max_bad_share, quarantine)
    summary.unlink(missing_ok=True)
    report.raise_if_failed()
    _fill_empty_splits(tmp_dir)
    stats: dict[str, Any] = json.loads((tmp_dir / "stats.json").read_text(encoding="utf-8"))
    return stats


def _fill_empty_splits(tmp_dir: Path) -> None:
    """A split no event fell into still gets a directory with one empty shard of the events' schema."""
    written = sorted(tmp_dir.glob("*.parquet/part-*.parquet"))
    if not written:
        return
    arrow_schema = pq.read_schema(written[0])
    for name in _SPLIT_IDS:
        directory = tmp_dir / f"{name}.parquet"
        if not directory.is_dir():
            directory.mkdir()
            pq.write_table(arrow_schema.empty_table(), directory / "part-00000.parquet", compression="zstd")

