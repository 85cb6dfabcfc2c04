"""The outcome of validating a dataset: counts, the printed summary, the quarantine file, the pass/fail gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recflow.errors import ValidationFailed
from recflow.io import atomic_path
from recflow.validation.checks import values_as_text

#: Columns the quarantine adds in front of the bad row's own values (all text).
QUARANTINE_META_COLUMNS = ("table", "file", "row", "field", "reason", "detail", "value")


@dataclass(frozen=True)
class TableReport:
    """Counts for one validated file."""

    kind: str
    path: Path
    format: str
    rows: int
    bad_rows: int
    reason_counts: dict[tuple[str, str], int]

    @property
    def bad_share(self) -> float:
        return self.bad_rows / self.rows if self.rows else 0.0

    def row_label(self, row: int) -> str:
        """How to find a row in the source: 0-based index, plus the line number for CSV (header is line 1)."""
        single_csv = self.format == "csv" and not self.path.is_dir()  # a shard directory has no one line number
        return f"row {row} (line {row + 2})" if single_csv else f"row {row}"


@dataclass
class ValidationReport:
    """What ``recflow data validate`` found.

    ``passed`` holds when no table's bad share exceeds ``max_bad_share`` (unreadable files raise instead).
    ``valid`` maps each table kind to its good rows converted to the schema's types; ``issues`` has one row per
    violation (``table, file, row, field, reason, detail, value``; ``row`` is the 0-based row index).
    """

    tables: dict[str, TableReport]
    max_bad_share: float
    quarantine_path: Path | None
    valid: dict[str, pd.DataFrame]
    issues: pd.DataFrame = field(repr=False)

    @property
    def rows(self) -> dict[str, int]:
        return {k: t.rows for k, t in self.tables.items()}

    @property
    def bad_rows(self) -> dict[str, int]:
        return {k: t.bad_rows for k, t in self.tables.items()}

    @property
    def bad_share(self) -> dict[str, float]:
        return {k: t.bad_share for k, t in self.tables.items()}

    @property
    def reason_counts(self) -> dict[tuple[str, str, str], int]:
        """Issues counted by (table, field, reason), most frequent first."""
        pairs = [((kind, f, r), n) for kind, t in self.tables.items() for (f, r), n in t.reason_counts.items()]
        return dict(sorted(pairs, key=lambda p: (-p[1], p[0])))

    @property
    def failed_tables(self) -> list[str]:
        return [k for k, t in self.tables.items() if t.bad_share > self.max_bad_share]

    @property
    def passed(self) -> bool:
        return not self.failed_tables

    def format(self, top: int = 10) -> str:
        """The human summary printed by the CLI."""
        lines = ["table    file                                     rows        bad   share"]
        for kind, t in self.tables.items():
            name = str(t.path) if len(str(t.path)) <= 38 else "..." + str(t.path)[-35:]
            mark = "  > threshold" if t.bad_share > self.max_bad_share else ""
            lines.append(f"{kind:<8} {name:<38} {t.rows:>10,} {t.bad_rows:>10,} {t.bad_share:>7.2%}{mark}")
        counts = self.reason_counts
        if counts:
            lines += ["", "top reasons:", "  table    field            reason          count  example"]
            examples = self._examples()
            for (kind, fld, reason), n in list(counts.items())[:top]:
                ex = examples.get((kind, fld, reason), "")
                lines.append(f"  {kind:<8} {fld:<16} {reason:<14} {n:>7,}  {ex}")
            if len(counts) > top:
                lines.append(f"  ... and {len(counts) - top} more (field, reason) pairs in the quarantine")
        lines.append("")
        lines.append(f"threshold: at most {self.max_bad_share:.2%} bad rows per table (validation.max_bad_share)")
        if self.quarantine_path is not None and len(self.issues):
            lines.append(f"quarantine: {self.quarantine_path} ({len(self.issues):,} issues)")
        verdict = "PASSED" if self.passed else "FAILED: " + ", ".join(
            f"{k} has {self.tables[k].bad_share:.2%} bad rows" for k in self.failed_tables)
        lines.append(verdict)
        return "\n".join(lines)

    def _examples(self) -> dict[tuple[str, str, str], str]:
        if not len(self.issues):
            return {}
        first = self.issues.drop_duplicates(["table", "field", "reason"])
        out = {}
        for rec in first.itertuples(index=False):
            label = self.tables[rec.table].row_label(int(rec.row))
            out[(rec.table, rec.field, rec.reason)] = f"{label}: {rec.value!r} {rec.detail}"
        return out

    def raise_if_failed(self, examples: int = 5) -> None:
        """Raise :class:`~recflow.errors.ValidationFailed` naming files, example rows, fields and reasons."""
        if self.passed:
            return
        parts = []
        for kind in self.failed_tables:
            t = self.tables[kind]
            sample = self.issues[self.issues["table"] == kind].head(examples)
            shown = "; ".join(
                f"{t.row_label(int(r.row))} {r.field}: {r.reason} ({r.detail}; value {r.value!r})"
                for r in sample.itertuples(index=False)
            )
            parts.append(
                f"{t.path}: {t.bad_rows:,} of {t.rows:,} rows bad ({t.bad_share:.2%} > "
                f"{self.max_bad_share:.2%}), e.g. {shown}"
            )
        where = f" (all bad rows: {self.quarantine_path})" if self.quarantine_path is not None else ""
        raise ValidationFailed("data validation failed: " + " | ".join(parts) + where)


def quarantine_block(issues: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """One table's issues (``row`` a position in ``raw``), then the offending rows' original values as text."""
    rows = issues["row"].to_numpy()
    values = raw.iloc[rows].reset_index(drop=True)
    values = pd.DataFrame({c: values_as_text(values[c]).to_numpy() for c in values.columns})
    renamed = {c: f"data_{c}" for c in values.columns if c in QUARANTINE_META_COLUMNS}
    return pd.concat([issues.reset_index(drop=True), values.rename(columns=renamed)], axis=1)


def quarantine_table(blocks: list[pd.DataFrame]) -> pa.Table:
    """The quarantine file's table from :func:`quarantine_block` blocks (all text but the 0-based ``row``)."""
    meta = [pd.DataFrame({c: pd.Series(dtype=object) for c in QUARANTINE_META_COLUMNS})]
    frame = pd.concat(meta + blocks, ignore_index=True) if blocks else meta[0]
    fields, arrays = [], []
    for col in frame.columns:
        if col == "row":
            fields.append(pa.field(col, pa.int64()))
            arrays.append(pa.array(frame[col].to_numpy(dtype="int64"), type=pa.int64()))
        else:
            fields.append(pa.field(col, pa.string()))
            values = frame[col].astype(object).where(frame[col].notna(), None)
            arrays.append(pa.array(values, type=pa.string(), from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={b"recflow.quarantine": b"1"}))


def build_quarantine(issues: pd.DataFrame, raw_tables: dict[str, pd.DataFrame]) -> pa.Table:
    """One row per issue: the issue's columns, then the offending row's original values as text."""
    blocks = []
    for kind, raw in raw_tables.items():
        mine = issues[issues["table"] == kind]
        if len(mine):
            blocks.append(quarantine_block(mine, raw))
    return quarantine_table(blocks)


def write_quarantine(table: pa.Table, path: Path) -> Path:
    """Write the quarantine atomically (a reader never sees a half-written file)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path
