"""Reading a user's data file for validation: format detection, table-kind inference, file-level errors.

Anything that makes a whole file unusable (missing, empty, not Parquet, truncated, not UTF-8, no rows, missing
required columns) is a :class:`~recflow.errors.DataError` naming the file and the reason. Row-level problems are
left to :mod:`recflow.validation.checks`; the frame returned here holds the values exactly as stored.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def _open_parquet(path: Path) -> pq.ParquetFile:
    """The Parquet file at ``path``, its footer checked first (DataError for a truncated or unreadable file)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if size < 12 or tail != PARQUET_MAGIC:
        raise DataError(f"{path}: truncated Parquet file ({size} bytes, the footer is missing or cut off)")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read Parquet file: {exc}") from None


def _read_parquet(path: Path) -> tuple[pd.DataFrame, bytes | None]:
    pf = _open_parquet(path)
    try:
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


def shard_files(directory: Path) -> list[Path]:
    """The data files of a shard directory (``*.parquet``/``*.csv`` ..., not hidden), in name order: the order
    their rows are numbered in (row ``r`` of the table is row ``r - rows before`` of its shard)."""
    files = sorted(p for p in Path(directory).iterdir()
                   if p.is_file() and not p.name.startswith((".", "_"))
                   and _has_suffix(p, (*PARQUET_SUFFIXES, *CSV_SUFFIXES)))
    if not files:
        raise DataError(f"{directory}: a shard directory without data files (expected *.parquet or *.csv inside)")
    return files


def _read_one(path: Path) -> tuple[pd.DataFrame, FileFormat, bytes | None]:
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    fmt = detect_format(path)
    if fmt == "parquet":
        frame, metadata_kind = _read_parquet(path)
        return frame, fmt, metadata_kind
    return _read_csv(path), fmt, None


def read_raw_table(path: Path, kind: TableKind | None = None) -> RawTable:
    """Read one file, or a directory of shards, as stored and check that it is usable at all (DataError if not).

    A shard directory's files are read in name order and concatenated (all must be Parquet or all CSV); rows are
    numbered across them in that order, and the table's path is the directory.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    metadata_kind: bytes | None = None
    if path.is_dir():
        parts = [_read_one(p) for p in shard_files(path)]
        formats = {fmt for _, fmt, _ in parts}
        if len(formats) > 1:
            raise DataError(f"{path}: the shards mix Parquet and CSV files; use one format")
        fmt = parts[0][1]
        metadata_kind = parts[0][2]
        frames = [f for f, _, _ in parts]
        columns = [list(map(str, f.columns)) for f in frames]
        if any(c != columns[0] for c in columns):
            bad = next(p for p, c in zip(shard_files(path), columns, strict=True) if c != columns[0])
            raise DataError(f"{bad}: its columns differ from the first shard's ({', '.join(columns[0][:12])})")
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    else:
        frame, fmt, metadata_kind = _read_one(path)
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
    """The file of ``kind`` in a dataset directory (``events.parquet``, else ``events.csv`` ...), else a shard
    directory of it (``events/`` or ``events.parquet/`` holding ``*.parquet`` or ``*.csv`` files), or None."""
    for suffix in (*PARQUET_SUFFIXES, *CSV_SUFFIXES):
        candidate = directory / f"{kind}{suffix}"
        if candidate.is_file():
            return candidate
    for name in (kind, *(f"{kind}{suffix}" for suffix in PARQUET_SUFFIXES)):
        candidate = directory / name
        if candidate.is_dir() and any(_has_suffix(p, (*PARQUET_SUFFIXES, *CSV_SUFFIXES))
                                      for p in candidate.iterdir() if not p.name.startswith((".", "_"))):
            return candidate
    return None


@dataclass(frozen=True)
class TableFiles:
    """A table to read piecewise (the beam engine): its file or shard directory, the data files in row order,
    their format and columns. Made by :func:`inspect_table`, which reads footers and headers only."""

    path: Path
    kind: TableKind
    format: FileFormat
    files: tuple[Path, ...]
    columns: tuple[str, ...]


def _csv_options(path: Path) -> dict[str, object]:
    return {"sep": "\t" if path.name.lower().endswith(".tsv") else ",", "dtype": str, "keep_default_na": False,
            "na_values": [""], "encoding": "utf-8", "encoding_errors": "strict", "compression": "infer"}


def _csv_errors(path: Path, exc: Exception) -> DataError:
    """The DataError :func:`_read_csv` raises for a reader failure ``exc``."""
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save the file as UTF-8 CSV "
                         "or Parquet")
    if isinstance(exc, pd.errors.EmptyDataError):
        return DataError(f"{path}: no columns (the CSV has no header line)")
    if isinstance(exc, pd.errors.ParserError):
        return DataError(f"{path}: not a well-formed CSV file: {str(exc).strip()}")
    return DataError(f"{path}: cannot read CSV file: {exc}")


def _file_head(path: Path) -> tuple[FileFormat, list[str], int]:
    """Format, column names and (Parquet) row count, or 1/0 for whether a CSV has a data row."""
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    fmt = detect_format(path)
    if fmt == "parquet":
        pf = _open_parquet(path)
        return fmt, [str(c).strip() for c in pf.schema_arrow.names], pf.metadata.num_rows
    try:
        head = pd.read_csv(path, nrows=1, **_csv_options(path))
    except (UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError, OSError, EOFError,
            ValueError) as exc:
        raise _csv_errors(path, exc) from None
    return fmt, [str(c).strip() for c in head.columns], len(head)


def inspect_table(path: Path, kind: TableKind) -> TableFiles:
    """Check that a table file or shard directory is usable, reading footers and headers only (DataError if not:
    the same file-level rules as :func:`read_raw_table`; a malformed CSV line further in is found when read)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    files = shard_files(path) if path.is_dir() else [path]
    heads = [_file_head(p) for p in files]
    formats = {fmt for fmt, _, _ in heads}
    if len(formats) > 1:
        raise DataError(f"{path}: the shards mix Parquet and CSV files; use one format")
    columns = heads[0][1]
    for p, (_, cols, _) in zip(files, heads, strict=True):
        if cols != columns:
            raise DataError(f"{p}: its columns differ from the first shard's ({', '.join(columns[:12])})")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    missing = [c for c in schema.required_columns(kind) if c not in columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(missing)} of the {kind} table "
            f"(found: {', '.join(columns[:12])}{', ...' if len(columns) > 12 else ''})"
        )
    if sum(n for _, _, n in heads) == 0:
        raise DataError(f"{path}: the {kind} table has no rows")
    return TableFiles(path=path, kind=kind, format=heads[0][0], files=tuple(files), columns=tuple(columns))


def iter_raw_batches(path: Path, fmt: FileFormat, batch_rows: int, columns: list[str] | None = None
                     ) -> Iterator[tuple[int, pd.DataFrame]]:
    """One data file's rows as stored, in pieces of at most ``batch_rows``: (first row's index, rows).

    The values are those :func:`read_raw_table` reads (CSV as text; Parquet as Arrow converts them), column
    names stripped. ``columns`` reads only those (the same row numbering).
    """
    path = Path(path)
    offset = 0
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path)
            names = [str(c) for c in pf.schema_arrow.names]
            wanted = None if columns is None else [n for n in names if n.strip() in columns]
            for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
                try:
                    frame = batch.to_pandas(timestamp_as_object=False)
                except (pa.ArrowException, ValueError, OverflowError):
                    frame = batch.to_pandas(timestamp_as_object=True)
                frame.columns = [str(c).strip() for c in frame.columns]
                yield offset, frame
                offset += len(frame)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot read Parquet file: {exc}") from None
        return
    options = _csv_options(path)
    if columns is not None:
        options["usecols"] = lambda c: str(c).strip() in columns
    try:
        for frame in pd.read_csv(path, chunksize=batch_rows, **options):
            frame.columns = [str(c).strip() for c in frame.columns]
            yield offset, frame
            offset += len(frame)
    except (UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError, OSError, EOFError,
            ValueError) as exc:
        raise _csv_errors(path, exc) from None
