"""ExampleGen: ingest an event log, validate it, split it by time and write the examples every later step reads.

Output directory layout (the contract for Transform, the trainer and evaluation):

* ``train.parquet``, ``eval.parquet``, ``test.parquet``: events ordered by time, split at timestamp quantiles so
  that every eval/test event is strictly later than every train event (no future leaks into training);
  with ``engine: beam`` each is a directory of Parquet shards (``train.parquet/part-*.parquet``): read either
  layout with :func:`read_split`;
* ``items.parquet``: the catalog when given, else derived from the events (``item_id`` plus the latest event
  price when prices were logged);
* ``users.parquet``: the user table, only when the source has one;
* ``stats.json``: rows, users, items, event-type counts, time range and cut points per split, and which optional
  fields are present.

Rows the validator rejects go to ``<out_dir>_quarantine.parquet`` beside the output directory.
The directory is built in a temporary sibling and renamed into place, so readers never see half of it.
Sources are a dataset directory of Parquet or CSV files, each table a file (``events.parquet``) or a directory
of shards (``events/``); a BigQuery or GCS source can be added behind :func:`read_source` later without changing
anything downstream. ``example_gen.engine`` runs all this in this process (pandas) or as a Beam pipeline
(:mod:`recflow.examplegen_beam`, the same output).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recflow import schema
from recflow.errors import DataError
from recflow.io import staged_dir, to_arrow

if TYPE_CHECKING:  # recflow.config composes this module's ExampleGenConfig, so no runtime import back
    from recflow.config import ValidationConfig
    from recflow.examplegen_beam import BeamSettings

SPLITS: tuple[str, ...] = ("train", "eval", "test")


class ExampleGenConfig(BaseModel):
    """How ExampleGen splits the event log (the ``example_gen`` section of the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of events (latest before test) for eval.")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the latest events held out for test.")
    min_train_events: int = Field(
        10, ge=1, description="Fail when the train split would hold fewer events than this."
    )
    validate_input: bool = Field(
        True, description="Run the schema validator on the source and fail when too many rows are bad."
    )
    engine: Literal["pandas", "beam"] = Field(
        "pandas", description="pandas: in the launching process (the whole log in memory); beam: an Apache Beam "
        "pipeline on the transform section's runner, each split written as a directory of Parquet shards.")
    quantile_epsilon: float = Field(
        1e-4, gt=0.0, lt=1.0, description="beam engine: rank error bound of the cut points' quantile sketch (a "
        "cut is within epsilon * events ranks of the exact one; exact while the log fits the sketch's buffers).")
    num_shards: int = Field(
        4, ge=1, description="beam engine: time ranges each split's shards cover at least (empty ranges write no "
        "shard).")
    rows_per_shard: int = Field(
        200_000, ge=1, description="beam engine: more time ranges when a split's would average more events than "
        "this (ranges = max(num_shards, ceil(split events / this))); also sizes the duplicate-id buckets, so what "
        "one worker holds does not grow with the log.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> ExampleGenConfig:
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ValueError("eval_fraction + test_fraction must be below 1 so that training data remains")
        return self


@dataclass(frozen=True)
class ExampleGenResult:
    """Where ExampleGen wrote its outputs and what it found."""

    out_dir: Path
    splits: dict[str, Path]
    items_path: Path
    users_path: Path | None
    stats_path: Path
    stats: dict[str, Any] = field(repr=False)

    def format(self) -> str:
        """A short human-readable summary."""
        lines = [f"examples written to {self.out_dir}"]
        for name in SPLITS:
            s = self.stats["splits"][name]
            lines.append(f"  {name:<5} {s['rows']:>9} events  {s['users']:>7} users  {s['items']:>7} items  "
                         f"{s['time_min']} .. {s['time_max']}")
        lines.append("  optional fields present: " + (", ".join(self.stats["optional_fields"]) or "none"))
        return "\n".join(lines)


def _find_table(source: Path, kind: schema.TableKind) -> Path | None:
    """``kind``'s file (``events.parquet``, ``events.csv``) or shard directory (``events/``) in ``source``."""
    from recflow.validation.reading import find_table_file

    return find_table_file(source, kind)


def _read_one_file(path: Path) -> pd.DataFrame:
    if path.name.lower().endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zst")):
        return pd.read_csv(path, dtype={"user_id": str, "item_id": str, "event_id": str, "session_id": str,
                                        "request_id": str})
    return pd.read_parquet(path)


def _read_file(path: Path, kind: schema.TableKind) -> pd.DataFrame:
    try:
        if path.is_dir():
            from recflow.validation.reading import shard_files

            df = pd.concat([_read_one_file(p) for p in shard_files(path)], ignore_index=True)
        else:
            df = _read_one_file(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001  (any reader failure is a bad input file)
        raise DataError(f"{path}: cannot read the {kind} table: {exc}") from None
    missing = [c for c in schema.required_columns(kind) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: the {kind} table lacks required column(s) {', '.join(missing)}")
    for name in (f.name for f in schema.fields(kind) if f.kind == "timestamp"):
        if name in df.columns:
            try:
                df[name] = pd.to_datetime(df[name], utc=True)
            except (ValueError, TypeError) as exc:
                raise DataError(f"{path}: field {name}: not a timestamp ({exc})") from None
    return df


def find_source_tables(source: Path) -> dict[schema.TableKind, Path | None]:
    """Each table's file or shard directory in the dataset directory ``source`` (DataError without events)."""
    if not source.is_dir():
        raise DataError(f"{source}: not a dataset directory (expected events.parquet or events.csv inside)")
    paths = {kind: _find_table(source, kind) for kind in schema.TABLE_KINDS}
    if paths["events"] is None:
        raise DataError(f"{source}: no events.parquet or events.csv (or an events/ directory of shards) in the "
                        "dataset directory")
    return paths


def read_source(source: Path, validation: ValidationConfig, validate: bool = True,
                quarantine_path: Path | None = None) -> dict[str, pd.DataFrame]:
    """Read the events (and the items/users tables when present) of a dataset directory, validated.

    Returns the good rows per table ("events", "items", "users"); bad rows go to ``quarantine_path``
    (default: the validator's, beside the source). Raises DataError when the source has no events and
    ValidationFailed when the validator rejects it.
    """
    source = Path(source)
    paths = find_source_tables(source)
    if validate:
        from recflow.validation import validate_path

        report = validate_path(source, validation, items_path=paths["items"], quarantine_path=quarantine_path)
        report.raise_if_failed()
        return {kind: df for kind, df in report.valid.items() if df is not None}
    return {kind: _read_file(path, kind) for kind, path in paths.items() if path is not None}


def split_path(examples_dir: Path, name: str) -> Path:
    """Where split ``name`` of an examples directory is: ``<name>.parquet``, a file or a directory of shards."""
    return Path(examples_dir) / f"{name}.parquet"


def has_split(examples_dir: Path, name: str) -> bool:
    """Whether the examples directory holds split ``name`` (a Parquet file or a directory of shards)."""
    path = split_path(examples_dir, name)
    return path.is_file() or (path.is_dir() and any(path.glob("*.parquet")))


def read_split(examples_dir: Path, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Split ``name`` (``train``/``eval``/``test``) of an examples directory, in log order.

    Reads either layout ExampleGen writes: one ``<name>.parquet`` file (pandas engine) or a ``<name>.parquet/``
    directory of ``part-*.parquet`` shards (beam engine), and returns the rows sorted stably by timestamp, then
    event id when there is one: the same frame for both layouts, whatever order the shards hold. ``columns``
    selects columns (the sort keys are read when needed and dropped again). Raises DataError when it is missing.
    """
    path = split_path(examples_dir, name)
    if not has_split(examples_dir, name):
        raise DataError(f"{examples_dir}: no {name}.parquet (run ExampleGen first: recflow.examplegen)")
    import pyarrow.parquet as pq

    available = pq.read_schema(path if path.is_file() else sorted(path.glob("*.parquet"))[0]).names
    keys = [c for c in ("timestamp", "event_id") if c in available]
    wanted = None if columns is None else list(dict.fromkeys([*columns, *keys]))
    try:
        if path.is_file():
            frame = pd.read_parquet(path, columns=wanted)
        else:
            parts = [pq.read_table(p, columns=wanted) for p in sorted(path.glob("*.parquet"))]
            import pyarrow as pa

            frame = pa.concat_tables(parts, promote_options="default").to_pandas()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the {name} split: {exc}") from None
    if keys:
        frame = frame.sort_values(keys, kind="stable").reset_index(drop=True)
    return frame if columns is None else frame[list(columns)]


def read_split_path(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`read_split` of a split given by its path (``<examples_dir>/<name>.parquet``, file or directory)."""
    path = Path(path)
    return read_split(path.parent, path.name.removesuffix(".parquet"), columns)


def split_by_time(events: pd.DataFrame, eval_fraction: float, test_fraction: float) -> dict[str, pd.DataFrame]:
    """Split events at timestamp quantiles into train/eval/test, every later split strictly after the earlier.

    Cut points are timestamps: train holds events before the first cut, eval those from the first cut up to
    (not including) the second, test the rest. Events sharing a timestamp always land in the same split, so
    nothing in eval/test is simultaneous with training data.
    """
    ordered = events.sort_values(["timestamp", *(c for c in ("event_id",) if c in events.columns)],
                                 kind="stable").reset_index(drop=True)
    ts = ordered["timestamp"]
    train_end = 1.0 - eval_fraction - test_fraction
    cut1 = ts.quantile(train_end, interpolation="higher") if eval_fraction + test_fraction > 0 else None
    cut2 = ts.quantile(1.0 - test_fraction, interpolation="higher") if test_fraction > 0 else None
    n = len(ordered)
    idx1 = int(ts.searchsorted(cut1, side="left")) if cut1 is not None else n
    idx2 = int(ts.searchsorted(cut2, side="left")) if cut2 is not None else n
    idx2 = max(idx2, idx1)
    return {"train": ordered.iloc[:idx1], "eval": ordered.iloc[idx1:idx2], "test": ordered.iloc[idx2:]}


def derive_items(events: pd.DataFrame) -> pd.DataFrame:
    """A catalog derived from the events: every item id, with its latest logged price when prices exist."""
    ordered = events.sort_values("timestamp", kind="stable")
    if "price" in ordered.columns:
        priced = ordered.dropna(subset=["price"]).groupby("item_id", sort=True)["price"].last()
        items = pd.DataFrame({"item_id": sorted(ordered["item_id"].unique())})
        items["price"] = items["item_id"].map(priced)
        return items
    return pd.DataFrame({"item_id": sorted(ordered["item_id"].unique())})


def _iso(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()


def _split_stats(df: pd.DataFrame) -> dict[str, Any]:
    return {
        "rows": len(df),
        "users": int(df["user_id"].nunique()),
        "items": int(df["item_id"].nunique()),
        "event_types": {str(k): int(v) for k, v in df["event_type"].value_counts().sort_index().items()},
        "time_min": _iso(df["timestamp"].min()) if len(df) else None,
        "time_max": _iso(df["timestamp"].max()) if len(df) else None,
    }


def present_optional_fields(df: pd.DataFrame, kind: schema.TableKind) -> list[str]:
    """Optional schema fields of ``kind`` that exist in ``df`` and hold at least one value."""
    return [f.name for f in schema.fields(kind)
            if not f.required and f.name in df.columns and df[f.name].notna().any()]


def compute_stats(splits: dict[str, pd.DataFrame], items: pd.DataFrame, users: pd.DataFrame | None,
                  items_given: bool, cuts: dict[str, str | None]) -> dict[str, Any]:
    """Basic statistics of the examples (what ``stats.json`` holds)."""
    everything = pd.concat(list(splits.values()), ignore_index=True)
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "rows": len(everything),
        "users": int(everything["user_id"].nunique()),
        "items": len(items),
        "items_given": items_given,
        "users_given": users is not None,
        "event_types": {str(k): int(v) for k, v in everything["event_type"].value_counts().sort_index().items()},
        "time_min": _iso(everything["timestamp"].min()),
        "time_max": _iso(everything["timestamp"].max()),
        "cut_points": cuts,
        "splits": {name: _split_stats(df) for name, df in splits.items()},
        "optional_fields": present_optional_fields(everything, "events"),
        "item_fields": present_optional_fields(items, "items"),
        "user_fields": present_optional_fields(users, "users") if users is not None else [],
    }


def _write_parquet(df: pd.DataFrame, path: Path, kind: schema.TableKind) -> None:
    import pyarrow.parquet as pq

    pq.write_table(to_arrow(df.reset_index(drop=True), kind), path, compression="zstd")


def quarantine_path(out_dir: Path, validation: ValidationConfig) -> Path:
    """Where ExampleGen writes the validator's bad rows: ``<out_dir>_<quarantine_name>`` beside ``out_dir``."""
    return out_dir.with_name(f"{out_dir.name}_{validation.quarantine_name}")


def run_example_gen(source: Path, out_dir: Path, config: ExampleGenConfig, validation: ValidationConfig,
                    beam: BeamSettings | None = None) -> ExampleGenResult:
    """Ingest the dataset directory ``source``, validate it, split it by time and write ``out_dir`` atomically.

    ``config.engine`` picks pandas (in this process) or beam (:mod:`recflow.examplegen_beam`, on the runner of
    ``beam``, default the DirectRunner in one process; :meth:`BeamSettings.from_transform` takes the transform
    section's runner settings). Raises DataError for an unreadable source or splits that would be empty,
    ValidationFailed when the validator rejects the data.
    """
    source, out_dir = Path(source), Path(out_dir)
    with staged_dir(out_dir) as tmp_dir:
        if config.engine == "beam":
            result = _beam_example_gen(source, out_dir, tmp_dir, config, validation, beam)
        else:
            result = _example_gen(source, out_dir, tmp_dir, config, validation)
    return result


def _check_splits(source: Path, rows: dict[str, int], config: ExampleGenConfig) -> None:
    if rows["train"] < config.min_train_events:
        raise DataError(
            f"{source}: only {rows['train']} events fall into the train split "
            f"(example_gen.min_train_events={config.min_train_events})",
            hint="use a longer event log or smaller eval_fraction/test_fraction",
        )
    for name, fraction in (("eval", config.eval_fraction), ("test", config.test_fraction)):
        if fraction > 0 and rows[name] == 0:
            raise DataError(f"{source}: the {name} split is empty: too few distinct timestamps to split at "
                            f"{name}_fraction={fraction}")


def _beam_example_gen(source: Path, out_dir: Path, tmp_dir: Path, config: ExampleGenConfig,
                      validation: ValidationConfig, beam: BeamSettings | None) -> ExampleGenResult:
    from recflow.examplegen_beam import BeamSettings, run_beam_example_gen

    stats = run_beam_example_gen(source, tmp_dir, config, validation, beam or BeamSettings(),
                                 quarantine_path(out_dir, validation))
    if stats["rows"] == 0:
        raise DataError(f"{source}: the events table has no valid rows")
    _check_splits(source, {name: stats["splits"][name]["rows"] for name in SPLITS}, config)
    return ExampleGenResult(
        out_dir=out_dir,
        splits={name: split_path(out_dir, name) for name in SPLITS},
        items_path=out_dir / "items.parquet",
        users_path=out_dir / "users.parquet" if stats["users_given"] else None,
        stats_path=out_dir / "stats.json",
        stats=stats,
    )


def _example_gen(source: Path, out_dir: Path, tmp_dir: Path, config: ExampleGenConfig,
                 validation: ValidationConfig) -> ExampleGenResult:
    # Bad rows go beside the output, not into the source (which may be read-only), and survive a failed run.
    tables = read_source(source, validation, validate=config.validate_input,
                         quarantine_path=quarantine_path(out_dir, validation))
    events = tables["events"]
    if events.empty:
        raise DataError(f"{source}: the events table has no valid rows")
    splits = split_by_time(events, config.eval_fraction, config.test_fraction)
    _check_splits(source, {name: len(df) for name, df in splits.items()}, config)
    items_given = "items" in tables
    items = tables["items"] if items_given else derive_items(events)
    users = tables.get("users")
    cuts = {"train_end": _iso(splits["eval"]["timestamp"].min()) if len(splits["eval"]) else None,
            "eval_end": _iso(splits["test"]["timestamp"].min()) if len(splits["test"]) else None}
    stats = compute_stats(splits, items, users, items_given, cuts)

    for name, df in splits.items():
        _write_parquet(df, tmp_dir / f"{name}.parquet", "events")
    _write_parquet(items, tmp_dir / "items.parquet", "items")
    if users is not None:
        _write_parquet(users, tmp_dir / "users.parquet", "users")
    (tmp_dir / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True), encoding="utf-8")
    return ExampleGenResult(
        out_dir=out_dir,
        splits={name: out_dir / f"{name}.parquet" for name in SPLITS},
        items_path=out_dir / "items.parquet",
        users_path=out_dir / "users.parquet" if users is not None else None,
        stats_path=out_dir / "stats.json",
        stats=stats,
    )
