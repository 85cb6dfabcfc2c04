"""The TF-Agents per-arm bandit agents recflow can train, behind one factory."""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

import tensorflow as tf
from tf_agents.agents import tf_agent
from tf_agents.bandits.agents import (
    lin_ucb_agent,
    linear_thompson_sampling_agent,
    neural_epsilon_greedy_agent,
)
from tf_agents.bandits.networks import global_and_arm_feature_network
from tf_agents.bandits.policies import policy_utilities
from tf_agents.bandits.specs import utils as bandit_spec_utils
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.typing import types

from recflow.errors import ConfigError
from recflow.policy.config import PolicyConfig

#: Policy-info fields every exported policy emits, so serving and OPE can read the per-arm scores.
MEAN_SCORES = policy_utilities.InfoFields.PREDICTED_REWARDS_MEAN
OPTIMISTIC_SCORES = policy_utilities.InfoFields.PREDICTED_REWARDS_OPTIMISTIC
SAMPLED_SCORES = policy_utilities.InfoFields.PREDICTED_REWARDS_SAMPLED


def per_arm_specs(global_dim: int, arm_dim: int, num_arms: int) -> tuple[types.TimeStep, types.BoundedTensorSpec]:
    """``(time_step_spec, action_spec)`` of a per-arm bandit with ``num_arms`` arms per decision."""
    observation_spec = bandit_spec_utils.create_per_arm_observation_spec(global_dim, arm_dim, num_arms)
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int32, minimum=0, maximum=num_arms - 1, name="action")
    return ts.time_step_spec(observation_spec), action_spec


def epsilon_schedule(config: PolicyConfig, step: int) -> float:
    """Exploration probability after ``step`` training steps: ``max(min_epsilon, epsilon * decay**step)``."""
    return max(config.min_epsilon, config.epsilon * config.epsilon_decay**step)


def make_agent(
    config: PolicyConfig,
    time_step_spec: types.TimeStep,
    action_spec: types.BoundedTensorSpec,
    epsilon: tf.Variable | None = None,
    forgetting: float = 1.0,
) -> tf_agent.TFAgent:
    """Build the per-arm TF-Agents agent named by ``config.agent``.

    * ``neural_epsilon_greedy``: a common-tower global/arm network regresses the reward; acts greedily with
      probability ``1 - epsilon``. ``epsilon`` may be a ``tf.Variable`` the trainer decays; it is exported with
      the policy.
    * ``lin_ucb``: ridge regression on ``[global, arm]`` features, acting on the upper confidence bound.
    * ``linear_thompson_sampling``: the same ridge posterior, acting on a posterior sample.

    ``forgetting`` (the linear agents' ``gamma``) decays their statistics once per training call; 1 keeps all
    data (offline training), < 1 lets an online learner track drift (:mod:`recflow.policy.online`).

    Every policy emits the per-arm mean reward predictions in its info (plus the upper confidence bound for
    lin_ucb and the posterior sample for Thompson sampling).
    """
    tf.random.set_seed(config.seed)
    if config.agent == "neural_epsilon_greedy":
        network = global_and_arm_feature_network.create_feed_forward_common_tower_network(
            time_step_spec.observation,
            global_layers=config.hidden_units,
            arm_layers=config.hidden_units,
            common_layers=config.hidden_units[-1:],
        )
        return neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent(
            time_step_spec,
            action_spec,
            reward_network=network,
            optimizer=tf.compat.v1.train.AdamOptimizer(learning_rate=config.learning_rate),
            epsilon=epsilon if epsilon is not None else config.epsilon,
            accepts_per_arm_features=True,
            emit_policy_info=(MEAN_SCORES,),
            # The scores of the greedy policy are reported even when the action was the random one.
            info_fields_to_inherit_from_greedy=[MEAN_SCORES],
            enable_summaries=False,
        )
    # The two linear agents: the same ridge statistics, each with the scores it acts on in its info.
    linear = {
        "lin_ucb": (lin_ucb_agent.LinearUCBAgent, OPTIMISTIC_SCORES),
        "linear_thompson_sampling": (linear_thompson_sampling_agent.LinearThompsonSamplingAgent, SAMPLED_SCORES),
    }
    if config.agent in linear:
        agent_class, acted_on = linear[config.agent]
        return agent_class(
            time_step_spec,
            action_spec,
            alpha=config.alpha,
            gamma=forgetting,
            accepts_per_arm_features=True,
            emit_policy_info=(MEAN_SCORES, acted_on),
            enable_summaries=False,
        )
    raise ConfigError(f"policy.agent: unknown agent {config.agent!r}")
