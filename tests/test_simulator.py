"""The batch side of the world simulator: generated logs, the world model and the logging policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import chi2_contingency

from recflow import schema
from recflow.cli import main
from recflow.config import load_config
from recflow.errors import ConfigError
from recflow.simulator import (
    Context,
    LoggingPolicy,
    SimulatorConfig,
    World,
    generate_dataset,
    simulate_log,
)
from recflow.simulator.response import sample_response

SMALL = SimulatorConfig(users=300, items=200, days=4, seed=11)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("sim") / "data"
    summary = generate_dataset(SMALL, out, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def default_log():
    """The default world (2000 users, 1000 items, 14 days): a few hundred thousand events in seconds."""
    return simulate_log(SimulatorConfig())


def _read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


# ------------------------------------------------------------------ determinism and schema
def test_same_seed_gives_identical_files_and_another_seed_does_not(small_dataset, tmp_path: Path):
    out, _ = small_dataset
    again = tmp_path / "again"
    generate_dataset(SMALL, again, progress=False)
    for name in ("events.parquet", "items.parquet", "users.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(again / name)), name
    other = tmp_path / "other"
    generate_dataset(SMALL.model_copy(update={"seed": 12}), other, progress=False)
    assert not pq.read_table(out / "events.parquet").equals(pq.read_table(other / "events.parquet"))
    assert not pq.read_table(out / "items.parquet").equals(pq.read_table(other / "items.parquet"))


def test_written_tables_follow_the_schema(small_dataset):
    out, summary = small_dataset
    for kind in schema.TABLE_KINDS:
        table = pq.read_table(out / schema.FILE_NAMES[kind])
        expected = schema.arrow_schema(kind)
        assert table.schema.metadata[schema.METADATA_SCHEMA_KEY] == kind.encode()
        for fld in expected:
            if fld.name == "variant":  # set by serving's A/B tests, not by the simulator
                assert fld.name not in table.schema.names
                continue
            assert table.schema.field(fld.name).type == fld.type, (kind, fld.name)
    events, items, users = (_read(out / f"{k}.parquet") for k in ("events", "items", "users"))
    assert len(events) == summary.events
    assert events["event_id"].is_unique and items["item_id"].is_unique and users["user_id"].is_unique
    assert (
        events["user_id"].str.fullmatch(r"u\d{6}").all() and events["item_id"].str.fullmatch(r"i\d{6}").all()
    )
    assert set(events["item_id"]) <= set(items["item_id"]) and set(events["user_id"]) <= set(users["user_id"])
    assert set(events["event_type"]) == set(schema.EVENT_TYPES)
    for col in (
        "hour",
        "weekday",
        "device",
        "region",
        "session_id",
        "request_id",
        "position",
        "propensity",
        "policy_id",
        "price",
    ):
        assert events[col].notna().all(), col
    assert events["hour"].between(0, 23).all() and events["weekday"].between(0, 6).all()
    assert set(events["device"]) <= set(SMALL.devices) and set(events["region"]) <= set(SMALL.regions)
    assert ((events["propensity"] > 0) & (events["propensity"] <= 1)).all()
    assert (events["policy_id"] == "logging-softmax-v1").all()
    assert events["timestamp"].is_monotonic_increasing
    assert events["timestamp"].min() >= pd.Timestamp(SMALL.start_date, tz="UTC")
    # weekday and hour are those of the session start, in UTC
    first = events.groupby("session_id").first()
    assert (first["timestamp"].dt.weekday == first["weekday"]).all()
    assert (first["timestamp"].dt.hour == first["hour"]).all()
    imp = events[events["event_type"] == "impression"]
    per_request = imp.groupby("request_id")["position"]
    assert (per_request.count() == SMALL.slate_size).all()
    assert (per_request.apply(lambda p: sorted(p) == list(range(SMALL.slate_size)))).all()
    views = events[events["event_type"] == "view"]
    assert (
        views["dwell_time_s"].gt(0).all()
        and events.loc[events["event_type"] != "view", "dwell_time_s"].isna().all()
    )
    buys = events[events["event_type"] == "purchase"]
    assert (buys["order_value"] >= buys["price"]).all()
    meta = json.loads((out / "simulator.json").read_text())
    assert meta["config"] == SMALL.model_dump(mode="json")
    assert meta["summary"]["counts"] == summary.counts
    assert "user_preferences" not in json.dumps(meta)


def test_funnel_is_consistent_per_slate(small_dataset):
    events = _read(small_dataset[0] / "events.parquet")
    key = ["request_id", "item_id"]
    by_type = {t: events[events["event_type"] == t].set_index(key) for t in schema.EVENT_TYPES}
    # every click was shown, every cart was clicked, every purchase and removal was carted
    for later, earlier in (
        ("click", "impression"),
        ("view", "click"),
        ("add_to_cart", "view"),
        ("purchase", "add_to_cart"),
        ("remove_from_cart", "add_to_cart"),
    ):
        assert by_type[later].index.isin(by_type[earlier].index).all(), later
        joined = by_type[later][["timestamp"]].join(by_type[earlier][["timestamp"]], rsuffix="_before")
        assert (joined["timestamp"] >= joined["timestamp_before"]).all(), later
    assert not by_type["purchase"].index.isin(by_type["remove_from_cart"].index).any()


# ------------------------------------------------------------------ behaviour of the default world
def test_default_world_funnel_rates_are_in_the_configured_ranges(default_log):
    cfg = SimulatorConfig()
    from recflow.simulator.generator import summarize

    s = summarize(default_log, 0.0)
    assert 200_000 <= s.events <= 800_000
    assert 0.01 <= s.click_through_rate <= 0.10
    assert cfg.cart_rate * 0.6 <= s.cart_rate <= cfg.cart_rate * 1.4
    assert cfg.purchase_rate * 0.6 <= s.purchase_rate <= cfg.purchase_rate * 1.4
    assert 0.10 <= s.cart_rate <= 0.30 and 0.20 <= s.purchase_rate <= 0.50
    assert s.counts["remove_from_cart"] < s.counts["add_to_cart"] - s.counts["purchase"]  # others abandoned


def test_rates_follow_the_configured_funnel_parameters():
    low = simulate_log(SMALL.model_copy(update={"cart_rate": 0.1, "purchase_rate": 0.2}))
    high = simulate_log(SMALL.model_copy(update={"cart_rate": 0.4, "purchase_rate": 0.6}))

    def rate(log, a, b):
        counts = log.events["event_type"].value_counts()
        return counts[a] / counts[b]

    assert rate(high, "add_to_cart", "click") > 2 * rate(low, "add_to_cart", "click")
    assert rate(high, "purchase", "add_to_cart") > 1.8 * rate(low, "purchase", "add_to_cart")


def test_click_through_rate_falls_with_position(default_log):
    ev = default_log.events
    shown = ev[ev["event_type"] == "impression"].groupby("position").size()
    clicked = ev[ev["event_type"] == "click"].groupby("position").size()
    ctr = (clicked / shown).to_numpy()
    assert ctr[0] > ctr[2] > ctr[5] > ctr[9]
    assert ctr[0] / ctr[9] > 3


def test_popularity_is_long_tailed(default_log):
    imp = default_log.events.query("event_type == 'impression'")["item_id"].value_counts()
    assert imp.iloc[: len(imp) // 10].sum() / imp.sum() > 0.4  # top 10% of items get most impressions
    assert imp.iloc[len(imp) // 2 :].sum() / imp.sum() < 0.15  # the tail half gets little


def test_logged_clicks_carry_the_users_true_preferences(default_log):
    """The signal a collaborative-filtering model can learn: clicks follow each user's own taste."""
    world = default_log.world
    ev = default_log.events
    clicks = ev[ev["event_type"] == "click"]
    users = clicks["user_id"].str[1:].astype(int).to_numpy()
    cats = world.item_category[clicks["item_id"].str[1:].astype(int).to_numpy()]
    counts = np.zeros((world.n_users, world.n_categories))
    np.add.at(counts, (users, cats), 1)
    active = counts.sum(axis=1) >= 8
    prefs = world.user_preferences[active]
    # the user's individual taste beyond the segment (what a segment-level policy cannot know) shows in clicks
    individual = prefs - world.segment_preferences[world.user_segment[active]]
    share = counts[active] / counts[active].sum(axis=1, keepdims=True)
    seg_share = np.array(
        [share[world.user_segment[active] == s].mean(axis=0) for s in range(len(world.config.segments))]
    )[world.user_segment[active]]
    corr = np.corrcoef(individual.ravel(), (share - seg_share).ravel())[0, 1]
    assert active.sum() > 300 and corr > 0.2


def test_context_changes_behaviour():
    world = World(SMALL)
    users = np.zeros(4, dtype=int)
    items = np.tile(np.arange(20), (4, 1))
    ctx = Context(np.array([3, 9, 14, 20]), np.array([0, 0, 0, 6]), np.array([0, 1, 2, 0]))
    logits = world.attraction_logits(users, items, ctx, day=0)
    assert not np.allclose(logits[0], logits[1]) and not np.allclose(logits[2], logits[3])
    p_cart, _ = world.funnel_probabilities(users, items, ctx, day=0)
    assert not np.allclose(p_cart[0], p_cart[1])  # device changes the add-to-cart probability


# ------------------------------------------------------------------ drift
def _click_category_tv(log, split_day: int) -> tuple[float, float]:
    world = log.world
    ev = log.events
    clicks = ev[ev["event_type"] == "click"]
    day = ((clicks["timestamp"] - pd.Timestamp(world.config.start_date, tz="UTC")).dt.days).to_numpy()
    cats = world.item_category[clicks["item_id"].str[1:].astype(int).to_numpy()]
    n_cat = world.n_categories
    before = np.bincount(cats[day < split_day], minlength=n_cat)
    after = np.bincount(cats[day >= split_day], minlength=n_cat)
    tv = 0.5 * np.abs(before / before.sum() - after / after.sum()).sum()
    p_value = chi2_contingency(np.vstack([before, after]))[1]
    return tv, p_value


def test_drift_changes_the_click_distribution_over_categories():
    # a week before the split and a week after, so weekdays and the satiation warm-up do not differ
    base = SimulatorConfig(users=400, items=300, days=14, seed=5)
    drift = base.model_copy(update={"drift": base.drift.model_copy(update={"day": 7})})
    tv_none, p_none = _click_category_tv(simulate_log(base), 7)
    drifted = simulate_log(drift)
    tv_drift, p_drift = _click_category_tv(drifted, 7)
    assert tv_drift > 0.1 and tv_drift > 4 * tv_none
    assert p_drift < 1e-4 < 0.01 < p_none  # (drift draws from its own stream since issue 16: p ~ 2e-6)
    world = drifted.world
    # new items exist only from the drift day, and the repriced items cost factor x more after it
    ev = drifted.events
    new_ids = set(world.item_ids[world.item_created_day == 7])
    shown_new = ev[ev["item_id"].isin(new_ids) & (ev["event_type"] == "impression")]
    assert len(new_ids) == 100 and len(shown_new) > 0
    assert (shown_new["timestamp"] >= pd.Timestamp(base.start_date, tz="UTC") + pd.Timedelta(days=7)).all()
    assert np.allclose(
        world.prices(7)[world.item_repriced], (world.prices(0)[world.item_repriced] * 1.3).round(2)
    )
    assert np.array_equal(world.prices(6), world.prices(0))


def test_category_demand_shift_lowers_only_the_named_categories_from_the_drift_day():
    from recflow.simulator.world import World

    base = SimulatorConfig(users=300, items=200, days=4, seed=3)
    drift = base.drift.model_copy(update={"day": 2, "preference_shift": 0.0,
                                          "category_demand_shift": {"toys": -2.0, "books": 0.5}})
    world = World(base.model_copy(update={"drift": drift}))
    before, after = world.preferences(1), world.preferences(2)
    toys, books = base.categories.index("toys"), base.categories.index("books")
    delta = after - before
    assert np.allclose(delta[:, toys], -2.0) and np.allclose(delta[:, books], 0.5)
    assert np.allclose(np.delete(delta, [toys, books], axis=1), 0.0)
    # the shifted categories lose (gain) clicks after the drift day
    log = simulate_log(SimulatorConfig(users=400, items=300, days=8, seed=5, drift={
        "day": 4, "preference_shift": 0.0, "new_items": 0, "price_change_share": 0.0,
        "category_demand_shift": {"toys": -3.0}}))
    ev = log.events[log.events["event_type"] == "click"]
    cat = ev["item_id"].map(log.items().set_index("item_id")["category"])
    day = (ev["timestamp"] - pd.Timestamp(base.start_date, tz="UTC")).dt.days
    share_before = float((cat[day < 4] == "toys").mean())
    share_after = float((cat[day >= 4] == "toys").mean())
    assert share_after < 0.5 * share_before


def test_category_demand_shift_names_must_be_categories():
    with pytest.raises(ValueError, match="unknown categories \\['gadgets'\\]"):
        SimulatorConfig(drift={"category_demand_shift": {"gadgets": -1.0}})


# ------------------------------------------------------------------ the logging policy and propensities
def test_slot_distributions_sum_to_one_and_match_recorded_propensities(small_dataset):
    out, _ = small_dataset
    events = _read(out / "events.parquet")
    world = World(SMALL)
    policy = LoggingPolicy.from_config(world, SMALL)
    imp = events[events["event_type"] == "impression"].sort_values(["request_id", "position"])
    day = (imp["timestamp"] - pd.Timestamp(SMALL.start_date, tz="UTC")).dt.days
    checked = 0
    for request_id in imp["request_id"].drop_duplicates().iloc[::97]:
        rows = imp[imp["request_id"] == request_id]
        user = int(rows["user_id"].iloc[0][1:])
        slate = rows["item_id"].str[1:].astype(int).to_numpy()
        candidates = world.available_items(int(day[rows.index[0]]))
        dist = policy.slot_distributions(user, candidates, slate)
        assert np.allclose(dist.sum(axis=1), 1.0)
        col = np.searchsorted(candidates, slate)
        assert np.allclose(dist[np.arange(len(slate)), col], rows["propensity"].to_numpy(), rtol=1e-9)
        checked += 1
    assert checked >= 5


def test_gumbel_top_k_samples_the_plackett_luce_slot_distributions():
    world = World(SMALL)
    policy = LoggingPolicy(world, temperature=1.0, epsilon=0.2)
    candidates = world.available_items(0)[:30]
    users = np.full(40_000, 7)
    slates, props = policy.sample(users, candidates, 3, np.random.default_rng(0))
    assert all(len(set(s)) == 3 for s in slates[:200])
    w = policy.probabilities(np.array([7]), candidates)[0]
    first = np.bincount(np.searchsorted(candidates, slates[:, 0]), minlength=30) / len(users)
    assert np.abs(first - w).max() < 0.01
    assert np.allclose(props[:, 0], w[np.searchsorted(candidates, slates[:, 0])])
    # slot 2 given the top item at slot 1: w restricted and renormalised
    top = int(np.argmax(w))
    given = slates[:, 0] == candidates[top]
    second = np.bincount(np.searchsorted(candidates, slates[given, 1]), minlength=30) / given.sum()
    expected = w.copy()
    expected[top] = 0
    assert np.abs(second - expected / expected.sum()).max() < 0.03


def test_sampled_responses_match_the_true_probabilities():
    world = World(SMALL)
    b = 30_000
    users = np.full(b, 3)
    slates = np.tile(np.arange(10), (b, 1))
    ctx = Context(np.full(b, 20), np.full(b, 2), np.zeros(b, dtype=int))
    sat = np.zeros((b, world.n_categories))
    resp = sample_response(world, users, slates, ctx, 0, sat, np.random.default_rng(1))
    p_click = world.click_probabilities(users[:1], slates[:1], np.arange(10)[None], ctx, 0)[0]
    p_cart, p_buy = world.funnel_probabilities(users[:1], slates[:1], ctx, 0)
    assert np.allclose(resp.click.mean(axis=0), p_click, atol=0.012)
    assert np.isclose(
        resp.cart.sum() / resp.click.sum(), (p_click * p_cart[0]).sum() / p_click.sum(), atol=0.02
    )


# ------------------------------------------------------------------ config and CLI
@pytest.mark.parametrize(
    "override, message",
    [
        ("simulator.items=5", "slate_size (10) cannot exceed items (5)"),
        ("simulator.start_date=next-monday", "start_date must be a date"),
        ("simulator.categories=[a, a]", "names must be unique"),
        ("simulator.drift.preference_shift=2", "simulator.drift.preference_shift"),
        ("simulator.cart_rate=0.9", "simulator.cart_rate"),
        ("simulator.drift.colour=1", "simulator.drift.colour: unknown key"),
    ],
)
def test_bad_simulator_config_is_a_clear_error(override, message):
    """The message names the key and the reason."""
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        load_config(None, [override])


def test_start_date_may_be_an_unquoted_yaml_date(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("simulator:\n  start_date: 2026-02-02\n")
    assert load_config(f).simulator.start_date == "2026-02-02"


def test_cli_generate_writes_the_dataset(tmp_path: Path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "data",
            "generate",
            "--users",
            "40",
            "--items",
            "30",
            "--days",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    for name in ("events.parquet", "items.parquet", "users.parquet", "simulator.json"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "generated" in printed and "click-through rate" in printed
    meta = json.loads((out / "simulator.json").read_text())
    assert meta["config"]["users"] == 40 and meta["config"]["seed"] == 3
    assert len(_read(out / "users.parquet")) == 40


# ------------------------------------------------------------------ the default world stays as it was
#: sha256 of a small default-world data set (events, items, users as CSV, numbers to 10 significant digits),
#: recorded on main at eeed47f before the organic-views preset was added (issue 13): adding presets must not change
#: the default world. Not 17 digits: numpy's vectorised exp/log can differ in the last bit between CPUs (AVX-512
#: or not), which changed the 17-digit hash from one CI machine to another with the same code and libraries.
DEFAULT_WORLD_SHA256 = "160d33fa8261ea4592438652865a674c3ebccc2f57d7a20281fefd1049ae8f0a"


def test_default_world_is_byte_identical_to_before_the_presets():
    import hashlib

    log = simulate_log(SimulatorConfig(users=200, items=150, days=3, seed=7))
    digest = hashlib.sha256()
    for name, frame in (("events", log.events), ("items", log.items()), ("users", log.users())):
        digest.update(name.encode())
        digest.update(frame.to_csv(index=False, float_format="%.10g").encode())
    assert len(log.events) == 5214
    assert digest.hexdigest() == DEFAULT_WORLD_SHA256


def test_drift_leaves_the_days_before_it_identical_to_the_no_drift_world():
    """All of the drift's randomness has its own stream: days 0-6 of a world drifting on day 7 are the no-drift
    world's, event for event; users are the same, the base catalog too (prices change only on the drift day)."""
    base = SimulatorConfig(users=300, items=200, days=9, seed=21)
    drift = base.model_copy(update={"drift": base.drift.model_copy(update={
        "day": 7, "new_items": 50, "preference_shift": 0.8, "category_demand_shift": {"toys": -1.0}})})
    plain, drifted = simulate_log(base), simulate_log(drift)
    start = pd.Timestamp(base.start_date, tz="UTC") + pd.Timedelta(days=7)

    def before(ev: pd.DataFrame) -> pd.DataFrame:
        return ev[ev["timestamp"] < start].reset_index(drop=True)

    assert len(before(plain.events)) > 1000
    pd.testing.assert_frame_equal(before(plain.events), before(drifted.events), check_exact=True)
    after_plain, after_drift = (ev[ev["timestamp"] >= start] for ev in (plain.events, drifted.events))
    assert len(after_plain) != len(after_drift) or not after_plain.reset_index(drop=True).equals(
        after_drift.reset_index(drop=True))
    pd.testing.assert_frame_equal(plain.users(), drifted.users(), check_exact=True)
    n = base.items
    pd.testing.assert_frame_equal(plain.world.items_frame(day=6), drifted.world.items_frame(day=6).iloc[:n],
                                  check_exact=True)
    last_plain, last_drift = plain.items(), drifted.items().iloc[:n]
    repriced = drifted.world.item_repriced[:n]
    assert 0 < repriced.sum() < n
    pd.testing.assert_frame_equal(last_plain[~repriced], last_drift[~repriced], check_exact=True)
    assert (last_drift["price"][repriced].to_numpy() > last_plain["price"][repriced].to_numpy()).all()
    new = drifted.items().iloc[n:]
    assert len(new) == 50 and (new["created_at"] == start).all()
    # the drift's own draws do not depend on the drift day: the same new items and repricing on another day
    other = World(drift.model_copy(update={"drift": drift.drift.model_copy(update={"day": 5})}))
    assert np.array_equal(other.item_repriced, drifted.world.item_repriced)
    assert np.array_equal(other.item_factors, drifted.world.item_factors)


def test_cli_generate_takes_drift_options(tmp_path: Path, capsys):
    out = tmp_path / "drift"
    common = ["--users", "40", "--items", "30", "--days", "3", "--seed", "3", "--quiet"]
    rc = main(["--set", "simulator.drift.price_change_share=0.5", "data", "generate", *common,
               "--drift-day", "2", "--drift-shift", "0.4", "--drift-new-items", "7", "--out", str(out)])
    assert rc == 0
    drift = json.loads((out / "simulator.json").read_text())["config"]["drift"]
    assert drift["day"] == 2 and drift["preference_shift"] == 0.4 and drift["new_items"] == 7
    assert drift["price_change_share"] == 0.5
    items = _read(out / "items.parquet")
    assert len(items) == 37
    capsys.readouterr()
    rc = main(["data", "generate", "--world", "organic", "--drift-day", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--drift-day: drift options apply to the default world only" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
