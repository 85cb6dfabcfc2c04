"""Actor-critic over candidate slates trained with PPO (TF-Agents ``PPOClipAgent``).

The actor scores every candidate row with a shared MLP (logits of a categorical over the candidates); the critic
pools the candidate rows into a state value. A slate is a Plackett-Luce sample of ``slate_size`` distinct
candidates from the actor's softmax (Gumbel top-k), so exploration comes from the policy's own randomness
(with an entropy bonus).

Experience: ``ppo_requests_per_iteration`` consecutive requests are collected; slot ``k`` of every slate forms
one stream (batch row ``k``, time = requests, sessions back to back with discount 0 at a session's end), so
each stream's return is the reward its slot earns over the rest of the session. The ratio PPO clips is that of
the chosen candidate under the unconditional categorical -- an approximation for slots > 0, whose true
Plackett-Luce probability is conditioned on the slots above (documented in docs/mdp.md).
"""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tf_agents.agents.ppo import ppo_clip_agent
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory
from tf_agents.utils import common

from recflow.policy.candidate_networks import (
    CandidateActorNetwork,
    CandidateValueNetwork,
    export_candidate_policy,
    plackett_luce_slate,
    session_policy_meta,
)
from recflow.policy.config import DeepRLConfig
from recflow.policy.dqn import SessionTrainResult, candidate_specs
from recflow.policy.environment import ShopPyEnvironment


def make_ppo_agent(env: ShopPyEnvironment, config: DeepRLConfig, seed: int = 0) -> ppo_clip_agent.PPOClipAgent:
    """A ``PPOClipAgent`` with a per-candidate actor and a pooled critic."""
    tf.keras.utils.set_random_seed(seed)
    time_step_spec, action_spec = candidate_specs(env)
    actor = CandidateActorNetwork(time_step_spec.observation, action_spec, config.hidden_units, name="ActorNetwork")
    value = CandidateValueNetwork(time_step_spec.observation, config.hidden_units, name="ValueNetwork")
    agent = ppo_clip_agent.PPOClipAgent(
        time_step_spec,
        action_spec,
        optimizer=tf.keras.optimizers.Adam(learning_rate=config.learning_rate),
        actor_net=actor,
        value_net=value,
        importance_ratio_clipping=config.ppo_clip,
        discount_factor=config.discount,
        entropy_regularization=config.entropy_regularization,
        num_epochs=config.ppo_epochs,
        use_gae=True,
        lambda_value=0.95,
        normalize_observations=False,
        normalize_rewards=True,
        greedy_eval=True,
        train_step_counter=tf.Variable(0, dtype=tf.int64, name="train_step"),
    )
    agent.initialize()
    return agent


def actor_logits(agent: ppo_clip_agent.PPOClipAgent, features: np.ndarray) -> np.ndarray:
    """``[M]`` actor logits of one request's candidate rows."""
    fn = getattr(agent, "_recflow_logits_fn", None)
    if fn is None:
        m, f = features.shape
        fn = tf.function(lambda x: agent.actor_net(x)[0].logits, input_signature=[tf.TensorSpec([None, m, f],
                                                                                                tf.float32)])
        agent._recflow_logits_fn = fn
    return fn(tf.constant(features[None], tf.float32))[0].numpy()


def streams_trajectory(obs: np.ndarray, logits: np.ndarray, slates: np.ndarray, rewards: np.ndarray,
                       first: np.ndarray, done: np.ndarray) -> trajectory.Trajectory:
    """``T`` requests -> a ``[slate_size, T]`` trajectory, one row per slot stream (see the module docstring)."""
    k = slates.shape[1]

    def rows(x: np.ndarray) -> np.ndarray:  # [T, ...] -> [K, T, ...]
        return np.broadcast_to(x[None], (k, *x.shape)).copy()

    step_type = np.where(first, ts.StepType.FIRST, ts.StepType.MID).astype(np.int32)
    next_type = np.where(done, ts.StepType.LAST, ts.StepType.MID).astype(np.int32)
    return trajectory.Trajectory(
        step_type=tf.constant(rows(step_type)),
        observation=tf.constant(rows(obs)),
        action=tf.constant(slates.T.astype(np.int32)),
        policy_info={"dist_params": {"logits": tf.constant(rows(logits))}},
        next_step_type=tf.constant(rows(next_type)),
        reward=tf.constant(rewards.T.astype(np.float32)),
        discount=tf.constant(rows(np.where(done, 0.0, 1.0).astype(np.float32))),
    )


def train_ppo(
    env: ShopPyEnvironment,
    config: DeepRLConfig,
    *,
    seed: int = 0,
    requests: int | None = None,
    curve_every: int = 100,
) -> SessionTrainResult:
    """Train PPO online against ``env``: collect a batch of requests with the current actor, then train."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    agent = make_ppo_agent(env, config, seed)
    train = common.function(agent.train)
    total = config.train_requests if requests is None else requests
    per_iter = config.ppo_requests_per_iteration
    k = env.slate_size
    step = env.reset()
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    losses: list[float] = []
    n_steps = 0
    seen = 0
    while seen < total:
        n = min(per_iter, total - seen)
        buf: dict[str, list[Any]] = {"obs": [], "logits": [], "slates": [], "rewards": [], "first": [], "done": []}
        for _ in range(n):
            obs = env.features
            logits = actor_logits(agent, obs)
            slate = plackett_luce_slate(logits, k, rng)
            buf["first"].append(bool(step.is_first()))
            step = env.step(slate)
            done = bool(step.is_last())
            buf["obs"].append(obs)
            buf["logits"].append(logits)
            buf["slates"].append(env.last_slate)
            buf["rewards"].append(env.last_slot_rewards)
            buf["done"].append(done)
            window.append(float(step.reward))
            seen += 1
            if len(window) == curve_every:
                curve.append((seen, float(np.mean(window))))
                window = []
            if done:
                step = env.reset()
        if n < 2:
            break
        exp = streams_trajectory(*(np.asarray(buf[key]) for key in ("obs", "logits", "slates", "rewards",
                                                                     "first", "done")))
        loss = train(exp)
        losses.append(float(loss.loss))
        n_steps += 1
    return SessionTrainResult(agent, n_steps, seen, time.perf_counter() - started, curve, losses)


def export_ppo(agent: ppo_clip_agent.PPOClipAgent, out_dir: Path, config: DeepRLConfig, env: ShopPyEnvironment,
               extra: dict[str, Any] | None = None) -> None:
    """PolicySaver export of the PPO collect policy (stochastic actor) plus the meta for slate building."""
    meta = session_policy_meta("ppo", env, config, "ActorNetwork/", extra)
    export_candidate_policy(agent.collect_policy, agent.train_step_counter, out_dir, meta)
