"""Validate data files against the recflow schema and quarantine bad rows (``recflow data validate``).

Two kinds of problem, handled differently:

* A file that cannot be used at all (missing, empty, not Parquet/CSV, truncated, not UTF-8, no rows, missing a
  required column) raises :class:`~recflow.errors.DataError` naming the file and the reason (CLI exit code 2).
* Bad rows never raise. Each violation (missing or wrong-typed value, out of range, not an allowed value,
  duplicate id, timestamp outside the plausible window, unknown item id) is recorded with the row's 0-based index,
  the field, a :class:`Reason` and the value; the rows go to a Parquet quarantine file and the good rows come
  back converted to the schema's types. The :class:`ValidationReport` fails when a table's bad share exceeds
  ``validation.max_bad_share`` (CLI exit code 1).

Row numbers are 0-based indexes into the table as stored (Parquet row index; for CSV the first data line is
row 0, i.e. file line ``row + 2``). See docs/schema.md for the rules.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recflow import schema
from recflow.config import ValidationConfig
from recflow.errors import DataError
from recflow.validation.checks import ISSUE_COLUMNS, Reason, TableCheck, check_table, parse_min_timestamp
from recflow.validation.reading import RawTable, find_table_file, infer_kind, read_raw_table, shard_files
from recflow.validation.report import (
    QUARANTINE_META_COLUMNS,
    TableReport,
    ValidationReport,
    build_quarantine,
    write_quarantine,
)

__all__ = [
    "ISSUE_COLUMNS",
    "QUARANTINE_META_COLUMNS",
    "RawTable",
    "Reason",
    "TableCheck",
    "TableReport",
    "ValidationReport",
    "catalog_item_ids",
    "check_table",
    "infer_kind",
    "parse_min_timestamp",
    "read_raw_table",
    "validate_frames",
    "validate_path",
]


def catalog_item_ids(items: pd.DataFrame) -> pd.Index:
    """The distinct non-blank item ids of a catalog as text (a catalog row bad for another reason still counts)."""
    ids = items["item_id"]
    if pd.api.types.is_float_dtype(ids.dtype):
        ids = ids.dropna().astype("Int64")
    text = ids.dropna().astype(str).str.strip()
    return pd.Index(pd.unique(text[text != ""]))


def _is_shard_directory(path: Path) -> bool:
    try:
        return bool(shard_files(path))
    except DataError:
        return False


def _collect_tables(path: Path, items_path: Path | None) -> tuple[dict[str, RawTable], Path]:
    """Read the tables to validate and the directory the quarantine goes to by default."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    tables: dict[str, RawTable] = {}
    if path.is_dir():
        for kind in schema.TABLE_KINDS:
            found = find_table_file(path, kind)
            if found is not None and not (kind == "items" and items_path is not None):
                tables[kind] = read_raw_table(found, kind)
        if not tables and items_path is None and _is_shard_directory(path):  # one table stored as shards
            raw = read_raw_table(path)
            tables[raw.kind] = raw
            return tables, path.parent
        if not tables and items_path is None:
            raise DataError(
                f"{path}: no events, items or users file in this directory (expected events.parquet, "
                "items.parquet, users.parquet or the same names with .csv)"
            )
        base = path
    else:
        raw = read_raw_table(path)
        tables[raw.kind] = raw
        base = path.parent
        if raw.kind == "events" and items_path is None:
            beside = find_table_file(path.parent, "items")
            if beside is not None and beside.resolve() != path.resolve():
                tables["items"] = read_raw_table(beside, "items")
    if items_path is not None:
        tables["items"] = read_raw_table(Path(items_path), "items")
    return tables, base


def validate_frames(
    tables: dict[str, RawTable],
    config: ValidationConfig,
    *,
    now: pd.Timestamp | None = None,
) -> tuple[dict[str, TableCheck], pd.DataFrame]:
    """Check already-read tables (events against the catalog when there is one); return checks and all issues."""
    parse_min_timestamp(config)  # a bad setting is a ConfigError before any work
    checks: dict[str, TableCheck] = {}
    catalog = tables.get("items")
    for kind in ("items", "users", "events"):
        raw = tables.get(kind)
        if raw is None:
            continue
        ids = catalog_item_ids(catalog.frame) if kind == "events" and catalog is not None else None
        checks[kind] = check_table(
            raw.frame, kind, config, item_ids=ids,
            catalog_name=str(catalog.path) if catalog is not None else "the item catalog", now=now,
        )
    blocks = []
    for kind, chk in checks.items():
        if len(chk.issues):
            block = chk.issues.copy()
            block.insert(0, "file", str(tables[kind].path))
            block.insert(0, "table", kind)
            blocks.append(block)
    columns = ["table", "file", *ISSUE_COLUMNS]
    issues = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns)
    return checks, issues[columns]


def validate_path(
    path: Path,
    config: ValidationConfig,
    items_path: Path | None = None,
    quarantine_path: Path | None = None,
    *,
    now: pd.Timestamp | None = None,
) -> ValidationReport:
    """Validate a dataset directory or one events/items/users file (Parquet or CSV) and write the quarantine.

    ``path``: a directory holding ``events``, ``items`` and/or ``users`` as ``.parquet`` or ``.csv`` files or
    shard directories (``events/``), one such file, or one table's shard directory (its table is taken from
    the Parquet metadata, else the file name, else the columns).
    ``items_path``: the catalog that events' item ids must exist in (default: the items file in the directory,
    or beside a single events file; none found means no item-id check).
    ``quarantine_path``: where bad rows go (default: ``config.quarantine_name`` in the dataset directory). It is
    always (re)written, empty when every row is good, so a stale quarantine never lingers.
    ``now``: reference time of the future-timestamp rule (default: now).

    Raises DataError when a file is unusable; bad rows are reported, never raised.
    """
    path = Path(path)
    tables, base = _collect_tables(path, Path(items_path) if items_path is not None else None)
    checks, issues = validate_frames(tables, config, now=now)
    reports: dict[str, TableReport] = {}
    for kind in (k for k in schema.TABLE_KINDS if k in checks):
        chk = checks[kind]
        mine = issues[issues["table"] == kind]
        counts = mine.groupby(["field", "reason"], sort=False).size().sort_values(ascending=False)
        reports[kind] = TableReport(
            kind=kind, path=tables[kind].path, format=tables[kind].format, rows=chk.rows,
            bad_rows=chk.bad_count, reason_counts={(f, r): int(n) for (f, r), n in counts.items()},
        )
    target = Path(quarantine_path) if quarantine_path is not None else base / config.quarantine_name
    write_quarantine(build_quarantine(issues, {k: t.frame for k, t in tables.items()}), target)
    return ValidationReport(
        tables=reports,
        max_bad_share=config.max_bad_share,
        quarantine_path=target,
        valid={kind: chk.valid for kind, chk in checks.items()},
        issues=issues.reset_index(drop=True),
    )

