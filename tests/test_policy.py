"""The TF-Agents policy: logged data, agents, PolicySaver export and reload, slates, OPE probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recflow.errors import DataError
from recflow.policy.config import PolicyConfig
from recflow.policy.logged_data import EVENT_COLUMNS, arm_features, build_bandit_data, load_bandit_data, read_events

DIM = 4
N_ITEMS = 24
N_USERS = 30


def _world(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    items[:, 0] = np.where(np.arange(N_ITEMS) % 2 == 0, 1.0, -1.0)  # feature 0 says good (+1) or bad (-1)
    users = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    return {
        "item_ids": np.array([f"i{j}" for j in range(N_ITEMS)]),
        "items": items,
        "user_ids": np.array([f"u{j}" for j in range(N_USERS)]),
        "users": users,
    }


def _events(world: dict[str, np.ndarray], n_requests: int, seed: int, slate: int = 3,
            with_propensity: bool = True) -> pd.DataFrame:
    """Uniform-random logging of slates; good items are clicked with 0.7, bad with 0.05; some purchases."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = pd.Timestamp("2026-01-05", tz="UTC")
    for r in range(n_requests):
        user = f"u{rng.integers(0, N_USERS + 3)}"  # a few users unknown to the retrieval model
        shown = rng.choice(N_ITEMS, size=slate, replace=False)
        ts = t0 + pd.Timedelta(minutes=r)
        ctx = {"hour": int(rng.integers(0, 24)), "weekday": int(rng.integers(0, 7)),
               "device": str(rng.choice(["desktop", "mobile", "watch"]))}
        for pos, j in enumerate(shown):
            base = {"user_id": user, "item_id": f"i{j}", "request_id": f"r{r}", "timestamp": ts, **ctx}
            prop = 1.0 / (N_ITEMS - pos) if with_propensity else None
            rows.append({**base, "event_type": "impression", "position": pos, "propensity": prop})
            good = world["items"][j, 0] > 0
            if rng.random() < (0.7 if good else 0.05):
                rows.append({**base, "event_type": "click", "timestamp": ts + pd.Timedelta(seconds=5)})
                if rng.random() < 0.3:
                    rows.append({**base, "event_type": "purchase", "timestamp": ts + pd.Timedelta(seconds=60)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    return _world()


def _data(world, events, config):
    return build_bandit_data(events, world["item_ids"], world["items"], world["user_ids"], world["users"], config)


def test_logged_data_shapes_rewards_and_unknown_users(world):
    config = PolicyConfig(num_arms=5)
    events = _events(world, 60, seed=1)
    data = _data(world, events, config)
    n_imp = int((events["event_type"] == "impression").sum())
    assert len(data) == n_imp
    assert data.global_features.shape == (n_imp, DIM + 24 + 7 + 4)
    assert data.arm_features.shape == (n_imp, 5, 2 * DIM + 1)
    assert data.propensity_source == "logged"
    np.testing.assert_allclose(data.propensities, 1.0 / (N_ITEMS - data.positions))
    # The logged item sits in its chosen arm slot; the other arms are distinct other items.
    assert (data.candidate_item_ids[np.arange(n_imp), data.chosen_arms] == data.item_ids).all()
    assert all(len(set(row)) == 5 for row in data.candidate_item_ids)
    # Rewards: click 1 + purchase 5, matched by request id.
    clicks = events[events["event_type"] == "click"]
    assert data.clicks.sum() == len(clicks)
    np.testing.assert_allclose(data.rewards, data.clicks + 5 * data.purchases)
    # Unknown users get the mean user embedding, and the notes say so.
    unknown = ~np.isin(data.user_ids, world["user_ids"])
    assert unknown.any()
    np.testing.assert_allclose(data.user_embeddings[unknown], np.tile(world["users"].mean(0), (unknown.sum(), 1)),
                               rtol=1e-5)
    assert any("without an embedding" in note for note in data.notes)
    # Device "watch" is not a known device: it lands in "other".
    watch = (data.context["device"] == "watch").to_numpy()
    assert (data.global_features[watch, -1] == 1).all()


def test_arm_features_built_on_demand_equal_the_whole_and_subsets_keep_the_catalog(world):
    data = _data(world, _events(world, 40, seed=3), PolicyConfig(num_arms=6))
    n = len(data)
    whole = arm_features(data.user_embeddings, world["items"][data.arm_rows])
    np.testing.assert_array_equal(data.arm_features, whole)
    np.testing.assert_array_equal(data.chosen_arm_features, whole[np.arange(n), data.chosen_arms])
    np.testing.assert_array_equal(data.candidate_item_ids, world["item_ids"][data.arm_rows])
    keep = np.array([n - 1, 0, 5])
    part = data.subset(keep)
    np.testing.assert_array_equal(part.arm_features, whole[keep])
    np.testing.assert_array_equal(part.chosen_arm_features, whole[keep, data.chosen_arms[keep]])
    np.testing.assert_array_equal(part.candidate_item_ids, data.candidate_item_ids[keep])


def test_load_bandit_data_reads_only_the_columns_it_uses(world, tmp_path):
    events = _events(world, 30, seed=4).assign(recent_items=lambda d: [["x"] * 10] * len(d), session_id="s")
    events.to_parquet(tmp_path / "train.parquet", index=False)
    pd.DataFrame({"item_id": world["item_ids"], "embedding": list(world["items"])}).to_parquet(
        tmp_path / "item_embeddings.parquet", index=False)
    pd.DataFrame({"user_id": world["user_ids"], "embedding": list(world["users"])}).to_parquet(
        tmp_path / "user_embeddings.parquet", index=False)
    read = read_events(tmp_path / "train.parquet", EVENT_COLUMNS)
    assert "recent_items" not in read.columns and "session_id" not in read.columns
    assert set(read.columns) == set(EVENT_COLUMNS)
    config = PolicyConfig(num_arms=5)
    loaded = load_bandit_data(tmp_path / "train.parquet", tmp_path, config)
    whole = _data(world, events, config)
    np.testing.assert_array_equal(loaded.global_features, whole.global_features)
    np.testing.assert_array_equal(loaded.chosen_arm_features, whole.chosen_arm_features)
    np.testing.assert_array_equal(loaded.rewards, whole.rewards)


def test_missing_propensities_are_estimated_and_feedback_without_request_id(world):
    events = _events(world, 80, seed=2, with_propensity=False)
    fb = events["event_type"] != "impression"
    events.loc[fb, "request_id"] = None  # feedback credited by user, item and time instead
    data = _data(world, events, PolicyConfig(num_arms=4))
    assert data.propensity_source == "estimated"
    assert any("estimated" in note for note in data.notes)
    for pos in np.unique(data.positions):
        at = data.positions == pos
        shares = pd.Series(data.item_ids[at]).value_counts(normalize=True)
        np.testing.assert_allclose(data.propensities[at], shares[data.item_ids[at]].to_numpy())
    assert data.clicks.sum() == int((events["event_type"] == "click").sum())


def test_logged_data_errors(world, tmp_path):
    with pytest.raises(DataError, match="num_arms"):
        _data(world, _events(world, 5, seed=3), PolicyConfig(num_arms=N_ITEMS + 1))
    with pytest.raises(DataError, match="no impression"):
        _data(world, _events(world, 5, seed=3).query("event_type != 'impression'"), PolicyConfig())
    bad = _events(world, 5, seed=3)
    bad.loc[0, "propensity"] = 1.5
    with pytest.raises(DataError, match="impression 0, field 'propensity'"):
        _data(world, bad, PolicyConfig(num_arms=4))
    with pytest.raises(DataError, match="embeddings file not found"):
        load_bandit_data(tmp_path / "train.parquet", tmp_path, PolicyConfig())


def test_config_rejects_inconsistent_exploration():
    with pytest.raises(ValidationError, match="thompson"):
        PolicyConfig(agent="neural_epsilon_greedy", exploration="thompson")
    with pytest.raises(ValidationError, match="extra"):
        PolicyConfig(epsilom=0.2)


AGENTS = [
    PolicyConfig(agent="neural_epsilon_greedy", num_arms=6, epochs=3, batch_size=64, learning_rate=0.01,
                 hidden_units=(16, 8)),
    PolicyConfig(agent="lin_ucb", num_arms=6, alpha=0.1, batch_size=128),
    PolicyConfig(agent="linear_thompson_sampling", exploration="thompson", num_arms=6, alpha=0.1, batch_size=128),
]


@pytest.mark.parametrize("config", AGENTS, ids=lambda c: c.agent)
def test_agents_learn_to_prefer_good_arms_and_survive_export(world, config, tmp_path):
    from recflow.policy.scorer import load_policy
    from recflow.policy.trainer import export_policy, train_agent

    train = _data(world, _events(world, 400, seed=4), config)
    agent, epsilon, curve, steps = train_agent(train, config)
    assert steps > 0 and curve and np.isfinite(curve).all()
    test = _data(world, _events(world, 60, seed=5), config.model_copy(update={"seed": 9}))
    step = _time_step(test)
    mean = agent.policy.action(step).info.predicted_rewards_mean.numpy()
    good = np.isin(test.candidate_item_ids, world["item_ids"][0::2])
    greedy_good = good[np.arange(len(test)), mean.argmax(axis=1)].mean()
    assert greedy_good >= 0.9 > good.mean() + 0.3  # random picks a good arm about half the time

    meta = {"agent": config.agent, "exploration": config.exploration, "epsilon": float(epsilon.numpy()),
            "alpha": config.alpha, "tikhonov_weight": 1.0, "num_arms": config.num_arms,
            "feature_layout": train.layout.describe(), "item_ids": list(world["item_ids"]),
            "config": config.model_dump(mode="json")}
    export_policy(agent, tmp_path, meta, world["items"])
    scorer = load_policy(tmp_path)
    reloaded = scorer.policy_step(test.global_features, test.arm_features)
    np.testing.assert_allclose(reloaded.info.predicted_rewards_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    if config.agent == "lin_ucb":  # deterministic policy: the very same actions
        np.testing.assert_array_equal(reloaded.action.numpy(), agent.policy.action(step).action.numpy())


def _time_step(data):
    import tensorflow as tf
    from tf_agents.trajectories import time_step as ts

    return ts.restart({"global": tf.constant(data.global_features), "per_arm": tf.constant(data.arm_features)},
                      batch_size=len(data))


def _write_examples(world, root: Path) -> tuple[Path, Path]:
    examples, model = root / "examples", root / "model"
    examples.mkdir()
    model.mkdir()
    _events(world, 300, seed=6).to_parquet(examples / "train.parquet")
    _events(world, 400, seed=7).to_parquet(examples / "eval.parquet")
    pd.DataFrame({"item_id": world["item_ids"]}).to_parquet(examples / "items.parquet")
    pd.DataFrame({"item_id": world["item_ids"], "embedding": list(world["items"])}).to_parquet(
        model / "item_embeddings.parquet")
    pd.DataFrame({"user_id": world["user_ids"], "embedding": list(world["users"])}).to_parquet(
        model / "user_embeddings.parquet")
    return examples, model


def test_train_policy_end_to_end_slates_and_off_policy_estimate(world, tmp_path):
    import json

    from recflow.evaluation.off_policy import evaluate_policy_offline
    from recflow.policy.trainer import load_policy, train_policy

    examples, model = _write_examples(world, tmp_path)
    config = PolicyConfig(num_arms=6, epochs=3, batch_size=64, learning_rate=0.01, hidden_units=(16, 8),
                          epsilon=0.2, epsilon_decay=0.99, min_epsilon=0.05, slate_size=3)
    result = train_policy(examples, model, tmp_path / "out", config)
    assert result.steps == 3 * -(-result.n_decisions // 64)
    assert np.isfinite(result.final_loss) and result.loss_curve[-1] < result.loss_curve[0]
    meta = json.loads((tmp_path / "out" / "policy_meta.json").read_text())
    assert meta["agent"] == "neural_epsilon_greedy" and meta["num_arms"] == 6
    assert meta["item_ids"] == list(world["item_ids"])
    assert meta["epsilon"] == pytest.approx(max(0.05, 0.2 * 0.99**result.steps), rel=1e-5)
    assert (tmp_path / "out" / "policy" / "saved_model.pb").is_file()

    scorer = load_policy(tmp_path / "out")
    user = world["users"][0]
    candidates = list(world["item_ids"][:10])
    items, props = scorer.choose(user, {"hour": 9, "device": "mobile"}, candidates, k=3, greedy=True)
    assert len(set(items)) == 3 and all(int(i[1:]) % 2 == 0 for i in items)  # good items first
    np.testing.assert_array_equal(props, 1.0)
    items, props = scorer.choose(user, None, candidates, k=10)
    assert sorted(items) == sorted(candidates) and ((props > 0) & (props <= 1)).all()

    # Action distributions: closed-form epsilon-greedy mixture, rows sum to 1, excluded items get 0.
    exclude = np.zeros((2, 10), dtype=bool)
    exclude[1, :3] = True
    dist = scorer.action_distribution(world["users"][:2], None, candidates, n=2, exclude=exclude)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    assert (dist[1, :3] == 0).all()
    assert dist.max(axis=1) == pytest.approx(1 - scorer.epsilon + scorer.epsilon / np.array([10, 7]))

    # Off-policy: the learned policy's click rate beats the uniform logger's on held-out logs.
    eval_data = load_bandit_data(examples / "eval.parquet", model, config, layout=scorer.layout)
    probs = scorer.logged_action_probabilities(eval_data)
    assert ((probs > 0) & (probs <= 1)).all()
    # in row chunks (as over a 100,000-item catalog) the probabilities are the same
    import recflow.policy.scorer as scorer_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scorer_module, "MAX_DISTRIBUTION_CELLS", 3 * len(scorer.item_ids))
        np.testing.assert_allclose(scorer.logged_action_probabilities(eval_data), probs, rtol=1e-6)
    # a seeded sample of whole requests bounds the scored (decision x item) pairs; it says so
    from recflow.evaluation.run import sample_requests

    n_items = len(scorer.item_ids)
    same, none = sample_requests(eval_data, n_items, len(eval_data) * n_items, seed=1)
    assert same is eval_data and none is None
    sample, note = sample_requests(eval_data, n_items, 10 * n_items, seed=1)
    assert 0 < len(sample) <= max(10, int(np.bincount(np.unique(eval_data.request_ids, return_inverse=True)[1]).max()))
    kept = set(sample.request_ids)
    assert sorted(sample.request_ids) == sorted(r for r in eval_data.request_ids if r in kept)  # requests whole
    assert note is not None and "ope_max_scored_pairs" in note and f"of {len(eval_data):,} decisions" in note
    again, _ = sample_requests(eval_data, n_items, 10 * n_items, seed=1)
    assert list(again.request_ids) == list(sample.request_ids)
    estimates = evaluate_policy_offline(eval_data, probs, replicates=200)
    assert estimates["click_rate/snips"].value > estimates["click_rate/logged"].value + 0.1
    assert estimates["click_rate/ips"].ci_low > estimates["click_rate/logged"].value - 0.1


def test_thompson_action_probabilities_sum_to_one(world, tmp_path):
    from recflow.policy.scorer import load_policy
    from recflow.policy.trainer import export_policy, train_agent

    config = AGENTS[2]
    train = _data(world, _events(world, 150, seed=8), config)
    agent, epsilon, _, _ = train_agent(train, config)
    meta = {"agent": config.agent, "exploration": "thompson", "epsilon": 0.0, "alpha": config.alpha,
            "tikhonov_weight": 1.0, "num_arms": config.num_arms, "feature_layout": train.layout.describe(),
            "item_ids": list(world["item_ids"]), "config": config.model_dump(mode="json")}
    export_policy(agent, tmp_path, meta, world["items"])
    scorer = load_policy(tmp_path, samples=100)
    dist = scorer.action_distribution(world["users"][:3], None, list(world["item_ids"]), n=3)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    again = load_policy(tmp_path, samples=100).action_distribution(world["users"][:3], None,
                                                                   list(world["item_ids"]), n=3)
    np.testing.assert_array_equal(dist, again)  # seeded Monte Carlo
    items, props = scorer.choose(world["users"][0], None, list(world["item_ids"]), k=4)
    assert len(set(items)) == 4 and ((props > 0) & (props <= 1)).all()
