"""The history ranker's impressions labelled a split at a time (issue 17) equal those of labelling both splits'
impressions and clicks at once: requests straddling the split cut, missing key values, click keys no impression
has, the one-key and the MultiIndex match, the region merged from users.parquet, and the fallback to the time
window when an impression has no request id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recflow.training.history_ranking as hr
from recflow.training.columnar import concat_categorical, object_values, read_split_events


def _split_events(n: int, seed: int, t0: str, requests: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    imp = rng.random(n) < 0.7
    frame = pd.DataFrame({
        "event_id": [f"e{seed}-{i:05d}" for i in rng.permutation(n)],
        "event_type": np.where(imp, "impression", np.where(rng.random(n) < 0.8, "click", "view")),
        "timestamp": pd.Timestamp(t0, tz="UTC") + pd.to_timedelta(rng.integers(0, n // 4, n), unit="s"),
        "user_id": [f"u{u}" for u in rng.integers(0, 30, n)],
        "item_id": [f"i{i}" for i in rng.integers(0, 20, n)],
        "request_id": [f"r{seed}-{r}" for r in rng.integers(0, requests, n)],
        "position": rng.integers(0, 8, n).astype(np.int32),
        "propensity": rng.uniform(0.05, 1.0, n),
        "device": rng.choice(np.array(["mobile", "desktop"], object), n),
    })
    frame.loc[rng.random(n) < 0.05, "user_id"] = None  # missing key values match missing ones
    frame.loc[rng.random(n) < 0.05, "item_id"] = None
    clicks = frame.index[frame["event_type"] == "click"]
    source = frame.index[imp][rng.integers(0, imp.sum(), len(clicks))]
    for col in ("user_id", "item_id", "request_id"):
        frame.loc[clicks, col] = frame.loc[source, col].to_numpy()
    # some clicks of a key no impression has
    frame.loc[clicks[:5], "item_id"] = "never-shown"
    return frame


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.mkdir(parents=True)
    for k, part in enumerate(np.array_split(np.random.default_rng(3).permutation(len(frame)), 2)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False),
                       path / f"part-{k:05d}.parquet", row_group_size=61)


@pytest.fixture()
def world(tmp_path: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Train and eval splits where requests straddle the cut: clicks in eval of train impressions' requests."""
    train = _split_events(1200, 1, "2026-01-05", 250)
    evals = _split_events(400, 2, "2026-01-20", 80)
    late = train.index[train["event_type"] == "impression"][-40:]  # the train split's last requests' clicks
    straddle = train.loc[late].assign(event_type="click", event_id=[f"late-{k}" for k in range(len(late))],
                                      timestamp=pd.Timestamp("2026-01-20", tz="UTC"))
    evals = pd.concat([evals, straddle], ignore_index=True)
    ex = tmp_path / "ex"
    _write(ex / "train.parquet", train)
    _write(ex / "eval.parquet", evals)
    return ex, train, evals


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: (object_values(frame[c]) if isinstance(frame[c].dtype, pd.CategoricalDtype)
                             else frame[c]) for c in frame.columns})


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(_plain(got), _plain(want), check_dtype=False)
    assert got["clicked"].dtype == want["clicked"].dtype


def test_by_split_equals_whole_with_requests_straddling_the_cut(world) -> None:
    ex, train, evals = world
    got = hr._impressions_by_split(ex, ["device", "hour"])
    want = hr._impressions_whole(ex, ["device", "hour"])
    assert got is not None
    _assert_same(got, want)
    # some train impressions are clicked only by a click of the eval split: per-split clicks would miss them
    imp = read_split_events(ex, "train", hr.LABEL_KEYS, ("impression",))
    own = hr._labels_from_clicks(imp, read_split_events(ex, "train", hr.LABEL_KEYS, ("click",)))
    labels = got.loc[got["_split"] == "train", "clicked"].to_numpy()
    assert len(labels) == len(own) == (train["event_type"] == "impression").sum()
    assert (labels >= own).all() and (labels > own).sum() > 0


def test_labels_a_chunk_of_rows_at_a_time_equal_all_rows_at_once(world, monkeypatch: pytest.MonkeyPatch) -> None:
    ex, train, _ = world
    whole = hr._impressions_by_split(ex, ["device", "hour"])
    n_train = int((train["event_type"] == "impression").sum())
    monkeypatch.setattr(hr, "LABEL_CHUNK", 7)
    assert n_train > 7 * 3 and n_train % 7  # several chunks and a short last one
    chunked = hr._impressions_by_split(ex, ["device", "hour"])
    assert whole is not None and chunked is not None and whole["clicked"].sum() > 0
    _assert_same(chunked, whole)


def test_multiindex_match_equals_one_key_match(world, monkeypatch: pytest.MonkeyPatch) -> None:
    ex, _, _ = world
    one_key = hr._impressions_by_split(ex, ["device"])
    monkeypatch.setattr(hr, "ONE_KEY_LIMIT", 0.0)
    multi = hr._impressions_by_split(ex, ["device"])
    assert one_key is not None and multi is not None
    _assert_same(multi, one_key)


def test_labels_from_clicks_equal_request_labels(world) -> None:
    ex, _, _ = world
    frames = [read_split_events(ex, s, ("event_type", *hr.LABEL_KEYS), ("impression", "click"))
              for s in ("train", "eval")]
    events = concat_categorical(frames)
    want = hr._request_labels(events)
    is_imp = (events["event_type"] == "impression").to_numpy()
    clicks = events.loc[(events["event_type"] == "click").to_numpy(), list(hr.LABEL_KEYS)]
    got = hr._labels_from_clicks(events.loc[is_imp, list(hr.LABEL_KEYS)], clicks)
    np.testing.assert_array_equal(got, want[is_imp])
    assert 0 < got.sum() < len(got)
    # plain object columns (no categoricals) take the factorize path, with the same labels
    plain = hr._labels_from_clicks(events.loc[is_imp, list(hr.LABEL_KEYS)].astype(object), clicks.astype(object))
    np.testing.assert_array_equal(plain, got)
    assert not hr._labels_from_clicks(events.loc[is_imp, list(hr.LABEL_KEYS)], clicks.iloc[:0]).any()


def test_region_merged_from_users_file(world) -> None:
    ex, train, evals = world
    for name, frame in (("train", train), ("eval", evals)):
        path = ex / f"{name}.parquet"
        for part in path.glob("*.parquet"):
            part.unlink()
        path.rmdir()
        frame.to_parquet(path, index=False)
    users = sorted({u for u in pd.concat([train, evals])["user_id"].dropna()})
    pd.DataFrame({"user_id": users, "region": [f"reg{k % 3}" for k in range(len(users))]}).to_parquet(
        ex / "users.parquet", index=False)
    got = hr._impressions_by_split(ex, ["device", "region"])
    assert got is not None and "region" in got.columns
    _assert_same(got, hr._impressions_whole(ex, ["device", "region"]))


def test_an_impression_without_request_falls_back_to_the_time_window(world) -> None:
    ex, _, evals = world
    path = ex / "eval.parquet"
    for part in path.glob("*.parquet"):
        part.unlink()
    path.rmdir()
    first = evals.index[evals["event_type"] == "impression"][0]
    evals.loc[first, "request_id"] = None
    evals.to_parquet(path, index=False)
    assert hr._impressions_by_split(ex, ["device"]) is None
    _assert_same(hr._impressions(ex, ["device"]), hr._impressions_whole(ex, ["device"]))


@pytest.mark.parametrize("case", ["by_request", "region_from_users", "time_window"])
def test_impression_keys_and_their_rows_equal_the_whole_impressions(world, case: str) -> None:
    """The keys (user, split, seconds) are the whole table's columns, row for row; the rows read for a sample of
    them (a row group at a time, only those rows labelled, the region merged) are the whole table's rows."""
    ex, train, evals = world
    context = ["device", "hour"]
    if case == "region_from_users":
        users = sorted({u for u in pd.concat([train, evals])["user_id"].dropna()})
        pd.DataFrame({"user_id": users, "region": [f"reg{k % 3}" for k in range(len(users))]}).to_parquet(
            ex / "users.parquet", index=False)
        context = ["device", "region"]
    if case == "time_window":  # an impression without a request id: labelled by time window, from the whole table
        path = ex / "eval.parquet"
        for part in path.glob("*.parquet"):
            part.unlink()
        path.rmdir()
        evals.loc[evals.index[evals["event_type"] == "impression"][0], "request_id"] = None
        evals.to_parquet(path, index=False)
    whole = hr._impressions(ex, context)
    keys = hr.impression_keys(ex, context)
    assert (keys.whole is None) == (case != "time_window") and (keys.file_rows is None) == (case == "time_window")
    assert list(keys.frame.columns) == ["user_id", "_split", "_seconds"]
    def nulls_as_none(frame: pd.DataFrame) -> pd.DataFrame:  # (the region merge leaves a missing user id NaN)
        return _plain(frame).astype(object).where(_plain(frame).notna(), None)

    pd.testing.assert_frame_equal(nulls_as_none(keys.frame), nulls_as_none(whole[list(keys.frame.columns)]))
    rows = np.sort(np.random.default_rng(2).choice(len(whole), size=len(whole) // 5, replace=False))
    _assert_same(keys.rows(rows), whole.iloc[rows].reset_index(drop=True))
    assert keys.rows(np.arange(len(whole)))["clicked"].sum() == whole["clicked"].sum() > 0
    assert keys.rows(np.zeros(0, np.int64)).empty


def test_the_ranker_trains_on_the_context_columns_the_log_has(world, tmp_path: Path) -> None:
    """A context feature the spec names but the log does not have (no such column, no users file to merge it
    from) is left out of the ranker's inputs and its files, as when the whole impressions table was read."""
    import json
    from types import SimpleNamespace

    from recflow.models.sequence import SequenceEncoder
    from recflow.training.tfrs_trainer import TrainerConfig

    ex = world[0]
    vocabulary = [f"i{i}" for i in range(20)]
    config = TrainerConfig(sequence={"max_len": 5, "embedding_dim": 8}, history_ranking_epochs=1,
                           history_ranking_min_eval_clicks=0, history_ranking_center_score=True)
    encoder = SequenceEncoder(len(vocabulary) + 1, config.sequence_config())
    ranked = hr.train_history_ranker(ex, vocabulary, SimpleNamespace(encoder=encoder), vocabulary,
                                     {"context_features": ["device", "region"]}, config, tmp_path)
    assert ranked.trained, ranked.notes
    meta = json.loads((tmp_path / "history_ranker.json").read_text())
    assert meta["context_columns"] == ["device"] and len(meta["context_vocabularies"]) == 1
