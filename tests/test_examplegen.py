"""ExampleGen: reading, validation, time split without leaks, stats, atomic output.

``make_event_log`` builds the small structured world the Transform and trainer tests share: users prefer one or
two categories, items inside a category differ in popularity, slates of impressions lead to clicks mostly on
preferred categories, clicks to views, carts and purchases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recflow.config import ValidationConfig
from recflow.errors import DataError, ValidationFailed
from recflow.examplegen import ExampleGenConfig, derive_items, run_example_gen, split_by_time
from recflow.io import write_dataset

IDS_ONLY_COLUMNS = ["user_id", "item_id", "event_type", "timestamp"]


def make_event_log(n_users: int = 120, n_items: int = 80, n_categories: int = 6, sessions: int = 6,
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, items, users) of a shop where each user prefers a few categories."""
    rng = np.random.default_rng(seed)
    cats = np.arange(n_items) % n_categories
    item_ids = np.array([f"i{i:04d}" for i in range(n_items)])
    prices = np.round(rng.lognormal(3.0 + 0.3 * cats, 0.3), 2)
    weight = 1.0 / (1.0 + np.arange(n_items) // n_categories) ** 0.8  # popularity falls inside each category
    regions = np.array(["north", "south", "east"])
    devices = np.array(["desktop", "mobile", "tablet"])
    start = pd.Timestamp("2026-01-05", tz="UTC")
    rows = []
    first_liked = []
    for u in range(n_users):
        liked = rng.choice(n_categories, size=1 + u % 2, replace=False)
        first_liked.append(int(liked[0]))
        region, device = regions[u % 3], devices[rng.integers(3)]
        for s in range(sessions):
            t = start + pd.Timedelta(seconds=int(rng.integers(0, 14 * 86400)))
            session = f"s{u}-{s}"
            for r in range(2):
                request = f"r{u}-{s}-{r}"
                pref = np.isin(cats, liked)
                p_pref = weight * pref / (weight * pref).sum()
                p_all = weight / weight.sum()
                shown = np.unique(np.concatenate([rng.choice(n_items, 2, replace=False, p=p_pref),
                                                  rng.choice(n_items, 2, replace=False, p=p_all)]))
                for pos, i in enumerate(shown):
                    t += pd.Timedelta(seconds=int(rng.integers(1, 30)))
                    base = {"user_id": f"u{u:04d}", "item_id": item_ids[i], "session_id": session,
                            "request_id": request, "position": pos, "price": prices[i], "hour": t.hour,
                            "weekday": t.weekday(), "device": device, "region": region, "propensity": 0.25}
                    rows.append(dict(base, event_type="impression", timestamp=t))
                    if rng.random() < (0.6 if pref[i] else 0.05):
                        t += pd.Timedelta(seconds=int(rng.integers(1, 60)))
                        rows.append(dict(base, event_type="click", timestamp=t))
                        t += pd.Timedelta(seconds=1)
                        rows.append(dict(base, event_type="view", timestamp=t, dwell_time_s=float(rng.integers(5, 90))))
                        if rng.random() < 0.25:
                            t += pd.Timedelta(seconds=int(rng.integers(5, 60)))
                            rows.append(dict(base, event_type="purchase", timestamp=t, order_value=prices[i]))
    events = pd.DataFrame(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)
    events["event_id"] = [f"e{i:06d}" for i in range(len(events))]
    items = pd.DataFrame({"item_id": item_ids, "category": [f"c{c}" for c in cats], "price": prices})
    # The segment names the user's (first) favourite category; the "new-c*" users signed up but have no events
    # yet (cold start: only their segment is known).
    users = pd.DataFrame({"user_id": [f"u{u:04d}" for u in range(n_users)] + [f"new-c{c}" for c in range(n_categories)],
                          "region": [regions[u % 3] for u in range(n_users)] + ["north"] * n_categories,
                          "segment": [f"likes-c{c}" for c in first_liked]
                          + [f"likes-c{c}" for c in range(n_categories)]})
    return events, items, users


def ids_only(events: pd.DataFrame) -> pd.DataFrame:
    """The same log as a minimal shop would have it: ids, type and time of views and clicks only."""
    return events.loc[events["event_type"].isin(["view", "click"]), IDS_ONLY_COLUMNS].reset_index(drop=True)


def write_world(path: Path, minimal: bool = False, **kwargs) -> Path:
    events, items, users = make_event_log(**kwargs)
    if minimal:
        write_dataset(path, events=ids_only(events))
    else:
        write_dataset(path, events=events, items=items, users=users)
    return path


def test_time_split_has_no_leak_and_stats(tmp_path: Path) -> None:
    src = write_world(tmp_path / "src")
    result = run_example_gen(src, tmp_path / "ex", ExampleGenConfig(), ValidationConfig())
    train, eval_, test = (pd.read_parquet(result.splits[n]) for n in ("train", "eval", "test"))
    assert train["timestamp"].max() < eval_["timestamp"].min()
    assert eval_["timestamp"].max() < test["timestamp"].min()
    assert train["timestamp"].is_monotonic_increasing and test["timestamp"].is_monotonic_increasing
    total = len(train) + len(eval_) + len(test)
    assert total == len(pd.read_parquet(src / "events.parquet"))
    assert abs(len(test) / total - 0.1) < 0.02 and abs(len(eval_) / total - 0.1) < 0.02

    stats = json.loads(result.stats_path.read_text())
    assert stats["rows"] == total and stats["splits"]["train"]["rows"] == len(train)
    assert stats["users"] == pd.concat([train, eval_, test])["user_id"].nunique()
    assert stats["event_types"]["impression"] == int((pd.concat([train, eval_, test])["event_type"]
                                                       == "impression").sum())
    assert pd.Timestamp(stats["cut_points"]["train_end"]) == eval_["timestamp"].min()
    assert {"price", "hour", "device", "dwell_time_s", "session_id"} <= set(stats["optional_fields"])
    assert stats["items_given"] and stats["item_fields"] == ["category", "price"]
    assert result.users_path is not None and result.users_path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_ties_never_straddle_a_cut() -> None:
    ts = pd.to_datetime(["2026-01-01"] * 5 + ["2026-01-02"] * 5, utc=True)
    events = pd.DataFrame({"user_id": "u", "item_id": "i", "event_type": "view", "timestamp": ts})
    parts = split_by_time(events, 0.3, 0.0)
    assert len(parts["train"]) == 5 and len(parts["eval"]) == 5 and parts["test"].empty


def test_ids_only_log_and_csv_source(tmp_path: Path) -> None:
    events, _, _ = make_event_log(n_users=30, sessions=3)
    src = tmp_path / "src"
    src.mkdir()
    ids_only(events).to_csv(src / "events.csv", index=False)
    result = run_example_gen(src, tmp_path / "ex", ExampleGenConfig(), ValidationConfig())
    stats = result.stats
    assert stats["optional_fields"] == [] and not stats["items_given"] and result.users_path is None
    items = pd.read_parquet(result.items_path)
    assert list(items.columns) == ["item_id"] and len(items) == ids_only(events)["item_id"].nunique()


def test_derived_catalog_keeps_latest_price() -> None:
    events = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "a", "b"], "event_type": "view",
                           "timestamp": pd.to_datetime(["2026-01-01", "2026-01-03", "2026-01-02"], utc=True),
                           "price": [1.0, 2.0, np.nan]})
    items = derive_items(events)
    assert items["item_id"].tolist() == ["a", "b"] and items["price"].iloc[0] == 2.0 and np.isnan(items["price"][1])


def test_rerun_replaces_output_and_errors_are_clear(tmp_path: Path) -> None:
    src = write_world(tmp_path / "src", n_users=20, sessions=2)
    out = tmp_path / "ex"
    (out).mkdir()
    (out / "stale.txt").write_text("old")
    run_example_gen(src, out, ExampleGenConfig(), ValidationConfig())
    assert not (out / "stale.txt").exists() and (out / "train.parquet").is_file()
    unvalidated = run_example_gen(src, tmp_path / "raw", ExampleGenConfig(validate_input=False), ValidationConfig())
    assert unvalidated.stats["rows"] == len(pd.read_parquet(src / "events.parquet"))
    assert not (tmp_path / "raw_quarantine.parquet").exists()
    with pytest.raises(DataError, match="no events.parquet or events.csv"):
        run_example_gen(tmp_path, tmp_path / "ex2", ExampleGenConfig(), ValidationConfig())
    with pytest.raises(DataError, match="train split"):
        run_example_gen(src, tmp_path / "ex3", ExampleGenConfig(min_train_events=10**6), ValidationConfig())
    with pytest.raises(ValueError, match="training data remains"):
        ExampleGenConfig(eval_fraction=0.5, test_fraction=0.5)


def test_bad_rows_are_quarantined_and_too_many_fail(tmp_path: Path) -> None:
    events, items, users = make_event_log(n_users=20, sessions=2)
    events.loc[0, "event_type"] = "teleport"  # one bad row in ~500: under the 1% threshold, quarantined
    src = tmp_path / "src"
    write_dataset(src, events=events.astype({"event_type": str}), items=items, users=users)
    result = run_example_gen(src, tmp_path / "ex", ExampleGenConfig(), ValidationConfig())
    assert result.stats["rows"] == len(events) - 1
    quarantine = pd.read_parquet(tmp_path / "ex_quarantine.parquet")
    assert len(quarantine) == 1 and not (src / "quarantine.parquet").exists()

    events.loc[: len(events) // 5, "event_type"] = "teleport"
    write_dataset(src, events=events, items=items, users=users)
    with pytest.raises(ValidationFailed, match="event_type"):
        run_example_gen(src, tmp_path / "ex", ExampleGenConfig(), ValidationConfig())
    assert (tmp_path / "ex" / "train.parquet").is_file()  # the previous good output is untouched
