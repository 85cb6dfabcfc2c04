"""Row-level checks of one table against the recflow schema, vectorised over whole columns.

Every rule comes from :mod:`recflow.schema` (required, type, minimum/maximum, allowed values, unique) plus the
rules of :class:`~recflow.config.ValidationConfig` (event timestamps inside a plausible window) and referential
integrity (events' item ids must exist in the catalog when one is known). Each violation becomes one *issue*:
the 0-based row index in the source table, the field, a :class:`Reason` code, a human-readable detail and the
offending value as text. A row with any issue is a bad row; all others are converted to the schema's types.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recflow import schema
from recflow.config import ValidationConfig
from recflow.errors import ConfigError
from recflow.schema import Field, TableKind

ISSUE_COLUMNS = ("row", "field", "reason", "detail", "value")


class Reason(StrEnum):
    """Why a value was rejected (stable codes: tests, dashboards and the quarantine file use them)."""

    MISSING = "missing"
    WRONG_TYPE = "wrong_type"
    BELOW_MINIMUM = "below_minimum"
    ABOVE_MAXIMUM = "above_maximum"
    NOT_ALLOWED = "not_allowed"
    DUPLICATE = "duplicate"
    TOO_OLD = "too_old"
    IN_FUTURE = "in_future"
    UNKNOWN_ITEM = "unknown_item"


_INT_BOUNDS = {
    pa.int8(): (-(2**7), 2**7 - 1),
    pa.int16(): (-(2**15), 2**15 - 1),
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}
_PANDAS_INT = {pa.int8(): "Int8", pa.int16(): "Int16", pa.int32(): "Int32", pa.int64(): "Int64"}


@dataclass(frozen=True)
class TableCheck:
    """The outcome of checking one table: its good rows (schema types) and one issue per violation."""

    kind: TableKind
    rows: int
    valid: pd.DataFrame
    issues: pd.DataFrame
    bad_rows: np.ndarray  # sorted 0-based row indexes with at least one issue

    @property
    def bad_count(self) -> int:
        return len(self.bad_rows)


class _Issues:
    """Collects issues as column blocks (no per-row Python objects)."""

    def __init__(self, raw: pd.DataFrame) -> None:
        self.raw = raw
        self.blocks: list[pd.DataFrame] = []

    def add(self, mask: pd.Series | np.ndarray, field: str, reason: Reason, detail: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        rows = np.flatnonzero(mask)
        values = self.raw[field].iloc[rows] if field in self.raw.columns else pd.Series([None] * len(rows))
        self.blocks.append(
            pd.DataFrame(
                {
                    "row": rows.astype(np.int64),
                    "field": field,
                    "reason": reason.value,
                    "detail": detail,
                    "value": values_as_text(values).to_numpy(),
                }
            )
        )

    def frame(self) -> pd.DataFrame:
        if not self.blocks:
            return pd.DataFrame({c: pd.Series(dtype="int64" if c == "row" else object) for c in ISSUE_COLUMNS})
        return pd.concat(self.blocks, ignore_index=True).sort_values(["row", "field"], kind="stable",
                                                                      ignore_index=True)


def values_as_text(values: pd.Series) -> pd.Series:
    """Values as strings for the quarantine and messages (nulls stay null)."""
    out = values.astype(object).where(values.notna(), None)
    return out.map(lambda v: v if v is None or isinstance(v, str) else str(v))


def _present(raw: pd.Series) -> pd.Series:
    """Non-null and, for text, not blank."""
    present = raw.notna()
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        if pd.api.types.infer_dtype(raw, skipna=True) == "string":
            trimmed = pc.utf8_trim_whitespace(pa.array(raw, type=pa.string(), from_pandas=True))
            blank = pc.fill_null(pc.equal(trimmed, ""), False).to_numpy(zero_copy_only=False)
            present &= ~blank
        else:
            present &= raw.map(lambda v: not (isinstance(v, str) and not v.strip()), na_action="ignore").fillna(
                False).astype(bool)
    return present


def _format_bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def parse_min_timestamp(config: ValidationConfig) -> pd.Timestamp:
    """``config.min_timestamp`` as a UTC timestamp (a ConfigError when it is not an ISO 8601 instant)."""
    try:
        ts = pd.Timestamp(config.min_timestamp)
    except (ValueError, TypeError):
        raise ConfigError(f"validation.min_timestamp: {config.min_timestamp!r} is not an ISO 8601 instant") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _coerce_string(raw: pd.Series, present: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(raw.dtype):
        # Ids read as floats (e.g. a CSV column with gaps in another tool) are integers written as 14.0.
        as_int = raw.where(present & np.isfinite(raw.fillna(0.0)) & (raw.fillna(0.0) % 1 == 0))
        text = as_int.astype("Int64").astype(str).where(as_int.notna(), raw.astype(str))
    elif raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        text = raw
        if pd.api.types.infer_dtype(raw, skipna=True) not in ("string", "empty"):
            text = raw.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
    else:
        text = raw.astype(str)
    return text.astype(object).where(present, None)


def _coerce_numeric(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(raw.dtype):
        return pd.Series(np.nan, index=raw.index)
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return raw.astype("float64")
    numeric_kinds = ("string", "empty", "integer", "floating", "mixed-integer-float")
    if pd.api.types.infer_dtype(raw, skipna=True) not in numeric_kinds:
        return pd.Series(np.nan, index=raw.index)  # bytes, dates, lists ...: not numbers
    return pd.to_numeric(raw.where(raw.notna(), None), errors="coerce").astype("float64")


def _coerce_timestamp(raw: pd.Series) -> pd.Series:
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        return raw.dt.tz_localize("UTC")
    if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
        # Epoch numbers are ambiguous (s? ms?); the schema asks for ISO 8601 text or a timestamp column.
        return pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    text = raw
    if pd.api.types.infer_dtype(raw, skipna=True) not in ("string", "empty"):
        text = raw.map(lambda v: v if isinstance(v, str) else (v.isoformat() if hasattr(v, "isoformat") else None),
                       na_action="ignore")
    return pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")


def check_table(
    raw: pd.DataFrame,
    kind: TableKind,
    config: ValidationConfig,
    *,
    item_ids: Iterable[str] | None = None,
    catalog_name: str = "the item catalog",
    now: pd.Timestamp | None = None,
) -> TableCheck:
    """Check every row of ``raw`` (a ``kind`` table as read) and split it into good rows and issues.

    ``item_ids``: the catalog's ids; when given, events whose ``item_id`` is not among them are bad.
    ``now``: the reference time of the future-timestamp rule (default: the current time).
    """
    issues = _Issues(raw)
    typed: dict[str, pd.Series] = {}
    for fld in schema.fields(kind):
        if fld.name not in raw.columns:
            continue
        typed[fld.name] = _check_field(raw[fld.name], fld, issues)

    if kind == "events" and "timestamp" in typed:
        ts = typed["timestamp"]
        lowest = parse_min_timestamp(config)
        now = pd.Timestamp.now(tz="UTC") if now is None else (
            now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC"))
        highest = now + pd.Timedelta(seconds=config.max_future_seconds)
        issues.add(ts.notna() & (ts < lowest), "timestamp", Reason.TOO_OLD,
                   f"before validation.min_timestamp {lowest.isoformat()}")
        issues.add(ts.notna() & (ts > highest), "timestamp", Reason.IN_FUTURE,
                   f"more than {_format_bound(config.max_future_seconds)} s after now ({now.isoformat()})")

    if kind == "events" and item_ids is not None and "item_id" in typed:
        catalog = pd.Index(pd.unique(pd.Series(list(item_ids), dtype=object).dropna()))
        ids = typed["item_id"]
        issues.add(ids.notna() & ~ids.isin(catalog), "item_id", Reason.UNKNOWN_ITEM, f"not in {catalog_name}")

    found = issues.frame()
    bad_rows = np.unique(found["row"].to_numpy(dtype=np.int64))
    good = np.ones(len(raw), dtype=bool)
    good[bad_rows] = False
    valid = pd.DataFrame({name: col[good] for name, col in typed.items()})
    for extra in (c for c in raw.columns if c not in typed):
        valid[extra] = raw[extra][good]
    return TableCheck(kind=kind, rows=len(raw), valid=valid.reset_index(drop=True), issues=found,
                      bad_rows=bad_rows)


def _check_field(raw: pd.Series, fld: Field, issues: _Issues) -> pd.Series:
    """Coerce one column to its schema type, recording missing/type/range/allowed/unique violations."""
    present = _present(raw)
    if fld.required:
        issues.add(~present, fld.name, Reason.MISSING, "required value is missing")
    kind = fld.kind
    if kind == "string":
        typed = _coerce_string(raw, present)
    elif kind == "timestamp":
        typed = _coerce_timestamp(raw.where(present, None) if raw.dtype == object else raw)
        issues.add(present & typed.isna(), fld.name, Reason.WRONG_TYPE,
                   "not a timestamp (expected ISO 8601 text such as 2026-01-05T10:00:00Z)")
        typed = typed.where(present).dt.floor("ms").astype("datetime64[ms, UTC]")
    else:
        num = _coerce_numeric(raw)
        finite = np.isfinite(num.fillna(0.0))
        bad_type = present & (num.isna() | ~finite)
        if kind == "integer":
            bad_type |= present & num.notna() & finite & (num.fillna(0.0) % 1 != 0)
            issues.add(bad_type, fld.name, Reason.WRONG_TYPE, "not an integer")
        else:
            issues.add(bad_type, fld.name, Reason.WRONG_TYPE, "not a number")
        num = num.where(present & ~bad_type)
        ok = num.notna()
        if fld.minimum is not None:
            below = num <= fld.minimum if fld.exclusive_minimum else num < fld.minimum
            op = ">" if fld.exclusive_minimum else ">="
            issues.add(ok & below, fld.name, Reason.BELOW_MINIMUM, f"must be {op} {_format_bound(fld.minimum)}")
            ok &= ~below
        if fld.maximum is not None:
            above = num > fld.maximum
            issues.add(ok & above, fld.name, Reason.ABOVE_MAXIMUM, f"must be <= {_format_bound(fld.maximum)}")
            ok &= ~above
        if kind == "integer":
            lo, hi = _INT_BOUNDS[fld.type]
            issues.add(ok & (num > hi), fld.name, Reason.ABOVE_MAXIMUM, f"does not fit {fld.type} (max {hi})")
            issues.add(ok & (num < lo), fld.name, Reason.BELOW_MINIMUM, f"does not fit {fld.type} (min {lo})")
            ok &= (num <= hi) & (num >= lo)
            typed = num.where(ok).astype(_PANDAS_INT[fld.type])
        else:
            typed = num.where(ok)
    if fld.allowed is not None:
        issues.add(typed.notna() & ~typed.isin(fld.allowed), fld.name, Reason.NOT_ALLOWED,
                   "not one of " + ", ".join(fld.allowed))
    if fld.unique:
        issues.add(typed.notna() & typed.duplicated(keep="first"), fld.name, Reason.DUPLICATE,
                   "repeats an earlier row's value (the first occurrence is kept)")
    return typed
