"""Reading an ExampleGen split's rows a trainer stage uses, with strings as integer codes (issue 17).

:func:`recflow.examplegen.read_split` returns every row of a split as pandas with one Python string object per
cell (and reads ``event_id`` for its sort): at 10 million events the user, item, request and context columns of
the train split are several GB of Python strings, most of them of rows a stage then drops. Here a split is read
one Parquet row group at a time, only the columns asked for (plus the sort keys), only the event types asked
for, sorted in Arrow (stable, by ``timestamp`` then ``event_id`` as :func:`read_split` sorts), and handed to
pandas with its string columns as categoricals: int32 codes per row and each distinct string once, the
categories sorted (so sorting, grouping and modes give what the object columns give). The rows and values are
:func:`recflow.training.reading.read_split_columns`'s, filtered to the event types
(``tests/test_training_columnar.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.errors import DataError
from recflow.examplegen import has_split, split_path
from recflow.memory import release_arrow_memory
from recflow.training.reading import split_columns

#: The keys :func:`recflow.examplegen.read_split` sorts a split by (those it has), in this order.
SORT_KEYS: tuple[str, ...] = ("timestamp", "event_id")


def sorted_categories(series: pd.Series) -> pd.Series:
    """A categorical ``series`` with its unused categories dropped and the rest in sorted order (as Python
    compares them), so that its codes order the rows as its values do."""
    cat = series.cat.remove_unused_categories()
    cats = cat.cat.categories
    order = sorted(range(len(cats)), key=lambda i: cats[i])
    if order == list(range(len(cats))):
        return cat
    return cat.cat.reorder_categories([cats[i] for i in order])


#: The column :func:`read_split_events` adds with ``with_rows``: each row's file row (see there).
FILE_ROW = "_file_row"


def read_split_events(examples_dir: Path, name: str, columns: Sequence[str],
                      event_types: Sequence[str] | None = None, *, rows: np.ndarray | None = None,
                      with_rows: bool = False) -> pd.DataFrame:
    """The columns of ``columns`` that split ``name`` has, of its events whose ``event_type`` is one of
    ``event_types`` (None: every event), in log order, string columns as categoricals with sorted categories.

    Equal in rows, order and values to ``read_split_columns(examples_dir, name, columns)`` filtered to the event
    types. Raises DataError when the split is missing or unreadable.

    A row's *file row* is its position among the split's events of ``event_types`` in the order the files store
    them (file by file, row group by row group). ``with_rows`` adds it as column :data:`FILE_ROW` (int64);
    ``rows`` (file rows) keeps only those rows -- selected a row group at a time, so a read of a few rows of a
    large split holds no more than those rows and one row group -- in log order: the rows of the whole read with
    those file rows, in the same order.
    """
    import pyarrow as pa

    if not has_split(examples_dir, name):
        raise DataError(f"{examples_dir}: no {name}.parquet (run ExampleGen first: recflow.examplegen)")
    present = split_columns(examples_dir, name)
    wanted = [c for c in dict.fromkeys(columns) if c in present]
    keys = [c for c in SORT_KEYS if c in present]
    if event_types is not None and "event_type" not in present:
        raise DataError(f"{split_path(examples_dir, name)}: the {name} split has no event_type column")
    path = split_path(examples_dir, name)
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    try:
        if keys and files_in_log_order(files, keys):
            keys = []  # already in log order (as ExampleGen writes a split): the sort keys are not read at all
        parts = _row_groups(files, wanted, keys, event_types, rows, with_rows)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the {name} split: {exc}") from None
    if not parts:
        raise DataError(f"{path}: no Parquet data in the {name} split")
    table = pa.concat_tables(parts, promote_options="default")
    del parts
    order = log_order_indices(table, keys)
    out_columns = [*wanted, *([FILE_ROW] if with_rows else [])]
    table = table.select(out_columns)  # the sort keys not asked for (event_id) go before the rows are reordered
    columns_out = {}
    for column in out_columns:  # one column reordered and converted at a time, its Arrow buffers dropped after
        values = table.column(column)
        table = table.drop_columns([column])
        if order is not None:
            values = values.take(order)
        columns_out[column] = values.to_pandas(strings_to_categorical=True)
        del values
        release_arrow_memory()
    del table, order
    frame = pd.DataFrame(columns_out, copy=False)
    del columns_out
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = sorted_categories(frame[column])
    return frame


def _row_groups(files: Sequence[Path], wanted: Sequence[str], keys: Sequence[str],
                event_types: Sequence[str] | None, rows: np.ndarray | None, with_rows: bool) -> list[Any]:
    """:func:`read_split_events`' Arrow tables, one per row group of ``files``: the ``wanted`` and ``keys``
    columns of the events of ``event_types``, only the file ``rows`` (None: all), with :data:`FILE_ROW` when
    ``with_rows``, strings other than the keys dictionary-encoded."""
    import pyarrow as pa

    selected = None if rows is None else np.unique(np.asarray(rows, np.int64))
    parts = []
    offset = 0  # file rows before this row group
    for table in _event_row_groups(files, [*wanted, *keys], event_types):
        start, offset = offset, offset + table.num_rows
        here = np.arange(start, offset, dtype=np.int64)
        if selected is not None:
            lo, hi = np.searchsorted(selected, [start, offset])
            here = selected[lo:hi]
            table = table.take(pa.array(here - start, pa.int64()))
        if with_rows:
            table = table.append_column(FILE_ROW, pa.array(here, pa.int64()))
        parts.append(_encode_strings(table, keep=keys))
    return parts


def _event_row_groups(files: Sequence[Path], columns: Sequence[str],
                      event_types: Sequence[str] | None) -> Iterator[Any]:
    """Each row group of ``files`` in turn, as an Arrow table of ``columns`` and only the rows whose
    ``event_type`` is one of ``event_types`` (None: every row); ``event_type`` is read for the filter and kept
    only when ``columns`` names it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    read = list(dict.fromkeys([*columns, *(["event_type"] if event_types is not None else [])]))
    allowed = pa.array([str(t) for t in event_types], pa.string()) if event_types is not None else None
    for file in files:
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=read)
            if allowed is not None:
                table = table.filter(pc.is_in(table["event_type"], value_set=allowed))
                if "event_type" not in columns:
                    table = table.drop_columns(["event_type"])  # read for the filter only
            yield table


def has_missing(examples_dir: Path, name: str, column: str, event_types: Sequence[str] | None = None) -> bool:
    """Whether split ``name`` lacks ``column``, or any of its events of ``event_types`` (None: every event) has
    it missing. Reads that column (and ``event_type``) one row group at a time and converts nothing to pandas,
    so checking a column costs one row group's memory, not the column's. Raises DataError as
    :func:`read_split_events` does."""
    if not has_split(examples_dir, name):
        raise DataError(f"{examples_dir}: no {name}.parquet (run ExampleGen first: recflow.examplegen)")
    present = split_columns(examples_dir, name)
    if column not in present:
        return True
    if event_types is not None and "event_type" not in present:
        raise DataError(f"{split_path(examples_dir, name)}: the {name} split has no event_type column")
    path = split_path(examples_dir, name)
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    try:
        return any(t[column].null_count > 0 for t in _event_row_groups(files, [column], event_types))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the {name} split: {exc}") from None


def files_in_log_order(files: Sequence[Path], keys: Sequence[str], types: Mapping[str, Any] | None = None) -> bool:
    """Whether the rows of ``files`` (in this order) are already sorted by ``keys`` (:data:`SORT_KEYS` the files
    have: ``timestamp``, then ``event_id``) as a stable sort with missing values last would sort them
    (:func:`log_order_indices`), read one row group's keys at a time (never every row's event id at once: about
    300 MB at 8 million events). ``types``: each key cast to this type first (the files' common schema). Times
    are compared in nanoseconds, whatever unit each file stores. False -- then the full sort decides -- also when
    a time is missing or not a time, or equal times have a missing event id."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not keys or keys[0] != "timestamp":
        return False
    has_ids = "event_id" in keys
    last_stamp: int | None = None
    last_id: Any = None
    for file in files:
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=list(keys))
            ts = table.column("timestamp")
            if types is not None and "timestamp" in types:
                ts = ts.cast(types["timestamp"])
            if ts.null_count or not (pa.types.is_timestamp(ts.type) or pa.types.is_integer(ts.type)):
                return False
            if pa.types.is_timestamp(ts.type):
                ts = ts.cast(pa.timestamp("ns", tz=ts.type.tz))
            stamps = ts.cast("int64").to_numpy()
            if not len(stamps):
                continue
            ids = table.column("event_id").combine_chunks() if has_ids else None
            if ids is not None and types is not None and "event_id" in types:
                ids = ids.cast(types["event_id"])
            if last_stamp is not None and stamps[0] <= last_stamp:  # the seam with the previous row group
                if stamps[0] < last_stamp:
                    return False
                if ids is not None and (last_id is None or not ids[0].is_valid or last_id > ids[0].as_py()):
                    return False
            steps = np.diff(stamps)
            if (steps < 0).any():
                return False
            tied = np.flatnonzero(steps == 0)
            if tied.size and ids is not None:
                before, after = ids.take(tied), ids.take(tied + 1)
                if before.null_count or after.null_count or not pc.all(pc.less_equal(before, after)).as_py():
                    return False
            last_stamp = int(stamps[-1])
            last_id = ids[-1].as_py() if ids is not None else None
    return True


def log_order_indices(table: Any, keys: Sequence[str]) -> Any:
    """The row order that sorts ``table`` by ``keys`` (Arrow's stable sort), or None when the rows are already in
    it (ExampleGen writes its splits in log order: then no reordered copy of any column is made)."""
    import pyarrow.compute as pc

    if not keys or not table.num_rows:
        return None
    order = pc.sort_indices(table.select(keys), sort_keys=[(k, "ascending") for k in keys])
    if np.array_equal(order.to_numpy(), np.arange(len(order), dtype=np.uint64)):
        return None
    return order


def _encode_strings(table: Any, keep: Sequence[str]) -> Any:
    """``table`` with its string columns other than ``keep`` dictionary-encoded (each distinct string of the row
    group once, an int32 index a row); pandas reads such a column as a categorical."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if field.name not in keep and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            table = table.set_column(i, field.name, pc.dictionary_encode(table.column(i)))
    return table


def concat_categorical(frames: Sequence[pd.DataFrame], consume: bool = False) -> pd.DataFrame:
    """``pd.concat(frames, ignore_index=True)`` keeping each column that is categorical in every frame
    categorical (categories: the union, sorted) instead of turning it into Python objects. ``consume``: each
    column is deleted from the frames once concatenated (the frames end empty), so the input and the result are
    not both held whole."""
    from pandas.api.types import union_categoricals

    if not frames:
        raise ValueError("concat_categorical: no frames")
    columns = list(frames[0].columns)
    out: dict[str, object] = {}
    for column in columns:
        series = [f[column] for f in frames]
        if all(isinstance(s.dtype, pd.CategoricalDtype) for s in series):
            out[column] = sorted_categories(pd.Series(union_categoricals(series, ignore_order=True)))
        else:
            out[column] = pd.concat(series, ignore_index=True)
        if consume:
            del series
            for f in frames:
                del f[column]
    return pd.DataFrame(out, copy=False)  # (a dict's columns are copied by default)


def category_codes(series: pd.Series, mapping: dict[str, int] | None = None, default: int = -1) -> np.ndarray:
    """Each row's ``mapping`` value of its string (``default`` when absent or missing), computed once per
    category of a categorical ``series`` (else once per row)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        table = np.array([default if mapping is None else mapping.get(str(c), default)
                          for c in series.cat.categories], np.int64)
        codes = series.cat.codes.to_numpy()
        return np.where(codes >= 0, table[np.maximum(codes, 0)] if len(table) else default, default)
    return np.array([default if (mapping is None or pd.isna(v)) else mapping.get(str(v), default)
                     for v in series.to_numpy()], np.int64)


def object_values(series: pd.Series) -> np.ndarray:
    """A categorical ``series`` as an object array (each distinct string shared, missing values None as pandas
    reads them from Parquet); any other series as ``to_numpy()``."""
    if not isinstance(series.dtype, pd.CategoricalDtype):
        return series.to_numpy()
    cats = np.empty(len(series.cat.categories) + 1, object)
    cats[:-1] = list(series.cat.categories)
    cats[-1] = None
    return cats[series.cat.codes.to_numpy()]


def distinct_values(examples_dir: Path, name: str, column: str) -> list[str]:
    """The distinct values of ``column`` in split ``name`` as strings (a missing value as ``'None'``, as
    ``astype(str)`` writes it), sorted: what ``read_split(...)[column].astype(str).unique()`` sorted gives, read a
    row group at a time with only that column. Raises DataError when the split or the column is missing."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not has_split(examples_dir, name):
        raise DataError(f"{examples_dir}: no {name}.parquet (run ExampleGen first: recflow.examplegen)")
    if column not in split_columns(examples_dir, name):
        raise DataError(f"{split_path(examples_dir, name)}: the {name} split has no {column} column")
    path = split_path(examples_dir, name)
    seen: set[str] = set()
    try:
        for file in [path] if path.is_file() else sorted(path.glob("*.parquet")):
            parquet = pq.ParquetFile(file)
            for group in range(parquet.num_row_groups):
                values = pc.unique(parquet.read_row_group(group, columns=[column]).column(0))
                if values.null_count:
                    seen.add("None")
                    values = values.drop_null()
                if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
                    seen.update(str(v) for v in values.to_pylist())
                else:
                    seen.update(values.to_pylist())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the {name} split: {exc}") from None
    return sorted(seen)


def string_values(series: pd.Series) -> np.ndarray:
    """``series.astype(str).to_numpy()`` (a missing value as ``'None'``), a categorical's strings made once per
    category and shared by its rows."""
    if not isinstance(series.dtype, pd.CategoricalDtype):
        return series.astype(str).to_numpy()
    cats = np.array([str(c) for c in series.cat.categories] + ["None"], object)
    return cats[series.cat.codes.to_numpy()]


def with_user_region(frame: pd.DataFrame, examples_dir: Path, wanted: Sequence[str]) -> pd.DataFrame:
    """``frame`` with the users file's ``region`` merged on ``user_id`` (a left join; the user ids become
    objects for it) when ``wanted`` names ``region``, ``frame`` lacks it and ExampleGen wrote ``users.parquet``;
    otherwise ``frame`` unchanged. The context features' region when the events do not log it."""
    users_path = Path(examples_dir) / "users.parquet"
    if "region" not in wanted or "region" in frame.columns or not users_path.is_file():
        return frame
    frame["user_id"] = frame["user_id"].astype(object)
    return frame.merge(pd.read_parquet(users_path)[["user_id", "region"]], on="user_id", how="left")
