"""Deep Q-learning over candidate slates (TF-Agents ``DqnAgent`` + a uniform replay buffer).

The slate value is decomposed per item, as in SlateQ (Ie et al., 2019), simplified: ``Q(s, i)`` is the reward
item ``i`` earns in the slot it was shown plus the discounted value of the session's next request,
``r_i + discount * max_j Q_target(s', j)`` (0 after the session's last request). A slate is the top
``slate_size`` candidates by ``Q`` with epsilon-greedy exploration per slot (epsilon decays linearly). Every
shown slot is one transition in the replay buffer, so one request adds ``slate_size`` transitions.

Training is off-policy by construction: the buffer is first filled by the shop's logging policy
(``warmup_requests``, the logged feedback), then by the agent's own epsilon-greedy slates online.
"""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tf_agents.agents.dqn import dqn_agent
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory
from tf_agents.utils import common

from recflow.policy.candidate_networks import (
    CandidateScoreNetwork,
    epsilon_greedy_slate,
    export_candidate_policy,
    plackett_luce_slate,
    session_policy_meta,
)
from recflow.policy.config import DeepRLConfig
from recflow.policy.environment import ShopPyEnvironment

#: A behaviour policy for the warm start: (environment) -> slate of candidate indices.
Behaviour = Callable[[ShopPyEnvironment, np.random.Generator], np.ndarray]


@dataclass
class SessionTrainResult:
    """What a session agent's training did (also the learning curve for the benchmark plot)."""

    agent: Any
    steps: int
    requests: int
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)  #: (requests seen, mean reward per request)
    losses: list[float] = field(default_factory=list)


def epsilon_at(config: DeepRLConfig, request: int) -> float:
    """Linear decay from ``epsilon_start`` to ``epsilon_end`` over ``epsilon_decay_steps`` requests."""
    frac = min(1.0, request / config.epsilon_decay_steps)
    return config.epsilon_start + frac * (config.epsilon_end - config.epsilon_start)


def candidate_specs(env: ShopPyEnvironment) -> tuple[ts.TimeStep, tensor_spec.BoundedTensorSpec]:
    """Per-item agent specs: observation ``[M, F]``, action = one candidate index."""
    obs_spec = tensor_spec.from_spec(env.observation_spec())
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int32, 0, env.num_candidates - 1, name="candidate")
    return ts.time_step_spec(obs_spec), action_spec


def make_dqn_agent(env: ShopPyEnvironment, config: DeepRLConfig, seed: int = 0) -> dqn_agent.DqnAgent:
    """A ``DqnAgent`` whose Q-network scores every candidate row with one shared MLP."""
    tf.keras.utils.set_random_seed(seed)
    time_step_spec, action_spec = candidate_specs(env)
    q_net = CandidateScoreNetwork(time_step_spec.observation, config.hidden_units, name="QNetwork")
    agent = dqn_agent.DqnAgent(
        time_step_spec,
        action_spec,
        q_network=q_net,
        optimizer=tf.keras.optimizers.Adam(learning_rate=config.learning_rate),
        epsilon_greedy=config.epsilon_end,
        target_update_period=config.target_update_period,
        td_errors_loss_fn=common.element_wise_huber_loss,
        gamma=config.discount,
        train_step_counter=tf.Variable(0, dtype=tf.int64, name="train_step"),
    )
    agent.initialize()
    return agent


def logging_behaviour(logging_policy: Any) -> Behaviour:
    """The simulator's logging policy as a behaviour over the current candidates (Plackett-Luce slate)."""

    def choose(env: ShopPyEnvironment, rng: np.random.Generator) -> np.ndarray:
        obs = env.observation
        assert obs is not None
        probs = logging_policy.probabilities(np.array([obs.user_idx]), env.candidate_items)[0]
        return plackett_luce_slate(np.log(probs), env.slate_size, rng)

    return choose


def _transition_spec(env: ShopPyEnvironment) -> dict[str, tf.TensorSpec]:
    obs = tensor_spec.from_spec(env.observation_spec())
    return {
        "observation": obs,
        "next_observation": obs,
        "action": tf.TensorSpec((), tf.int32),
        "reward": tf.TensorSpec((), tf.float32),
        "discount": tf.TensorSpec((), tf.float32),
    }


def transitions_to_trajectory(batch: dict[str, tf.Tensor]) -> trajectory.Trajectory:
    """Per-item transitions ``[B]`` -> the two-step ``[B, 2]`` trajectory DqnAgent trains on."""
    b = tf.shape(batch["reward"])[0]
    mid = tf.fill([b, 2], ts.StepType.MID)
    return trajectory.Trajectory(
        step_type=mid,
        observation=tf.stack([batch["observation"], batch["next_observation"]], axis=1),
        action=tf.stack([batch["action"], batch["action"]], axis=1),
        policy_info=(),
        next_step_type=mid,
        reward=tf.stack([batch["reward"], tf.zeros_like(batch["reward"])], axis=1),
        discount=tf.stack([batch["discount"], tf.ones_like(batch["discount"])], axis=1),
    )


def q_values(agent: dqn_agent.DqnAgent, features: np.ndarray) -> np.ndarray:
    """``[M]`` Q-values of one request's candidate rows."""
    fn = getattr(agent, "_recflow_q_fn", None)
    if fn is None:
        m, f = features.shape
        fn = tf.function(lambda x: agent._q_network(x)[0], input_signature=[tf.TensorSpec([None, m, f], tf.float32)])
        agent._recflow_q_fn = fn
    return fn(tf.constant(features[None], tf.float32))[0].numpy()


def train_dqn(
    env: ShopPyEnvironment,
    config: DeepRLConfig,
    *,
    behaviour: Behaviour | None = None,
    seed: int = 0,
    requests: int | None = None,
    curve_every: int = 100,
) -> SessionTrainResult:
    """Train a DQN agent online against ``env`` after a warm start on ``behaviour``'s slates (if given).

    Every request adds ``slate_size`` transitions; a gradient step runs every ``train_every`` requests once the
    buffer holds a batch. Returns the agent and the learning curve (mean reward per request over windows of
    ``curve_every`` requests of the agent's own slates).
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    agent = make_dqn_agent(env, config, seed)
    k = env.slate_size
    buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        _transition_spec(env), batch_size=k, max_length=max(1, config.replay_capacity // k)
    )
    train = common.function(agent.train)
    total = config.train_requests if requests is None else requests
    warmup = config.warmup_requests if behaviour is not None else 0
    step = env.reset()
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    n_steps = 0
    for request in range(warmup + total):
        obs = env.features
        if request < warmup:
            assert behaviour is not None
            slate = behaviour(env, rng)
        else:
            eps = epsilon_at(config, request - warmup)
            slate = epsilon_greedy_slate(q_values(agent, obs), k, eps, rng)[0]
        step = env.step(slate)
        done = bool(step.is_last())
        slate = env.last_slate
        buffer.add_batch({
            "observation": tf.constant(np.broadcast_to(obs, (k, *obs.shape))),
            "next_observation": tf.constant(np.broadcast_to(step.observation, (k, *obs.shape))),
            "action": tf.constant(slate.astype(np.int32)),
            "reward": tf.constant(env.last_slot_rewards.astype(np.float32)),
            "discount": tf.fill([k], 0.0 if done else 1.0),
        })
        if request >= warmup:
            window.append(float(step.reward))
            if len(window) == curve_every:
                curve.append((request - warmup + 1, float(np.mean(window))))
                window = []
        if done:
            step = env.reset()
        if (request + 1) % config.train_every == 0 and int(buffer.num_frames()) >= config.batch_size:
            batch, _ = buffer.get_next(sample_batch_size=config.batch_size)
            loss = train(transitions_to_trajectory(batch))
            losses.append(float(loss.loss))
            n_steps += 1
    return SessionTrainResult(agent, n_steps, warmup + total, time.perf_counter() - started, curve, losses)


def export_dqn(agent: dqn_agent.DqnAgent, out_dir: Path, config: DeepRLConfig, env: ShopPyEnvironment,
               extra: dict[str, Any] | None = None) -> None:
    """PolicySaver export of the greedy Q policy plus the meta :class:`CandidatePolicy` needs to rebuild slates."""
    meta = session_policy_meta("dqn", env, config, "QNetwork/", extra, epsilon=config.epsilon_end)
    export_candidate_policy(agent.policy, agent.train_step_counter, out_dir, meta)
