"""Reading and writing recflow tables, atomically.

Writes go to a temporary file next to the target and are renamed into place, so a crash or a full disk never
leaves a half-written artifact where a reader would take it for a whole one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recflow import schema
from recflow.schema import TableKind


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s directory; on success rename it onto ``target``, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished temporary directory onto ``out_dir`` (replacing an older one) with renames only, so a
    reader never sees a half-written output directory."""
    import shutil

    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old.{tmp_dir.name}")
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``out_dir`` to write an output into; on success it replaces
    ``out_dir`` (:func:`replace_dir`: renames only, a reader never sees a half-written directory), on any
    error it is deleted and ``out_dir`` is left as it was."""
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def to_arrow(df: pd.DataFrame, kind: TableKind) -> pa.Table:
    """Convert a DataFrame holding (a subset of) ``kind``'s fields to an Arrow table with the schema's types.

    Unknown columns are kept after the schema's columns (a shop's extra fields are not thrown away).
    """
    known = [f.name for f in schema.fields(kind) if f.name in df.columns]
    target = schema.arrow_schema(kind, known)
    arrays = []
    for fld in target:
        col = df[fld.name]
        if pa.types.is_timestamp(fld.type):  # the schema keeps milliseconds: finer clocks are truncated to them
            col = pd.to_datetime(col, utc=True).dt.floor("ms")
        arrays.append(pa.array(col, type=fld.type, from_pandas=True))
    table = pa.Table.from_arrays(arrays, schema=target)
    for extra in (c for c in df.columns if c not in known):
        table = table.append_column(str(extra), pa.array(df[extra], from_pandas=True))
    return table.replace_schema_metadata(target.metadata)


def write_table(data: pd.DataFrame | pa.Table, path: str | os.PathLike[str], kind: TableKind) -> Path:
    """Write a table as Parquet atomically and return its path."""
    table = data if isinstance(data, pa.Table) else to_arrow(data, kind)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def write_dataset(out_dir: str | os.PathLike[str], **tables: pd.DataFrame | pa.Table) -> dict[str, Path]:
    """Write ``events=``, ``items=``, ``users=`` tables into a dataset directory under their standard names."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for kind in tables:
        if kind not in schema.TABLE_KINDS:
            raise ValueError(f"unknown table kind {kind!r}")
    for table_kind in schema.TABLE_KINDS:
        if table_kind in tables:
            written[table_kind] = write_table(tables[table_kind], out / schema.FILE_NAMES[table_kind], table_kind)
    return written


def epoch_seconds(values: object) -> np.ndarray:
    """Seconds since the Unix epoch (float64) of date/times, whatever their stored resolution.

    Parquet timestamps come back as ``datetime64[ms]``, ``[us]`` or ``[ns]``; ``astype("int64")`` of them counts
    in that unit, so dividing by 1e9 is right only for nanoseconds. This is unit-safe.
    """
    ts = pd.to_datetime(pd.Series(values) if not isinstance(values, pd.Series) else values, utc=True)
    return ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
