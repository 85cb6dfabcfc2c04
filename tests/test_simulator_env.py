"""The step-by-step side of the world simulator: ShopEnv's contract, determinism, oracle, satiation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recflow import schema
from recflow.errors import DataError
from recflow.io import write_table
from recflow.simulator import Observation, ShopEnv, SimulatorConfig, StepResult, World

CFG = SimulatorConfig(users=200, items=300, seed=3)


def _random_policy(rng: np.random.Generator):
    return lambda env, obs: rng.choice(obs.candidates, env.config.slate_size, replace=False)


def _run(env: ShopEnv, policy, episodes: int, seed: int) -> list[tuple[float, bool, int]]:
    trace = []
    obs = env.reset(seed=seed)
    for ep in range(episodes):
        if ep:
            obs = env.reset()
        while True:
            result = env.step(policy(env, obs))
            trace.append(
                (result.reward, result.done, len(result.events) if result.events is not None else -1)
            )
            if result.done:
                break
            obs = result.observation
    return trace


def test_reset_and_step_contract(tmp_path: Path):
    env = ShopEnv(CFG, seed=1)
    obs = env.reset(seed=1)
    assert isinstance(obs, Observation) and obs.request_index == 0 and obs.day == 0
    assert 0 <= obs.hour <= 23 and 0 <= obs.weekday <= 6
    assert obs.device in CFG.devices and obs.region in CFG.regions and obs.user_id == f"u{obs.user_idx:06d}"
    assert len(obs.candidates) == CFG.items and obs.history == ()
    slate = obs.candidates[: CFG.slate_size]
    result = env.step(slate)
    assert isinstance(result, StepResult)
    ev = result.events
    imp = ev[ev["event_type"] == "impression"]
    assert imp["item_id"].tolist() == [f"i{i:06d}" for i in slate] and imp["position"].tolist() == list(
        range(10)
    )
    assert (ev["session_id"] == obs.session_id).all() and ev["request_id"].nunique() == 1
    assert ev["event_id"].str.startswith("env-").all()
    counts = ev["event_type"].value_counts()
    assert result.reward == pytest.approx(counts.get("click", 0) * CFG.reward.click)
    assert result.info["clicks"] == counts.get("click", 0)
    for key in ("expected_reward", "oracle_expected_reward", "regret"):
        assert key in result.info
    assert result.info["regret"] >= 0
    # the events are in the schema: they round-trip through the recflow writer with the schema's types
    path = write_table(ev, tmp_path / "env_events.parquet", "events")
    table = pq.read_table(path)
    for fld in schema.arrow_schema("events", [c for c in ev.columns]):
        assert table.schema.field(fld.name).type == fld.type
    # a session ends eventually; stepping after that is an error until reset
    while not result.done:
        result = env.step(result.observation.candidates[: CFG.slate_size])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(slate)
    nxt = env.reset()
    assert nxt.session_id != obs.session_id and nxt.timestamp > obs.timestamp


def test_invalid_slates_are_clear_errors():
    env = ShopEnv(CFG, seed=1)
    obs = env.reset(seed=1)
    with pytest.raises(DataError, match="distinct"):
        env.step([obs.candidates[0], obs.candidates[0]])
    with pytest.raises(DataError, match="expected 1..10 items"):
        env.step(obs.candidates[:11])
    with pytest.raises(DataError, match="item index 99999 is not in the catalog"):
        env.step([99999])
    with pytest.raises(DataError, match="unknown item id 'i999999'"):
        env.step_ids(["i000001", "i999999"])
    with pytest.raises(DataError, match="unknown user id"):
        env.reset(user="nobody")


def test_step_ids_drives_the_env_with_item_id_strings():
    env = ShopEnv(CFG, seed=4)
    obs = env.reset(seed=4, user="u000010")
    assert obs.user_id == "u000010"
    ids = obs.candidate_ids(env.world)[5:15]
    result = env.step_ids(ids, propensities=[0.1] * 10, policy_id="http-model")
    imp = result.events[result.events["event_type"] == "impression"]
    assert imp["item_id"].tolist() == ids
    assert (imp["propensity"] == 0.1).all() and (result.events["policy_id"] == "http-model").all()


def test_env_is_deterministic_for_a_seed():
    a = _run(ShopEnv(CFG, seed=9), _random_policy(np.random.default_rng(0)), 30, seed=9)
    b = _run(ShopEnv(CFG, seed=9), _random_policy(np.random.default_rng(0)), 30, seed=9)
    c = _run(ShopEnv(CFG, seed=10), _random_policy(np.random.default_rng(0)), 30, seed=10)
    assert a == b and a != c
    # reset(seed) starts over: the same env replays the same traffic
    env = ShopEnv(CFG, seed=9)
    _run(env, _random_policy(np.random.default_rng(5)), 10, seed=9)
    assert _run(env, _random_policy(np.random.default_rng(0)), 30, seed=9) == a


def test_oracle_is_best_and_expected_reward_matches_the_realised_mean():
    cfg = CFG.model_copy(
        update={"reward": CFG.reward.model_copy(update={"add_to_cart": 2.0, "purchase": 5.0})}
    )
    env = ShopEnv(cfg, seed=2, record_events=False)
    obs = env.reset(seed=2)
    oracle = env.oracle_slate()
    best = env.expected_reward(oracle)
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert env.expected_reward(rng.choice(obs.candidates, 10, replace=False)) <= best + 1e-12
    assert env.expected_reward(oracle[::-1]) < best  # position bias: order matters
    # the realised reward of a fixed state averages to the expected reward (same world, many fresh draws)
    world = env.world
    realised = []
    for seed in range(600):
        e = ShopEnv(cfg, seed=2, world=world, record_events=False)
        e.reset(seed=2)
        e._rng = np.random.default_rng(seed)  # fresh reaction draws for the same user, context and state
        realised.append(e.step(oracle).reward)
    se = np.std(realised) / np.sqrt(len(realised))
    assert abs(np.mean(realised) - best) < 4 * se


def test_satiation_makes_showing_one_category_worse_over_a_session():
    """What is shown now changes what the user wants later, so a myopic single-category policy loses."""

    def same_category(env, obs):
        w = env.world
        fav = int(np.argmax(w.preferences(obs.day)[obs.user_idx]))
        cands = obs.candidates[w.item_category[obs.candidates] == fav]
        return cands[np.argsort(-w.popularity[cands])][: env.config.slate_size]

    def diversified(env, obs):
        w = env.world
        slate = []
        for cat in np.argsort(-w.preferences(obs.day)[obs.user_idx])[:5]:
            cands = obs.candidates[w.item_category[obs.candidates] == cat]
            slate += list(cands[np.argsort(-w.popularity[cands])][:2])
        return np.array(slate)

    def per_step_expected(weight: float, policy) -> tuple[np.ndarray, float]:
        cfg = CFG.model_copy(
            update={
                "satiation_weight": weight,
                "continue_probability": 0.9,
                "continue_after_click": 0.9,
                "max_requests_per_session": 6,
            }
        )
        env = ShopEnv(cfg, seed=3, record_events=False)
        sums, counts, total = np.zeros(6), np.zeros(6), 0.0
        obs = env.reset(seed=3)
        for ep in range(150):
            if ep:
                obs = env.reset()
            while True:
                slate = policy(env, obs)
                sums[obs.request_index] += env.expected_reward(slate)
                counts[obs.request_index] += 1
                result = env.step(slate)
                total += result.reward
                if result.done:
                    break
                obs = result.observation
        return sums / counts, total

    same, same_total = per_step_expected(1.0, same_category)
    diverse, diverse_total = per_step_expected(1.0, diversified)
    assert same[3] < 0.3 * same[0]  # the user tires of the category
    assert diverse[3] > same[3] * 2
    assert diverse_total > 1.5 * same_total
    flat, _ = per_step_expected(0.0, same_category)  # without satiation nothing wears off
    assert flat[3] > 0.85 * flat[0]


def test_env_clock_advances_and_drift_applies_from_its_day():
    cfg = CFG.model_copy(
        update={
            "users": 50,
            "sessions_per_user_per_day": 2.0,
            "drift": CFG.drift.model_copy(update={"day": 1, "new_items": 20}),
        }
    )
    env = ShopEnv(cfg, seed=5, record_events=False)
    world: World = env.world
    obs = env.reset(seed=5)
    assert len(obs.candidates) == 300
    days = []
    for _ in range(300):
        obs = env.reset()
        days.append(obs.day)
    assert days == sorted(days) and days[-1] >= 2
    assert len(obs.candidates) == 320
    assert env.expected_reward(obs.candidates[-10:]) > 0  # the new items can be shown
    assert np.array_equal(world.preferences(obs.day), world.user_preferences_drifted)


def test_the_simulated_client_sends_context_impressions_and_positive_events():
    from recflow.simulator.client import context_of, slate_feedback

    env = ShopEnv(CFG, seed=5)
    obs = env.reset()
    assert context_of(obs) == {"hour": obs.hour, "weekday": obs.weekday, "device": obs.device,
                               "region": obs.region}
    clicked = None
    for _ in range(300):  # until a slate gets a click
        slate = obs.candidate_ids(env.world)[: env.config.slate_size]
        step = env.step_ids(slate)
        feedback = slate_feedback(slate, "r1", step)
        assert [f["item_id"] for f in feedback[: len(slate)]] == slate
        assert all(f["event_type"] == "impression" and f["request_id"] == "r1" for f in feedback[: len(slate)])
        positives = feedback[len(slate):]
        assert all(f["event_type"] in schema.POSITIVE_EVENT_TYPES for f in positives)
        if any(f["event_type"] == "click" for f in positives):
            clicked = positives
            break
        obs = env.reset() if step.done else step.observation
    assert clicked and {f["item_id"] for f in clicked} <= set(slate)
    with pytest.raises(ValueError, match="record_events"):
        quiet = ShopEnv(CFG, seed=5, record_events=False)
        o = quiet.reset()
        slate_feedback([], "r2", quiet.step_ids(o.candidate_ids(quiet.world)[: quiet.config.slate_size]))


def test_attraction_probabilities_are_the_click_model_without_examination():
    """The myopic click oracle's scores: P(click) in each slot divided by the slot's examination, for the user,
    context, day and satiation of the current request (after steps that changed the satiation)."""
    env = ShopEnv(CFG, seed=4, record_events=False)
    obs = env.reset(seed=4)
    for _ in range(3):
        result = env.step(obs.candidates[: env.config.slate_size])
        obs = env.reset() if result.done else result.observation
    items = obs.candidates[:7]
    world = env.world
    positions = np.arange(len(items))
    expected = world.click_probabilities(
        np.array([obs.user_idx]), items[None, :], positions, env._context(obs), obs.day,
        env._satiation[obs.user_idx][None, :],
    )[0] / world.examination(positions, CFG.position_bias)
    got = env.attraction_probabilities(items)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert ((got > 0) & (got < 1)).all()
