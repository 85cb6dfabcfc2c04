"""Render docs/schema.md from :mod:`recflow.schema`, so the documentation cannot drift from the code.

Regenerate with ``python -m recflow.validation.schema_doc > docs/schema.md``; a test compares the file with
:func:`render_schema_markdown`.
"""

from __future__ import annotations

import sys

from recflow import schema
from recflow.schema import Field
from recflow.validation.checks import Reason

_TITLES = {"events": "events: one row per interaction", "items": "items: the catalog", "users": "users"}

#: Rules the validator adds beyond the field definitions (recflow.validation.checks.check_table).
_EXTRA_RULES = {
    ("events", "timestamp"): "not before `validation.min_timestamp`, not after now + `validation.max_future_seconds`",
    ("events", "item_id"): "in the item catalog when one is given",
}

_REASONS = {
    Reason.MISSING: "a required field is null or blank",
    Reason.WRONG_TYPE: "the value cannot be read as the field's type (number, integer, ISO 8601 timestamp)",
    Reason.BELOW_MINIMUM: "below the field's minimum (or equal to an exclusive minimum), or below its integer type",
    Reason.ABOVE_MAXIMUM: "above the field's maximum or its integer type's range",
    Reason.NOT_ALLOWED: "not one of the field's allowed values",
    Reason.DUPLICATE: "repeats the value of an earlier row in a unique field (the first occurrence is kept)",
    Reason.TOO_OLD: "an event timestamp before `validation.min_timestamp`",
    Reason.IN_FUTURE: "an event timestamp later than now + `validation.max_future_seconds`",
    Reason.UNKNOWN_ITEM: "an event's `item_id` is not in the item catalog (checked when a catalog is present)",
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def field_rules(fld: Field) -> str:
    """The rules of one field as a short phrase for the docs table."""
    rules = []
    if fld.minimum is not None:
        rules.append(f"{'>' if fld.exclusive_minimum else '>='} {_number(fld.minimum)}")
    if fld.maximum is not None:
        rules.append(f"<= {_number(fld.maximum)}")
    if fld.allowed is not None:
        rules.append("one of " + ", ".join(f"`{v}`" for v in fld.allowed))
    if fld.unique:
        rules.append("unique")
    return "; ".join(rules) or "-"


def render_schema_markdown() -> str:
    """The whole docs/schema.md text."""
    out = [
        f"# The recflow data schema, version {schema.SCHEMA_VERSION}",
        "",
        "<!-- Generated from recflow/schema.py by `python -m recflow.validation.schema_doc > docs/schema.md`;",
        "     do not edit by hand (tests/test_validation.py fails when this file is out of date). -->",
        "",
        "Three tables, stored as Parquet (CSV is accepted as input) with the table name and schema version in the",
        f"file's key-value metadata (`{schema.METADATA_SCHEMA_KEY.decode()}`, "
        f"`{schema.METADATA_VERSION_KEY.decode()}`). Standard file names in a dataset directory: "
        + ", ".join(f"`{name}`" for name in schema.FILE_NAMES.values()) + ".",
        "Only the required fields must be present; every other field is optional, and columns the schema does",
        "not know are kept as they are. Timestamps are UTC with millisecond precision (ISO 8601 text in CSV;",
        "text without an offset is read as UTC).",
        "",
    ]
    for kind in schema.TABLE_KINDS:
        out += [f"## {_TITLES[kind]}", "", "| field | type | required | rules | description |",
                "|---|---|---|---|---|"]
        for fld in schema.fields(kind):
            rules = "; ".join(r for r in (field_rules(fld), _EXTRA_RULES.get((kind, fld.name))) if r and r != "-")
            out.append(f"| `{fld.name}` | {fld.type} | {'yes' if fld.required else 'no'} | {rules or '-'} | "
                       f"{fld.description} |")
        out.append("")
    out += [
        "## Validation (`recflow data validate PATH`)",
        "",
        "A file that cannot be used at all (missing, empty, not Parquet or CSV, truncated, not UTF-8, no rows,",
        "a required column missing) is an error naming the file and the reason (exit code 2). Otherwise every",
        "row is checked against the rules above; each violation is one record in the quarantine file",
        "(Parquet, `validation.quarantine_name` beside the data unless `--quarantine` says otherwise) with the",
        "columns `table, file, row, field, reason, detail, value` followed by the bad row's original values as",
        "text. `row` is the 0-based index of the row in its table (Parquet row index; in a CSV file the first",
        "data line is row 0, i.e. line `row + 2` counting the header as line 1). A row with several problems",
        "appears once per problem but counts once. The command fails (exit code 1) when any table's share of bad",
        "rows exceeds `validation.max_bad_share`.",
        "",
        "A table may also be a directory of shards (`events/` or `events.parquet/` holding `*.parquet` or `*.csv`",
        "files of one format and the same columns): its files are read in name order, `file` is the directory",
        "and `row` counts across the shards in that order.",
        "",
        "| reason | meaning |",
        "|---|---|",
        *[f"| `{reason.value}` | {text} |" for reason, text in _REASONS.items()],
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render_schema_markdown())
