"""The organic-views world preset (issue 13 item 6): batch log, online shop of new users, and its headroom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import chisquare

from recflow.cli import main
from recflow.config import RecflowConfig
from recflow.errors import ConfigError, DataError
from recflow.simulator import (
    HistoryBayesRecommender,
    HistoryPosterior,
    OrganicConfig,
    OrganicShop,
    OrganicUser,
    OrganicWorld,
    SimulatorConfig,
    World,
    generate_dataset,
    measure_headroom,
    simulate_organic_log,
)
from recflow.simulator.organic import most_viewed_item
from recflow.validation import validate_path

ORGANIC = SimulatorConfig(world="organic", seed=5)
SMALL = SimulatorConfig(world="organic", seed=5, organic=OrganicConfig(users=150))


@pytest.fixture(scope="module")
def default_organic_log():
    """The preset as shipped: 1,000 training users, 10 products, seed 5."""
    return simulate_organic_log(ORGANIC)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("organic") / "data"
    generate_dataset(SMALL, out, progress=False)
    return out


# ------------------------------------------------------------------ batch log
def test_same_seed_gives_identical_files_and_another_seed_does_not(small_dataset: Path, tmp_path: Path):
    again = tmp_path / "again"
    generate_dataset(SMALL, again, progress=False)
    for name in ("events.parquet", "items.parquet", "users.parquet"):
        assert (small_dataset / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    generate_dataset(SMALL.model_copy(update={"seed": 6}), other, progress=False)
    assert not pq.read_table(small_dataset / "events.parquet").equals(pq.read_table(other / "events.parquet"))


def test_a_users_log_does_not_depend_on_how_many_users_are_generated():
    few = simulate_organic_log(SMALL.model_copy(update={"organic": OrganicConfig(users=20)})).events
    many = simulate_organic_log(SMALL.model_copy(update={"organic": OrganicConfig(users=40)})).events
    cols = ["event_type", "timestamp", "item_id", "position"]
    a = few[few.user_id == "u000007"][cols].reset_index(drop=True)
    b = many[many.user_id == "u000007"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_the_dataset_passes_validation_and_follows_the_schema(small_dataset: Path, tmp_path: Path):
    report = validate_path(small_dataset, RecflowConfig().validation, quarantine_path=tmp_path / "q.parquet")
    assert report.passed, report.format()
    events = pq.read_table(small_dataset / "events.parquet").to_pandas()
    assert set(events.event_type) == {"view", "impression", "click"}
    assert events.event_id.is_unique
    assert events.timestamp.is_monotonic_increasing
    views = events[events.event_type == "view"]
    assert views.session_id.notna().all() and views.request_id.isna().all() and views.propensity.isna().all()
    assert (views.dwell_time_s > 0).all()
    # every click follows an impression of the same item in the same request
    imp = events[events.event_type == "impression"].set_index(["request_id", "item_id"])
    clicks = events[events.event_type == "click"]
    assert len(clicks) > 0
    for row in clicks.itertuples():
        shown = imp.loc[(row.request_id, row.item_id)]
        assert shown.timestamp < row.timestamp and shown.user_id == row.user_id
    users = pq.read_table(small_dataset / "users.parquet").to_pandas()
    assert set(events.user_id) <= set(users.user_id) and len(users) == 150
    meta = json.loads((small_dataset / "simulator.json").read_text())
    assert meta["world"] == "organic" and meta["config"]["organic"]["items"] == 10


def test_logged_recommendations_are_uniformly_random_with_their_propensities(default_organic_log):
    events = default_organic_log.events
    imp = events[events.event_type == "impression"]
    assert np.allclose(imp.propensity, 1 / 10)
    assert (imp.policy_id == "organic-uniform-random-v1").all()
    assert (imp.position == 0).all() and imp.request_id.is_unique  # slate size 1 by default
    counts = imp.item_id.value_counts().reindex(default_organic_log.world.item_ids, fill_value=0)
    assert chisquare(counts.to_numpy()).pvalue > 0.001
    # views are far from uniform: browsing follows the users' tastes
    views = events[events.event_type == "view"].item_id.value_counts()
    assert chisquare(views.to_numpy()).pvalue < 1e-6


def test_slates_of_several_items_hold_distinct_items_with_per_slot_propensity_one_over_n():
    config = SimulatorConfig(world="organic", seed=8, organic=OrganicConfig(users=200, items=100, slate_size=4))
    events = simulate_organic_log(config).events
    imp = events[events.event_type == "impression"]
    per_request = imp.groupby("request_id")
    assert (per_request.size() == 4).all() and (per_request.item_id.nunique() == 4).all()
    assert sorted(imp.position.unique()) == [0, 1, 2, 3]
    assert np.allclose(imp.propensity, 1 / 100)
    assert imp.item_id.nunique() == 100
    clicks = events[events.event_type == "click"]
    assert clicks.position.isin([0, 1, 2, 3]).all()


def test_views_dominate_and_random_recommendations_are_clicked_about_one_percent(default_organic_log):
    counts = default_organic_log.events.event_type.value_counts()
    total = counts.sum()
    # targets: 5 views and 1.5 recommendations per visit -> 5 / 6.5 = 77% views; click_rate 1%
    assert 0.72 < counts["view"] / total < 0.82
    ctr = counts["click"] / counts["impression"]
    assert 0.0075 < ctr < 0.0125, ctr
    per_user = default_organic_log.events.groupby("user_id").size()
    assert per_user.index.nunique() == 1000
    assert 30 < per_user.mean() < 80  # 8 visits of 5 views + 1.5 recommendations


def test_the_item_count_is_configurable():
    config = SimulatorConfig(world="organic", seed=2, organic=OrganicConfig(users=50, items=100))
    log = simulate_organic_log(config)
    assert len(log.items()) == 100
    assert log.events.item_id.isin(log.items().item_id).all()


# ------------------------------------------------------------------ online shop of new users
def test_online_users_are_new_people_from_another_stream(default_organic_log):
    shop = OrganicShop(ORGANIC)
    online = [shop.new_user() for _ in range(50)]
    assert {u.user_id for u in online}.isdisjoint(set(default_organic_log.events.user_id))
    assert [u.user_id for u in online[:2]] == ["n000000", "n000001"]
    # the same world (products) as the training log
    assert np.array_equal(shop.world.click_embedding, default_organic_log.world.click_embedding)
    # their first visits start in the window after the training window (2026-01-05 + 14 days)
    training_end = default_organic_log.events.timestamp.max()
    first = min(pd.Timestamp(u.history[0]["timestamp"]) for u in online)
    assert first >= pd.Timestamp("2026-01-19", tz="UTC") and first < training_end
    for u in online:
        assert len(u.viewed_items()) >= 1 and all(e["event_type"] == "view" for e in u.history)
        assert set(u.history[0]) == {"item_id", "event_type", "timestamp"}


def _serve(shop: OrganicShop, index: int, choose) -> tuple[list, list]:
    user = shop.user(index)
    feedback = []
    while not user.done:
        feedback.append(shop.show(user, choose(user)))
    return user.history, feedback


def test_the_online_shop_is_deterministic_and_views_do_not_depend_on_what_is_shown():
    first = OrganicShop(ORGANIC.organic, seed=5)
    second = OrganicShop(ORGANIC.organic, seed=5)
    history_a, feedback_a = _serve(first, 3, lambda u: ["i000000"])
    history_b, feedback_b = _serve(second, 3, lambda u: ["i000000"])
    assert history_a == history_b and feedback_a == feedback_b
    history_c, feedback_c = _serve(first, 3, lambda u: [most_viewed_item(u.viewed_items())])
    assert [e for e in history_a if e["event_type"] == "view"] == [e for e in history_c if e["event_type"] == "view"]
    assert len(feedback_a) == len(feedback_c)
    assert OrganicShop(ORGANIC.organic, seed=6).user(3).history != first.user(3).history


def test_history_grows_between_recommendations_and_the_user_eventually_leaves():
    shop = OrganicShop(ORGANIC)
    grew = 0
    for _ in range(20):
        user = shop.new_user()
        shown = 0
        while not user.done:
            before = len(user.viewed_items())
            fb = shop.show(user, [shop.item_ids[shown % 10]])
            shown += 1
            assert len(fb.probabilities) == 1 and 0 < fb.probabilities[0] < 1
            grew += len(user.viewed_items()) > before
        times = [pd.Timestamp(e["timestamp"]) for e in user.history]
        assert times == sorted(times)
        assert user.recommendations == shown
        with pytest.raises(ValueError, match="has left"):
            shop.show(user, ["i000000"])
    assert grew > 20  # most users come back for more visits (8 on average)


def test_feedback_carries_the_true_probabilities_and_clicks_follow_them():
    shop = OrganicShop(ORGANIC.organic.model_copy(update={"items": 20, "slate_size": 3}), seed=4)
    probs, clicks = [], []
    for _ in range(300):
        user = shop.new_user()
        while not user.done:
            slate = shop.item_ids[:3]
            expected = shop.click_probabilities(user, slate)
            fb = shop.show(user, slate)
            assert np.allclose(fb.probabilities, expected)
            assert fb.expected_clicks == pytest.approx(float(expected.sum()))
            probs.extend(fb.probabilities)
            clicks.extend(fb.clicks)
    p, c = np.asarray(probs), np.asarray(clicks, dtype=float)
    # sampled clicks match the probabilities (binomial z-score of the total)
    assert abs(c.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    assert (p > 0).all() and (p < 1).all()


def test_later_slots_are_examined_less():
    shop = OrganicShop(ORGANIC.organic.model_copy(update={"items": 20, "slate_size": 3}), seed=4)
    user = shop.new_user()
    alone = shop.world.first_slot_probabilities(user.latent)
    slate = ["i000004", "i000011", "i000017"]
    expected = alone[[4, 11, 17]] * np.array([1.0, 2.0**-0.8, 3.0**-0.8])
    assert np.allclose(shop.click_probabilities(user, slate), expected)


def test_bad_slates_are_clear_errors():
    shop = OrganicShop(ORGANIC)
    user = shop.new_user()
    with pytest.raises(DataError, match="i999999"):
        shop.show(user, ["i999999"])
    with pytest.raises(DataError, match="repeats"):
        shop.show(user, ["i000001", "i000001"])
    with pytest.raises(DataError, match="empty"):
        shop.show(user, [])


def test_the_world_has_learnable_signal_and_headroom():
    """Recommending the user's most-viewed item beats random clearly; the oracle is higher still."""
    h = measure_headroom(ORGANIC.organic, seed=0, users=400)
    assert 0.007 < h.random < 0.013
    ratios = h.ratios()
    assert ratios["most_viewed"] > 1.3
    assert ratios["oracle"] > 1.2 * ratios["most_viewed"]
    assert h.recommendations > 8 * 400  # users stay for several recommendations


# ------------------------------------------------------------------ config and CLI
def test_the_default_world_classes_refuse_the_organic_config():
    with pytest.raises(ConfigError, match="organic"):
        World(ORGANIC)


@pytest.mark.parametrize(
    ("update", "message"),
    [({"slate_size": 11}, "slate_size"), ({"items": 1}, "items"), ({"click_rate": 0.0}, "click_rate")],
)
def test_bad_organic_config_is_a_clear_error(update, message):
    with pytest.raises(ValueError, match=message):
        OrganicConfig(**update)


def test_cli_generates_the_organic_world(tmp_path: Path, capsys):
    assert main(["data", "generate", "--help"]) in (0, None)
    assert "--world" in capsys.readouterr().out
    out = tmp_path / "cli"
    rc = main(["data", "generate", "--world", "organic", "--users", "30", "--items", "100", "--seed", "3",
               "--out", str(out), "--quiet"])
    assert rc == 0
    meta = json.loads((out / "simulator.json").read_text())
    assert meta["config"]["world"] == "organic"
    assert meta["config"]["organic"]["users"] == 30 and meta["config"]["organic"]["items"] == 100
    assert len(pq.read_table(out / "items.parquet")) == 100
    assert "view" in capsys.readouterr().out


# ------------------------------------------------------------------ the history-Bayes ceiling
def test_the_history_posterior_finds_the_latent_of_a_user_with_many_views():
    """Fed many views drawn from a known taste, the posterior mean points where the taste does, and the
    posterior's best products are the true model's best."""
    world = OrganicWorld(ORGANIC.organic, seed=0)
    rng = np.random.default_rng(7)
    latent = rng.normal(size=world.config.latent_dim)
    posterior = HistoryPosterior(world, np.random.default_rng(8), particles=4000)
    logits = world.organic_logits(latent)  # independent views (no co-view chain): one view per "visit"
    p = np.exp(logits - logits.max())
    for item in rng.choice(world.n_items, size=300, p=p / p.sum()):
        posterior.observe_views([int(item)])
    w = posterior._normalized()
    mean = w @ posterior.latents
    cosine = float(mean @ latent / np.linalg.norm(mean) / np.linalg.norm(latent))
    assert cosine > 0.9
    truth = world.first_slot_probabilities(latent)
    assert int(np.argmax(posterior.expected_click_probabilities())) == int(np.argmax(truth))


def test_a_click_raises_and_a_skip_lowers_the_posterior_click_probability_of_the_shown_item():
    world = OrganicWorld(ORGANIC.organic, seed=0)
    before = HistoryPosterior(world, np.random.default_rng(1)).expected_click_probabilities()
    clicked = HistoryPosterior(world, np.random.default_rng(1))
    clicked.observe_feedback([3], [True])
    skipped = HistoryPosterior(world, np.random.default_rng(1))
    skipped.observe_feedback([3], [False])
    assert clicked.expected_click_probabilities()[3] > before[3] > skipped.expected_click_probabilities()[3]
    with pytest.raises(ValueError, match="particles"):
        HistoryPosterior(world, np.random.default_rng(1), particles=0)


def test_the_history_bayes_recommender_reads_the_history_and_never_the_true_taste(monkeypatch):
    """It serves from the user's requests alone: reading ``user.latent`` is an error here, and the same shop
    seed gives the same slates."""
    def forbidden(self):
        raise AssertionError("the history-Bayes recommender read the true latent")

    def slates() -> list[list[str]]:
        shop = OrganicShop(ORGANIC)
        bayes = HistoryBayesRecommender(shop, particles=500)
        out = []
        for _ in range(5):
            user = shop.new_user()
            while not user.done:
                with monkeypatch.context() as m:  # the shop itself reads the latent to sample clicks
                    m.setattr(OrganicUser, "latent", property(forbidden))
                    out.append(bayes.slate(user, 2))
                fb = shop.show(user, out[-1])
                with monkeypatch.context() as m:
                    m.setattr(OrganicUser, "latent", property(forbidden))
                    bayes.feedback(fb)
        return out

    first = slates()
    assert first == slates()
    assert all(len(s) == 2 and len(set(s)) == 2 for s in first)
    shop = OrganicShop(ORGANIC)
    user = shop.new_user()
    with pytest.raises(ValueError, match=f"feedback for user {user.user_id}, who was never served"):
        HistoryBayesRecommender(shop).feedback(shop.show(user, ["i000001"]))


def test_the_history_bayes_ceiling_lies_between_most_viewed_and_the_oracle():
    """The posterior of the views under the true model earns more than the user's most-viewed product and, by
    construction, no more than the oracle; the same call gives the same figures."""
    h = measure_headroom(ORGANIC.organic, seed=0, users=150, particles=1000)
    assert h.most_viewed < h.history_bayes <= h.oracle
    assert h == measure_headroom(ORGANIC.organic, seed=0, users=150, particles=1000)
