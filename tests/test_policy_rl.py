"""Session agents over the simulator: the PyEnvironment, DQN and PPO training steps, export and reload."""

from __future__ import annotations

import numpy as np
import pytest

from recflow.policy.config import DeepRLConfig

RL = DeepRLConfig(num_candidates=12, hidden_units=(8,), batch_size=16, replay_capacity=600, train_every=1,
                  warmup_requests=10, train_requests=30, epsilon_decay_steps=20, ppo_requests_per_iteration=15,
                  ppo_epochs=2)


@pytest.fixture(scope="module")
def shop():
    from recflow.baselines import ALSRecommender
    from recflow.simulator import RewardConfig, SimulatorConfig, simulate_log

    cfg = SimulatorConfig(users=120, items=60, days=1, slate_size=3, seed=3,
                          reward=RewardConfig(click=1.0, add_to_cart=2.0, purchase=5.0))
    log = simulate_log(cfg)
    als = ALSRecommender(factors=4, iterations=3, seed=0).fit(log.events)
    return cfg, log, als


def _env(shop, seed: int = 0, record_events: bool = True):
    from recflow.policy.environment import CandidateFeaturizer, ShopPyEnvironment
    from recflow.simulator import ShopEnv

    cfg, log, als = shop
    shop_env = ShopEnv(cfg, seed=seed, world=log.world, record_events=record_events)
    return ShopPyEnvironment(shop_env, CandidateFeaturizer(shop_env, als, log.events, RL), seed=seed)


def test_environment_is_a_valid_tf_agents_env_and_slot_rewards_add_up(shop):
    from tf_agents.environments import utils

    env = _env(shop)
    utils.validate_py_environment(env, episodes=2)
    step = env.reset()
    assert step.observation.shape == (RL.num_candidates, env.featurizer.num_features)
    assert np.isfinite(step.observation).all()
    total = 0.0
    for _ in range(15):
        step = env.step(np.array([0, 0, 1], dtype=np.int32))  # a repeat is replaced, never shown twice
        assert len(set(env.last_slate.tolist())) == 3
        assert env.last_slot_rewards.sum() == pytest.approx(float(step.reward))
        total += float(step.reward)
        if step.is_last():
            env.reset()
    assert len(set(env.candidate_items.tolist())) == RL.num_candidates


def test_distinct_slate_and_exploration_schedules():
    from recflow.policy.candidate_networks import epsilon_greedy_slate, plackett_luce_slate
    from recflow.policy.dqn import epsilon_at
    from recflow.policy.environment import distinct_slate

    np.testing.assert_array_equal(distinct_slate(np.array([2, 2, 0]), 4), [2, 1, 0])
    assert epsilon_at(RL, 0) == pytest.approx(RL.epsilon_start)
    assert epsilon_at(RL, RL.epsilon_decay_steps * 3) == pytest.approx(RL.epsilon_end)
    rng = np.random.default_rng(0)
    scores = np.array([0.1, 0.9, 0.5, 0.3])
    slate, props = epsilon_greedy_slate(scores, 3, 0.0, rng)
    np.testing.assert_array_equal(slate, [1, 2, 3])
    np.testing.assert_allclose(props, 1.0)
    _, props = epsilon_greedy_slate(scores, 3, 1.0, rng)
    np.testing.assert_allclose(props, [1 / 4, 1 / 3, 1 / 2])
    firsts = [plackett_luce_slate(np.log(np.array([0.7, 0.2, 0.1])), 2, rng)[0] for _ in range(2000)]
    assert np.mean(np.array(firsts) == 0) == pytest.approx(0.7, abs=0.04)


def test_dqn_regresses_immediate_rewards_with_zero_discount(shop):
    """Closed form: with discount 0 the TD target is the reward itself, so Q(s, a) -> r on a fixed batch."""
    import tensorflow as tf

    from recflow.policy.dqn import make_dqn_agent, q_values, transitions_to_trajectory

    env = _env(shop)
    config = RL.model_copy(update={"learning_rate": 0.02, "hidden_units": (16,)})
    agent = make_dqn_agent(env, config, seed=1)
    env.reset()
    feats = np.random.default_rng(0).normal(size=env.observation_spec().shape).astype(np.float32)
    obs = np.stack([feats] * 8)
    actions = np.arange(8, dtype=np.int32)
    rewards = np.linspace(0.0, 2.0, 8).astype(np.float32)
    batch = {"observation": tf.constant(obs), "next_observation": tf.constant(obs),
             "action": tf.constant(actions), "reward": tf.constant(rewards), "discount": tf.zeros(8)}
    exp = transitions_to_trajectory(batch)
    for _ in range(400):
        loss = agent.train(exp)
    q = q_values(agent, feats)[actions]
    assert float(loss.loss) < 0.01
    np.testing.assert_allclose(q, rewards, atol=0.15)


def test_dqn_trains_online_exports_and_reloads(shop, tmp_path):
    from recflow.policy.candidate_networks import CandidatePolicy
    from recflow.policy.dqn import export_dqn, logging_behaviour, q_values, train_dqn

    env = _env(shop)
    res = train_dqn(env, RL, behaviour=logging_behaviour(shop[1].policy), seed=0, curve_every=10)
    assert res.requests == RL.warmup_requests + RL.train_requests
    assert res.steps > 0 and np.isfinite(res.losses).all()
    assert len(res.curve) == RL.train_requests // 10
    export_dqn(res.agent, tmp_path, RL, env)
    policy = CandidatePolicy(tmp_path)
    feats = env.features
    np.testing.assert_allclose(policy.scores(feats), q_values(res.agent, feats), rtol=1e-5, atol=1e-6)
    assert policy.saved_action(feats) == int(np.argmax(policy.scores(feats)))  # the exported greedy policy
    slate = policy.slate(feats, 3, greedy=True)
    np.testing.assert_array_equal(slate, np.argsort(-policy.scores(feats), kind="stable")[:3])


def test_ppo_trains_on_slot_streams_exports_and_reloads(shop, tmp_path):
    from recflow.policy.candidate_networks import CandidatePolicy
    from recflow.policy.ppo import actor_logits, export_ppo, streams_trajectory, train_ppo

    t, m, f, k = 4, 5, 2, 3
    traj = streams_trajectory(np.zeros((t, m, f), np.float32), np.zeros((t, m), np.float32),
                              np.tile(np.arange(k), (t, 1)), np.ones((t, k)), np.array([1, 0, 1, 0], bool),
                              np.array([0, 1, 0, 0], bool))
    assert traj.observation.shape == (k, t, m, f) and traj.action.shape == (k, t)
    np.testing.assert_array_equal(traj.discount.numpy()[0], [1, 0, 1, 1])
    np.testing.assert_array_equal(traj.step_type.numpy()[0], [0, 1, 0, 1])

    env = _env(shop, seed=2)
    res = train_ppo(env, RL, seed=0, curve_every=10)
    assert res.steps == RL.train_requests // RL.ppo_requests_per_iteration
    assert np.isfinite(res.losses).all()
    export_ppo(res.agent, tmp_path, RL, env)
    policy = CandidatePolicy(tmp_path, seed=0)
    feats = env.features
    np.testing.assert_allclose(policy.scores(feats), actor_logits(res.agent, feats), rtol=1e-5, atol=1e-6)
    assert 0 <= policy.saved_action(feats) < RL.num_candidates
    assert len(set(policy.slate(feats, 3).tolist())) == 3


def test_simulator_evaluation_metrics_and_recovery(shop):
    from recflow.policy.simulator_evaluation import ScoreSlatePolicy, recovery_steps, run_policy

    env = _env(shop, record_events=False)
    fz = env.featurizer
    pop = ScoreSlatePolicy("popularity", lambda e: fz.popularity[e.candidate_items])
    m = run_policy(env, pop, 25, cold_users=np.ones(shop[0].users, bool))
    s = m.summary()
    assert m.requests == 25 and m.impressions == 75
    assert 0 <= s["ctr"] <= 1 and s["regret"] >= -1e-9 and s["exploration_cost"] == pytest.approx(0.0)
    assert s["cold_start_ctr"] == pytest.approx(s["ctr"])  # everyone is cold here
    quality = np.r_[np.ones(100), np.full(50, 0.5), np.ones(300)]
    steps, ok, pre, low = recovery_steps(quality, 100, window=10, tolerance=0.95)
    assert ok and pre == 1.0 and low == pytest.approx(0.5)
    assert steps == 60  # the first window fully past the dip ends 60 requests after the drift
    steps, ok, _, _ = recovery_steps(np.r_[np.ones(100), np.full(200, 0.5)], 100, window=10)
    assert not ok and steps == 200
