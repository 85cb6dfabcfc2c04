"""Reading only the columns of an ExampleGen split that a trainer stage uses.

:func:`recflow.examplegen.read_split` reads every column unless told which, and fails on a column the split lacks;
the trainers' stages need a handful of columns, some optional (context columns a log may not have). At shop scale
the rest of a split (ids, sessions, policies, prices, dwell times of a million events) is hundreds of MB of
pandas objects that no stage reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from recflow.errors import DataError
from recflow.examplegen import has_split, read_split, split_path


def split_columns(examples_dir: Path, name: str) -> list[str]:
    """The column names of split ``name`` (one Parquet file or a directory of shards). Raises DataError when
    the split is missing or unreadable."""
    import pyarrow.parquet as pq

    if not has_split(examples_dir, name):
        raise DataError(f"{examples_dir}: no {name}.parquet (run ExampleGen first: recflow.examplegen)")
    path = split_path(examples_dir, name)
    first = path if path.is_file() else next(iter(sorted(path.glob("*.parquet"))), None)
    if first is None:
        raise DataError(f"{path}: no Parquet shards in the {name} split's directory")
    try:
        return list(pq.read_schema(first).names)
    except (OSError, ValueError) as exc:
        raise DataError(f"{first}: cannot read the {name} split's schema: {exc}") from None


def read_split_columns(examples_dir: Path, name: str, wanted: Sequence[str]) -> pd.DataFrame:
    """:func:`read_split` of the columns of ``wanted`` that the split has, rows in log order."""
    present = set(split_columns(examples_dir, name))
    return read_split(examples_dir, name, columns=[c for c in dict.fromkeys(wanted) if c in present])
