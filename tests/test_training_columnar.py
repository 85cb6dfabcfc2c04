"""The trainers' columnar readers (strings as codes, a row group at a time) give what reading whole splits with
pandas gave (issue 17): recflow.training.columnar, and load_events, user_context and the history ranker's
impressions built on it. The reference functions below are the whole-split pandas code they replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recflow.errors import DataError
from recflow.examplegen import read_split
from recflow.training.columnar import category_codes, concat_categorical, object_values, read_split_events

TYPES = np.array(["impression", "click", "view", "add_to_cart", "purchase", "remove_from_cart"], object)


def _events(n: int, seed: int, t0: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(t0, tz="UTC")
    imp = rng.random(n) < 0.6
    frame = pd.DataFrame({
        "event_id": [f"e{seed}-{i:05d}" for i in rng.permutation(n)],
        "event_type": np.where(imp, "impression", TYPES[rng.integers(1, 6, n)]),
        # few distinct seconds: many ties, broken by event_id
        "timestamp": start + pd.to_timedelta(rng.integers(0, n // 5, n), unit="s"),
        "user_id": [f"u{u}" for u in rng.integers(0, 40, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 25, n)],
        "request_id": [f"r{r}" for r in rng.integers(0, n // 4, n)],
        "position": rng.integers(0, 10, n).astype(np.int32),
        "propensity": rng.uniform(0.05, 1.0, n),
        "hour": rng.integers(0, 24, n).astype(np.int8),
        "device": rng.choice(np.array(["mobile", "desktop", "tablet"], object), n),
        "region": rng.choice(np.array(["north", "south", "zeta", "alpha"], object), n),
        "dwell_time_s": rng.random(n),
    })
    frame.loc[rng.random(n) < 0.1, "device"] = None  # missing context values
    clicks = frame.index[frame["event_type"] == "click"]
    # most clicks label an earlier impression of the same user, item and request
    source = frame.index[imp][rng.integers(0, imp.sum(), len(clicks))]
    for col in ("user_id", "item_id", "request_id"):
        frame.loc[clicks, col] = frame.loc[source, col].to_numpy()
    return frame


def _write(ex: Path, name: str, frame: pd.DataFrame, sharded: bool) -> None:
    ex.mkdir(parents=True, exist_ok=True)
    if not sharded:
        frame.to_parquet(ex / f"{name}.parquet", index=False)
        return
    shard_dir = ex / f"{name}.parquet"
    shard_dir.mkdir()
    order = np.random.default_rng(1).permutation(len(frame))  # shards not in log order
    for k, part in enumerate(np.array_split(order, 3)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False),
                       shard_dir / f"part-{k:05d}.parquet", row_group_size=97)  # several row groups each


@pytest.fixture(params=[False, True], ids=["one_file", "shards"])
def examples(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    ex = tmp_path / "ex"
    _write(ex, "train", _events(1500, 1, "2026-01-05"), request.param)
    _write(ex, "eval", _events(400, 2, "2026-01-20"), request.param)
    return ex


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as the object columns pandas reads (missing: None)."""
    return pd.DataFrame({c: (object_values(frame[c]) if isinstance(frame[c].dtype, pd.CategoricalDtype)
                             else frame[c]) for c in frame.columns})


@pytest.mark.parametrize("types", [None, ("impression", "click"), ("view", "purchase")])
def test_read_split_events_equals_read_split_filtered(examples: Path, types) -> None:
    columns = ["user_id", "timestamp", "device", "hour", "item_id", "not_there"]
    got = read_split_events(examples, "train", columns, types)
    whole = read_split(examples, "train")
    if types is not None:
        whole = whole[whole["event_type"].isin(types)].reset_index(drop=True)
    assert list(got.columns) == ["user_id", "timestamp", "device", "hour", "item_id"]
    assert isinstance(got["user_id"].dtype, pd.CategoricalDtype)
    assert list(got["user_id"].cat.categories) == sorted(got["user_id"].cat.categories)
    pd.testing.assert_frame_equal(_plain(got), whole[list(got.columns)], check_dtype=True)
    with pytest.raises(DataError, match="no test.parquet"):
        read_split_events(examples, "test", ["user_id"])


def test_concat_and_codes_helpers() -> None:
    a = pd.DataFrame({"s": pd.Categorical(["b", "a", None]), "n": [1, 2, 3]})
    b = pd.DataFrame({"s": pd.Categorical(["c", "a"]), "n": [4, 5]})
    both = concat_categorical([a, b])
    assert list(both["s"].cat.categories) == ["a", "b", "c"]
    assert object_values(both["s"]).tolist() == ["b", "a", None, "c", "a"]
    assert both["n"].tolist() == [1, 2, 3, 4, 5]
    assert category_codes(both["s"], {"a": 7, "c": 9}).tolist() == [-1, 7, -1, 9, 7]
    assert category_codes(pd.Series(["a", None, "c"], dtype=object), {"a": 7, "c": 9}).tolist() == [7, -1, 9]
    # consume: the same frame, each column deleted from the inputs once concatenated
    frames = [a.copy(), b.copy()]
    consumed = concat_categorical(frames, consume=True)
    pd.testing.assert_frame_equal(consumed, both)
    assert [list(f.columns) for f in frames] == [[], []]


def _old_load_events(examples_dir, splits, item_rows, oov_row, event_weights):
    from recflow.io import epoch_seconds
    from recflow.models.sequence import EVENT_TYPE_CODES
    from recflow.training.sequence_retrieval import HISTORY_TYPES

    frames = []
    for name in splits:
        df = read_split(examples_dir, name, columns=["user_id", "item_id", "event_type", "timestamp"])
        frames.append(df[df["event_type"].isin(HISTORY_TYPES)].assign(_split=name))
    ev = pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable")
    users = ev["user_id"].astype(str).to_numpy(object)
    _, user_rows = np.unique(users, return_inverse=True)
    items = ev["item_id"].astype(str).to_numpy(object)
    types = ev["event_type"].astype(str).to_numpy(object)
    return dict(user_ids=users, user_rows=user_rows.astype(np.int64), item_ids=items,
                item_rows=np.array([item_rows.get(i, oov_row) for i in items], np.int64), event_types=types,
                type_codes=np.array([EVENT_TYPE_CODES[t] for t in types], np.int64),
                seconds=epoch_seconds(pd.to_datetime(ev["timestamp"], utc=True)),
                weights=np.array([float(event_weights.get(t, 0.0)) for t in types], np.float32),
                split=ev["_split"].to_numpy(object))


@pytest.mark.parametrize("splits", [("train",), ("train", "eval")])
def test_load_events_equals_the_whole_split_pandas_path(examples: Path, splits) -> None:
    from dataclasses import asdict

    from recflow.training.sequence_retrieval import load_events

    rows = {f"i{i}": i for i in range(0, 25, 2)}  # half the items outside the vocabulary: the OOV row
    weights = {"view": 1.0, "click": 2.0, "purchase": 0.5}
    got = asdict(load_events(examples, splits, rows, 99, weights))
    want = _old_load_events(examples, splits, rows, 99, weights)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("splits", [("train",), ("train", "eval")])
def test_history_codes_equal_load_events_arrays_and_give_the_same_ranker_events(examples: Path, splits) -> None:
    """The history ranker's lean loader: load_events' integer arrays without its per-event objects."""
    from recflow.training.history_ranking import ranker_events, ranker_events_of_codes
    from recflow.training.sequence_retrieval import load_events, load_history_codes

    rows = {f"i{i}": i for i in range(0, 25, 2)}
    full = load_events(examples, splits, rows, 99, {"view": 1.0})
    codes = load_history_codes(examples, splits, rows, 99)
    for key in ("user_rows", "item_rows", "type_codes", "seconds"):
        assert getattr(codes, key).dtype == getattr(full, key).dtype, key
        np.testing.assert_array_equal(getattr(codes, key), getattr(full, key), err_msg=key)
    np.testing.assert_array_equal(codes.user_ids[codes.user_rows], full.user_ids)
    want, got = ranker_events(full), ranker_events_of_codes(codes)
    for key in ("user_rows", "item_rows", "type_codes", "seconds", "row_user_ids"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
        assert getattr(got, key).dtype == getattr(want, key).dtype, key


def _old_user_context(examples_dir, spec):
    from recflow.features.transform import coerce_raw
    from recflow.training.reading import read_split_columns

    names = list(spec["context_features"])
    columns = ["user_id", "timestamp", *names]
    events = pd.concat([read_split_columns(examples_dir, s, columns) for s in ("train", "eval")],
                       ignore_index=True).sort_values("timestamp", kind="stable")
    present = [n for n in names if n in events.columns]
    latest = events.groupby("user_id", sort=True)[present].last().reset_index()
    default = {n: (events[n].mode().iloc[0] if n in events.columns and events[n].notna().any()
                   else spec["fill_values"].get(n, "")) for n in names}
    for n in names:
        latest[n] = latest[n].fillna(default[n]) if n in latest.columns else default[n]
    latest = coerce_raw(latest, spec, spec["fill_values"])
    default = {k: (v.item() if hasattr(v, "item") else v) for k, v in default.items()}
    return latest, default


def test_user_context_equals_the_whole_split_pandas_path(examples: Path, tmp_path: Path) -> None:
    from recflow.training.tfrs_trainer import user_context

    spec = {"context_features": ["device", "hour", "region", "weekday"],
            "raw_features": {"user_id": "string", "device": "string", "hour": "int64", "region": "string",
                             "weekday": "int64"},
            "fill_values": {"device": "", "hour": 0, "region": "", "weekday": 3}}
    got, got_default = user_context(examples, spec)
    want, want_default = _old_user_context(examples, spec)
    pd.testing.assert_frame_equal(got, want)
    assert got_default == want_default
    got.to_parquet(tmp_path / "a.parquet", index=False)
    want.to_parquet(tmp_path / "b.parquet", index=False)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def _old_impressions(examples_dir, context_columns):
    from recflow.features.transform import label_impressions
    from recflow.io import epoch_seconds
    from recflow.training.history_ranking import IMPRESSION_COLUMNS
    from recflow.training.reading import read_split_columns

    frames = []
    for split in ("train", "eval"):
        df = read_split_columns(examples_dir, split, IMPRESSION_COLUMNS + tuple(context_columns))
        frames.append(df[df["event_type"].isin(("impression", "click"))].assign(_split=split))
    events = pd.concat(frames, ignore_index=True)
    events["clicked"] = label_impressions(events)
    imp = events[events["event_type"] == "impression"].copy()
    imp["_seconds"] = epoch_seconds(imp["timestamp"])
    return imp.reset_index(drop=True)


@pytest.mark.parametrize("requests", [True, False], ids=["by_request", "by_time"])
def test_impressions_equal_the_whole_split_pandas_path(examples: Path, requests: bool) -> None:
    from recflow.training.history_ranking import _impressions

    if not requests:  # no request ids logged: clicks label impressions of the 30 minutes before
        for name in ("train", "eval"):
            frame = read_split(examples, name)
            path = examples / f"{name}.parquet"
            if path.is_dir():
                for part in path.glob("*.parquet"):
                    part.unlink()
                path.rmdir()
            frame.drop(columns=["request_id"]).to_parquet(path, index=False)
    got = _impressions(examples, ["device", "hour", "region"])
    want = _old_impressions(examples, ["device", "hour", "region"])
    assert 0 < got["clicked"].sum() < len(got)
    kept = [c for c in want.columns if c not in ("event_type", "request_id", "timestamp")]  # read for the labels
    assert list(got.columns) == kept
    pd.testing.assert_frame_equal(_plain(got), want[kept], check_dtype=False)
    assert got["clicked"].dtype == want["clicked"].dtype


def test_distinct_values_equal_the_split_columns_distinct_strings(examples: Path) -> None:
    from recflow.training.columnar import distinct_values

    whole = read_split(examples, "train")
    assert distinct_values(examples, "train", "user_id") == sorted(whole["user_id"].astype(str).unique())
    assert distinct_values(examples, "train", "device") == sorted(whole["device"].astype(str).unique())  # 'None'
    assert distinct_values(examples, "train", "hour") == sorted(whole["hour"].astype(str).unique())
    with pytest.raises(DataError, match="no nope column"):
        distinct_values(examples, "train", "nope")


def test_distinct_keys_equal_pandas_drop_duplicates() -> None:
    from recflow.training.history_ranking import distinct_keys

    rng = np.random.default_rng(4)
    users = rng.integers(0, 30, 5000)
    times = rng.choice(rng.uniform(0, 1e5, 300), 5000)
    keys = pd.DataFrame({"u": users, "t": times})
    uniq = keys.drop_duplicates()
    first, position = distinct_keys(users, times)
    np.testing.assert_array_equal(first, uniq.index.to_numpy())
    want = pd.MultiIndex.from_frame(uniq.reset_index(drop=True)).get_indexer(pd.MultiIndex.from_frame(keys))
    np.testing.assert_array_equal(position, want)
    empty = distinct_keys(np.zeros(0, np.int64), np.zeros(0))
    assert len(empty[0]) == len(empty[1]) == 0


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_distinct_keys_by_time_equal_distinct_keys(chunk: int) -> None:
    """Chunked along non-decreasing times (runs of equal times longer than a chunk included) or, when times go
    back, at once: the same keys, numbered the same."""
    from recflow.training.history_ranking import distinct_keys, distinct_keys_by_time

    rng = np.random.default_rng(6)
    users = rng.integers(-1, 30, 5000)
    times = np.sort(rng.choice(rng.uniform(0, 1e5, 300), 5000))
    times[1000:1200] = times[1000]  # a run of 200 equal times
    for t in (times, times[::-1].copy()):
        want = distinct_keys(users, t)
        got = distinct_keys_by_time(users, t, chunk=chunk)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_string_values_equal_astype_str() -> None:
    from recflow.training.columnar import string_values

    plain = pd.Series(["b", None, "a", "b"], dtype=object)
    cat = pd.Series(pd.Categorical(["b", None, "a", "b"]))
    assert string_values(cat).tolist() == plain.astype(str).tolist() == string_values(plain).tolist()


@pytest.mark.parametrize("sharded", [False, True], ids=["one_file", "shards"])
def test_read_split_events_of_a_split_already_in_log_order(tmp_path: Path, sharded: bool) -> None:
    """ExampleGen writes splits in log order: then no reordered copy is made, and the frame is the same."""
    from recflow.training.columnar import log_order_indices

    frame = _events(1500, 3, "2026-01-05").sort_values(["timestamp", "event_id"], kind="stable")
    ex = tmp_path / "ex"
    ex.mkdir()
    if sharded:
        (ex / "train.parquet").mkdir()
        for k, part in enumerate(np.array_split(np.arange(len(frame)), 3)):  # shards in log order
            pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False),
                           ex / "train.parquet" / f"part-{k:05d}.parquet", row_group_size=97)
    else:
        frame.to_parquet(ex / "train.parquet", index=False)
    keys = pa.Table.from_pandas(frame[["timestamp", "event_id"]], preserve_index=False)
    assert log_order_indices(keys, ["timestamp", "event_id"]) is None
    assert log_order_indices(keys.take(np.arange(len(frame))[::-1].copy()), ["timestamp", "event_id"]) is not None
    columns = ["user_id", "timestamp", "device", "request_id", "propensity"]
    got = read_split_events(ex, "train", columns, ("impression",))
    whole = read_split(ex, "train")
    whole = whole[whole["event_type"] == "impression"].reset_index(drop=True)
    pd.testing.assert_frame_equal(_plain(got), whole[columns], check_dtype=True)


@pytest.mark.parametrize("types", [None, ("impression",)])
def test_read_split_events_of_chosen_file_rows_equals_those_rows_of_the_whole_read(examples: Path, types) -> None:
    """``with_rows`` numbers each row by its place in the files (whatever the log order); ``rows`` reads only
    those rows, a row group at a time, and gives exactly the whole read's rows with those numbers, in log order."""
    from recflow.training.columnar import FILE_ROW

    columns = ["user_id", "timestamp", "device", "item_id", "propensity"]
    numbered = read_split_events(examples, "train", columns, types, with_rows=True)
    plain = read_split_events(examples, "train", columns, types)
    assert list(numbered.columns) == [*columns, FILE_ROW] and numbered[FILE_ROW].dtype == np.int64
    pd.testing.assert_frame_equal(_plain(numbered[columns]), _plain(plain))
    assert sorted(numbered[FILE_ROW]) == list(range(len(numbered)))  # each file row once
    rng = np.random.default_rng(4)
    chosen = rng.choice(len(numbered), size=len(numbered) // 7, replace=False)  # any order, repeats dropped
    got = read_split_events(examples, "train", columns, types, rows=np.concatenate([chosen, chosen[:3]]))
    expected = numbered[numbered[FILE_ROW].isin(chosen)]
    assert len(got) == len(chosen)
    pd.testing.assert_frame_equal(_plain(got), _plain(expected[columns]).reset_index(drop=True))
    both = read_split_events(examples, "train", columns, types, rows=chosen, with_rows=True)
    np.testing.assert_array_equal(both[FILE_ROW].to_numpy(), expected[FILE_ROW].to_numpy())
    assert read_split_events(examples, "train", columns, types, rows=np.zeros(0, np.int64)).empty


def test_files_in_log_order_checks_the_keys_a_row_group_at_a_time(tmp_path: Path) -> None:
    """True exactly when the stable (timestamp, event_id) sort would leave the rows where they are: across files
    and row groups, ties broken by the event id; a missing time or a tied missing id is left to the sort."""
    from recflow.training.columnar import files_in_log_order, log_order_indices

    frame = _events(1200, 5, "2026-01-05").sort_values(["timestamp", "event_id"], kind="stable")
    frame = frame.reset_index(drop=True)

    def write(rows: pd.DataFrame, name: str) -> list[Path]:
        paths = []
        for k, part in enumerate(np.array_split(np.arange(len(rows)), 3)):
            path = tmp_path / f"{name}-{k}.parquet"
            pq.write_table(pa.Table.from_pandas(rows.iloc[part], preserve_index=False), path, row_group_size=97)
            paths.append(path)
        return paths

    keys = ["timestamp", "event_id"]
    assert files_in_log_order(write(frame, "sorted"), keys)
    assert files_in_log_order(write(frame, "sorted_t"), ["timestamp"])
    assert not files_in_log_order(write(frame, "no_time"), ["event_id"])
    tie = int(np.flatnonzero(np.diff(frame["timestamp"].astype("int64").to_numpy()) == 0)[0])
    swapped = frame.copy()
    swapped.loc[[tie, tie + 1], "event_id"] = swapped.loc[[tie + 1, tie], "event_id"].to_numpy()  # a tie, ids down
    for case, rows in (("shuffled", frame.sample(frac=1.0, random_state=1)), ("swapped", swapped)):
        table = pa.Table.from_pandas(rows[keys], preserve_index=False)
        assert log_order_indices(table, keys) is not None
        assert not files_in_log_order(write(rows, case), keys)
    # across the seam of two row groups: equal times, decreasing ids
    seam = frame.iloc[:2].copy()
    seam["timestamp"] = seam["timestamp"].iloc[0]
    seam["event_id"] = ["b", "a"]
    paths = [tmp_path / "s0.parquet", tmp_path / "s1.parquet"]
    pq.write_table(pa.Table.from_pandas(seam.iloc[:1], preserve_index=False), paths[0])
    pq.write_table(pa.Table.from_pandas(seam.iloc[1:], preserve_index=False), paths[1])
    assert not files_in_log_order(paths, keys) and files_in_log_order(paths[::-1], keys)
    missing = frame.copy()
    missing.loc[5, "timestamp"] = pd.NaT
    assert not files_in_log_order(write(missing, "missing"), keys)


def test_has_missing_checks_the_asked_event_types_a_row_group_at_a_time(examples: Path, tmp_path: Path) -> None:
    """The history ranker's check that every impression has a request id, done in Arrow: missing values of
    other event types do not count; one impression without an id does; so does a split without the column."""
    from recflow.training.columnar import has_missing

    assert not has_missing(examples, "train", "request_id", ("impression",))
    frame = read_split(examples, "train")
    views = frame.index[frame["event_type"] == "view"]
    frame.loc[views[:3], "request_id"] = None
    ex = tmp_path / "with_missing"
    _write(ex, "train", frame, sharded=True)
    assert not has_missing(ex, "train", "request_id", ("impression",))
    assert has_missing(ex, "train", "request_id")
    frame.loc[frame.index[frame["event_type"] == "impression"][-1], "request_id"] = None
    ex = tmp_path / "impression_missing"
    _write(ex, "train", frame, sharded=False)
    assert has_missing(ex, "train", "request_id", ("impression",))
    assert has_missing(ex, "train", "no_such_column", ("impression",))
    with pytest.raises(DataError, match="no eval.parquet"):
        has_missing(ex, "eval", "request_id")
