"""`recflow data validate`: a corpus of broken files, each with its named error, plus the quarantine and the gate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recflow import schema
from recflow.cli import main
from recflow.config import ValidationConfig
from recflow.errors import DataError, ValidationFailed
from recflow.io import write_dataset, write_table
from recflow.validation import Reason, validate_path

NOW = pd.Timestamp("2026-02-01T00:00:00Z")
LENIENT = ValidationConfig(max_bad_share=1.0)


def make_events(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A valid events table in the schema (every field filled)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "event_type": rng.choice(list(schema.EVENT_TYPES), n),
        "timestamp": pd.Timestamp("2026-01-05T00:00:00Z") + pd.to_timedelta(rng.integers(0, 86400 * 7, n), "s"),
        "user_id": [f"u{i % 7}" for i in range(n)],
        "item_id": [f"i{i % 10}" for i in range(n)],
        "session_id": [f"s{i % 5}" for i in range(n)],
        "request_id": [f"r{i // 3}" for i in range(n)],
        "position": rng.integers(0, 10, n),
        "price": rng.uniform(1, 100, n).round(2),
        "order_value": rng.uniform(1, 300, n).round(2),
        "dwell_time_s": rng.uniform(0, 60, n).round(1),
        "hour": rng.integers(0, 24, n),
        "weekday": rng.integers(0, 7, n),
        "device": rng.choice(list(schema.DEVICES), n),
        "region": "eu",
        "policy_id": "random",
        "propensity": rng.uniform(0.05, 1.0, n),
        "variant": "A",
    })


def make_items(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n)],
        "category": "shoes",
        "price": np.linspace(5, 50, n),
        "brand": "acme",
        "attributes": "color=red",
        "created_at": pd.Timestamp("2025-01-01T00:00:00Z"),
    })


def make_users(n: int = 7) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "segment": "new", "region": "eu",
                         "signup_at": pd.Timestamp("2025-06-01T00:00:00Z")})


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", events=make_events(), items=make_items(), users=make_users())
    return tmp_path / "ds"


def write_events_csv(tmp_path: Path, events: pd.DataFrame, name: str = "events.csv") -> Path:
    path = tmp_path / name
    out = events.copy()
    if "timestamp" in out and pd.api.types.is_datetime64_any_dtype(out["timestamp"]):
        out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(path, index=False)
    return path


def only_issue(report, table: str = "events") -> tuple[int, str, str, str | None]:
    issues = report.issues[report.issues["table"] == table]
    assert len(issues) == 1, issues
    rec = issues.iloc[0]
    return int(rec["row"]), rec["field"], rec["reason"], rec["value"]


# --- a clean dataset ---------------------------------------------------------------------------------------------

def test_clean_dataset_passes_and_valid_rows_have_schema_types(dataset: Path):
    report = validate_path(dataset, ValidationConfig(), now=NOW)
    assert report.passed
    assert report.rows == {"events": 40, "items": 10, "users": 7}
    assert report.bad_rows == {"events": 0, "items": 0, "users": 0}
    assert len(report.issues) == 0
    events = report.valid["events"]
    assert str(events["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert str(events["position"].dtype) == "Int32" and str(events["hour"].dtype) == "Int8"
    # the quarantine is (re)written even when empty, so a stale one never lingers
    assert pq.read_table(report.quarantine_path).num_rows == 0
    assert "PASSED" in report.format()


def test_csv_and_parquet_give_the_same_valid_rows(tmp_path: Path):
    events = make_events()
    write_table(events, tmp_path / "pq" / "events.parquet", "events")
    csv = write_events_csv(tmp_path, events)
    from_pq = validate_path(tmp_path / "pq" / "events.parquet", LENIENT, now=NOW).valid["events"]
    from_csv = validate_path(csv, LENIENT, now=NOW).valid["events"]
    pd.testing.assert_frame_equal(from_pq, from_csv, check_dtype=True)


# --- row-level problems: each gets its named field and reason ------------------------------------------------------

def _one_bad(tmp_path: Path, column: str, row: int, value, *, fmt: str = "parquet", items: bool = False,
             events: pd.DataFrame | None = None):
    events = make_events() if events is None else events
    events[column] = events[column].astype(object)
    events.loc[row, column] = value
    if fmt == "csv":
        path = write_events_csv(tmp_path, events)
    else:
        path = tmp_path / "events.parquet"
        pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path)
    if items:
        write_table(make_items(), tmp_path / "items.parquet", "items")
    return validate_path(path, LENIENT, now=NOW)


def test_missing_required_value(tmp_path: Path):
    report = _one_bad(tmp_path, "user_id", 3, None)
    assert only_issue(report) == (3, "user_id", Reason.MISSING, None)


def test_blank_required_value_is_missing(tmp_path: Path):
    report = _one_bad(tmp_path, "item_id", 4, "   ")
    assert only_issue(report)[:3] == (4, "item_id", Reason.MISSING)


def test_wrong_type_in_numeric_field(tmp_path: Path):
    report = _one_bad(tmp_path, "price", 5, "cheap", fmt="csv")
    assert only_issue(report) == (5, "price", Reason.WRONG_TYPE, "cheap")
    assert report.tables["events"].row_label(5) == "row 5 (line 7)"


def test_non_integer_position(tmp_path: Path):
    report = _one_bad(tmp_path, "position", 2, "1.5", fmt="csv")
    assert only_issue(report) == (2, "position", Reason.WRONG_TYPE, "1.5")


def test_unparseable_timestamp(tmp_path: Path):
    report = _one_bad(tmp_path, "timestamp", 6, "yesterday", fmt="csv")
    assert only_issue(report) == (6, "timestamp", Reason.WRONG_TYPE, "yesterday")


def test_negative_price(tmp_path: Path):
    report = _one_bad(tmp_path, "price", 1, -3.5)
    assert only_issue(report) == (1, "price", Reason.BELOW_MINIMUM, "-3.5")


def test_unknown_event_type(tmp_path: Path):
    report = _one_bad(tmp_path, "event_type", 7, "buy")
    row, fld, reason, value = only_issue(report)
    assert (row, fld, reason, value) == (7, "event_type", Reason.NOT_ALLOWED, "buy")


def test_timestamp_too_old(tmp_path: Path):
    report = _one_bad(tmp_path, "timestamp", 8, pd.Timestamp("1989-12-31T23:59:59Z"))
    assert only_issue(report)[:3] == (8, "timestamp", Reason.TOO_OLD)


def test_timestamp_in_the_future(tmp_path: Path):
    report = _one_bad(tmp_path, "timestamp", 9, NOW + pd.Timedelta(days=2))
    assert only_issue(report)[:3] == (9, "timestamp", Reason.IN_FUTURE)
    # within the tolerated clock skew it is fine
    ok = _one_bad(tmp_path, "timestamp", 9, NOW + pd.Timedelta(hours=23))
    assert len(ok.issues) == 0


def test_duplicate_event_id_keeps_the_first(tmp_path: Path):
    report = _one_bad(tmp_path, "event_id", 12, "e3")
    assert only_issue(report) == (12, "event_id", Reason.DUPLICATE, "e3")
    assert "e3" in set(report.valid["events"]["event_id"])


def test_unknown_item_id_against_catalog_beside_the_events(tmp_path: Path):
    report = _one_bad(tmp_path, "item_id", 10, "i999", items=True)
    assert only_issue(report) == (10, "item_id", Reason.UNKNOWN_ITEM, "i999")
    assert report.rows["items"] == 10


def test_unknown_item_id_against_explicit_catalog(tmp_path: Path):
    events = make_events()
    events.loc[0, "item_id"] = "i5"  # in the catalog below
    events.loc[1, "item_id"] = "nope"
    write_table(events, tmp_path / "ev.parquet", "events")
    write_table(make_items(), tmp_path / "cat" / "catalog.parquet", "items")
    report = validate_path(tmp_path / "ev.parquet", LENIENT, items_path=tmp_path / "cat" / "catalog.parquet",
                           now=NOW)
    bad = report.issues[report.issues["reason"] == Reason.UNKNOWN_ITEM]
    assert bad["row"].tolist() == [1]


def test_propensity_out_of_range(tmp_path: Path):
    events = make_events()
    events.loc[2, "propensity"] = 0.0  # exclusive minimum
    events.loc[3, "propensity"] = 1.5
    report = _one_bad(tmp_path, "propensity", 4, 1.0, events=events)  # 1.0 itself is allowed
    got = report.issues[["row", "field", "reason"]].values.tolist()
    assert got == [[2, "propensity", Reason.BELOW_MINIMUM], [3, "propensity", Reason.ABOVE_MAXIMUM]]


def test_hour_25(tmp_path: Path):
    report = _one_bad(tmp_path, "hour", 0, 25)
    assert only_issue(report) == (0, "hour", Reason.ABOVE_MAXIMUM, "25")


def test_duplicate_catalog_and_user_ids(tmp_path: Path):
    items = make_items()
    items.loc[9, "item_id"] = "i0"
    users = make_users()
    users.loc[6, "user_id"] = "u1"
    write_dataset(tmp_path, items=items, users=users)
    report = validate_path(tmp_path, LENIENT, now=NOW)
    assert only_issue(report, "items") == (9, "item_id", Reason.DUPLICATE, "i0")
    assert only_issue(report, "users") == (6, "user_id", Reason.DUPLICATE, "u1")


def test_several_problems_in_one_row_count_as_one_bad_row(tmp_path: Path):
    events = make_events()
    events.loc[5, "price"] = -1.0
    events.loc[5, "hour"] = 30
    write_table(events, tmp_path / "events.parquet", "events")
    report = validate_path(tmp_path, LENIENT, now=NOW)
    assert report.bad_rows["events"] == 1 and len(report.issues) == 2
    assert report.tables["events"].reason_counts == {("hour", "above_maximum"): 1, ("price", "below_minimum"): 1}


# --- unreadable files: DataError naming the file and the reason ---------------------------------------------------

def _unreadable(path: Path, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        validate_path(path, ValidationConfig(), now=NOW)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_missing_required_column(tmp_path: Path):
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(make_events().drop(columns=["timestamp"]), preserve_index=False), path)
    _unreadable(path, "missing required column.*timestamp")


def test_empty_file(tmp_path: Path):
    (tmp_path / "events.csv").write_bytes(b"")
    _unreadable(tmp_path / "events.csv", "empty")


def test_header_only_csv_has_no_rows(tmp_path: Path):
    (tmp_path / "events.csv").write_text("event_id,event_type,timestamp,user_id,item_id\n")
    _unreadable(tmp_path / "events.csv", "no rows")


def test_zero_row_parquet(tmp_path: Path):
    path = tmp_path / "events.parquet"
    write_table(make_events().iloc[:0], path, "events")
    _unreadable(path, "no rows")


def test_truncated_parquet(tmp_path: Path):
    path = tmp_path / "events.parquet"
    write_table(make_events(), path, "events")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _unreadable(path, "truncated Parquet")


def test_corrupt_parquet_footer(tmp_path: Path):
    path = tmp_path / "events.parquet"
    write_table(make_events(), path, "events")
    data = bytearray(path.read_bytes())
    data[-40:-8] = b"\xff" * 32  # inside the footer, magic intact
    path.write_bytes(bytes(data))
    _unreadable(path, "cannot read Parquet")


def test_csv_passed_as_parquet(tmp_path: Path):
    path = write_events_csv(tmp_path, make_events(), name="events.parquet")
    _unreadable(path, r"not a Parquet file \(it holds text")


def test_garbage_bytes(tmp_path: Path):
    path = tmp_path / "events.csv"
    path.write_bytes(np.random.default_rng(1).integers(128, 256, 2000, dtype=np.uint8).tobytes())
    _unreadable(path, "not UTF-8")


def test_garbage_bytes_named_parquet(tmp_path: Path):
    path = tmp_path / "events.parquet"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    _unreadable(path, "not a Parquet file")


def test_ragged_csv(tmp_path: Path):
    path = tmp_path / "events.csv"
    path.write_text("event_type,timestamp,user_id,item_id\nview,2026-01-05T00:00:00Z,u1,i1\n"
                    "view,2026-01-05T00:00:00Z,u1,i1,extra,more\n")
    _unreadable(path, "not a well-formed CSV")


def test_missing_file(tmp_path: Path):
    _unreadable(tmp_path / "nope" / "events.parquet", "no such file")


def test_directory_without_tables(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    _unreadable(tmp_path, "no events, items or users file")


def test_unrecognisable_table(tmp_path: Path):
    path = tmp_path / "export.csv"
    path.write_text("a,b\n1,2\n")
    _unreadable(path, "cannot tell whether")


# --- quarantine and the gate ------------------------------------------------------------------------------------

def test_bad_share_below_threshold_passes_and_writes_quarantine(tmp_path: Path):
    events = make_events(200)
    events.loc[[3, 50], "price"] = -1.0
    write_dataset(tmp_path, events=events, items=make_items())
    report = validate_path(tmp_path, ValidationConfig(max_bad_share=0.02), now=NOW)
    assert report.passed and report.bad_share["events"] == pytest.approx(0.01)
    report.raise_if_failed()  # no error
    assert len(report.valid["events"]) == 198
    quarantine = pq.read_table(tmp_path / "quarantine.parquet").to_pandas()
    assert quarantine["row"].tolist() == [3, 50]
    assert set(quarantine["reason"]) == {"below_minimum"} and set(quarantine["field"]) == {"price"}
    assert quarantine.loc[0, "event_id"] == "e3" and quarantine.loc[0, "price"] == "-1.0"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_bad_share_above_threshold_fails_and_names_rows(tmp_path: Path):
    events = make_events(50)
    events.loc[[1, 2, 3], "event_type"] = "buy"
    write_table(events, tmp_path / "events.parquet", "events")
    report = validate_path(tmp_path / "events.parquet", ValidationConfig(max_bad_share=0.05), now=NOW)
    assert not report.passed and report.failed_tables == ["events"]
    assert "FAILED" in report.format() and "event_type" in report.format()
    with pytest.raises(ValidationFailed, match=r"events.parquet.*row 1 event_type: not_allowed") as info:
        report.raise_if_failed()
    assert info.value.exit_code == 1


def test_cli_exit_codes(tmp_path: Path, capsys):
    events = make_events(50)
    events.loc[[1, 2, 3], "price"] = -5.0
    write_table(events, tmp_path / "events.parquet", "events")
    quarantine = tmp_path / "q" / "bad.parquet"
    args = ["data", "validate", str(tmp_path / "events.parquet"), "--quarantine", str(quarantine)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and str(quarantine) in out
    assert pq.read_table(quarantine).num_rows == 3
    assert main([*args, "--max-bad-share", "0.1"]) == 0
    assert "PASSED" in capsys.readouterr().out
    (tmp_path / "empty.parquet").write_bytes(b"")
    assert main(["data", "validate", str(tmp_path / "empty.parquet")]) == 2
    assert "empty" in capsys.readouterr().err


def test_no_traceback_reaches_the_user(tmp_path: Path):
    bad = tmp_path / "events.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    # The same entry point as the `recflow` console script (recflow.cli:main), in a fresh process.
    launcher = "import sys; from recflow.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", launcher, "data", "validate", str(bad)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_million_rows_in_seconds(tmp_path: Path):
    n = 1_000_000
    rng = np.random.default_rng(0)
    events = pd.DataFrame({
        "event_id": pd.RangeIndex(n).astype(str),
        "event_type": rng.choice(["view", "click"], n),
        "timestamp": pd.Timestamp("2026-01-05T00:00:00Z") + pd.to_timedelta(rng.integers(0, 10**6, n), "s"),
        "user_id": rng.integers(0, 5000, n).astype(str),
        "item_id": rng.integers(0, 1000, n).astype(str),
        "price": rng.uniform(-1, 100, n),
    })
    write_table(events, tmp_path / "events.parquet", "events")
    import time

    start = time.perf_counter()
    report = validate_path(tmp_path / "events.parquet", LENIENT, now=NOW)
    elapsed = time.perf_counter() - start
    assert report.bad_rows["events"] == int((events["price"] < 0).sum())
    assert elapsed < 20, elapsed  # about 2-3 s on one core; generous for a loaded CI machine


def test_schema_doc_is_generated_from_the_code():
    from recflow.validation.schema_doc import render_schema_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "schema.md").read_text(encoding="utf-8")
    assert doc == render_schema_markdown(), "regenerate: python -m recflow.validation.schema_doc > docs/schema.md"
    for kind in schema.TABLE_KINDS:
        for fld in schema.fields(kind):
            assert f"| `{fld.name}` | {fld.type} |" in doc
    for reason in Reason:
        assert f"| `{reason.value}` |" in doc
