"""Reading a user's data file for validation: format detection, table-kind inference, file-level errors.

Anything that makes a whole file unusable (missing, empty, not Parquet, truncated, not UTF-8, no rows, missing
required columns) is a :class:`~recflow.errors.DataError` naming the file and the reason. Row-level problems are
left to :mod:`recflow.validation.checks`; the frame returned here holds the values exactly as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recflow import schema
from recflow.errors import DataError
from recflow.schema import TableKind

FileFormat = Literal["parquet", "csv"]

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".tsv")


@dataclass(frozen=True)
class RawTable:
    """One file's rows as stored (no coercion yet), with what was learned about the file."""

    path: Path
    kind: TableKind
    format: FileFormat
    frame: pd.DataFrame


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def detect_format(path: Path) -> FileFormat:
    """Parquet when the file starts with Parquet's magic bytes or is named ``*.parquet``; CSV otherwise.

    A ``.parquet`` name on a file that is not Parquet is an error (not a silent CSV read), so a mislabelled
    export is noticed.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == PARQUET_MAGIC:
        return "parquet"
    if _has_suffix(path, PARQUET_SUFFIXES):
        looks_like = "text (CSV?)" if _looks_like_text(path) else "binary data of another format"
        raise DataError(f"{path}: not a Parquet file (it holds {looks_like}; Parquet files start with 'PAR1')")
    return "csv"


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as fh:
        sample = fh.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sample boundary is still text.
        return exc.start >= len(sample) - 3
    return b"\x00" not in sample


def _read_parquet(path: Path) -> tuple[pd.DataFrame, bytes | None]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if size < 12 or tail != PARQUET_MAGIC:
        raise DataError(f"{path}: truncated Parquet file ({size} bytes, the footer is missing or cut off)")
    try:
        pf = pq.ParquetFile(path)
        table = pf.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read Parquet file: {exc}") from None
    metadata = table.schema.metadata or {}
    kind = metadata.get(schema.METADATA_SCHEMA_KEY)
    # Arrow would turn out-of-range timestamps into an error on conversion; keep them as they are instead.
    try:
        frame = table.to_pandas(timestamp_as_object=False)
    except (pa.ArrowException, ValueError, OverflowError):
        frame = table.to_pandas(timestamp_as_object=True)
    return frame, kind


def _read_csv(path: Path) -> pd.DataFrame:
    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        return pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
            encoding_errors="strict",
            compression="infer",
        )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save the file as UTF-8 CSV or Parquet"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no columns (the CSV has no header line)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a well-formed CSV file: {str(exc).strip()}") from None
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV file: {exc}") from None


def infer_kind(path: Path, columns: list[str], metadata_kind: bytes | None = None) -> TableKind:
    """Which table a file holds: Parquet metadata first, then the file name, then the columns."""
    if metadata_kind is not None:
        text = metadata_kind.decode("utf-8", "replace")
        for kind in schema.TABLE_KINDS:
            if text == kind:
                return kind
    stem = path.name.lower().split(".")[0]
    for kind in schema.TABLE_KINDS:
        if stem == kind or stem.startswith((kind + "_", kind + "-")):
            return kind
    cols = set(columns)
    if "event_type" in cols:
        return "events"
    if "item_id" in cols and "user_id" not in cols:
        return "items"
    if "user_id" in cols and "item_id" not in cols:
        return "users"
    raise DataError(
        f"{path}: cannot tell whether this is an events, items or users table (no recflow metadata, file name "
        f"not events/items/users, and the columns {sorted(cols)[:8]} are ambiguous); name it events.parquet, "
        "items.parquet or users.parquet"
    )


def read_raw_table(path: Path, kind: TableKind | None = None) -> RawTable:
    """Read one file as stored and check that it is usable at all (raises DataError otherwise)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    fmt = detect_format(path)
    metadata_kind: bytes | None = None
    if fmt == "parquet":
        frame, metadata_kind = _read_parquet(path)
    else:
        frame = _read_csv(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    dupes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    if kind is None:
        kind = infer_kind(path, list(frame.columns), metadata_kind)
    missing = [c for c in schema.required_columns(kind) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(missing)} of the {kind} table "
            f"(found: {', '.join(map(str, frame.columns[:12]))}{', ...' if len(frame.columns) > 12 else ''})"
        )
    if len(frame) == 0:
        raise DataError(f"{path}: the {kind} table has no rows")
    return RawTable(path=path, kind=kind, format=fmt, frame=frame.reset_index(drop=True))


def find_table_file(directory: Path, kind: TableKind) -> Path | None:
    """The file of ``kind`` in a dataset directory (``events.parquet``, else ``events.csv`` ...), or None."""
    for suffix in (*PARQUET_SUFFIXES, *CSV_SUFFIXES):
        candidate = directory / f"{kind}{suffix}"
        if candidate.is_file():
            return candidate
    return None
