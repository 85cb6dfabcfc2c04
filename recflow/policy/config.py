"""Configuration of the TF-Agents recommendation policy (the ``policy`` section of the config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AgentName = Literal["neural_epsilon_greedy", "lin_ucb", "linear_thompson_sampling"]
ExplorationName = Literal["epsilon_greedy", "thompson"]


class RewardWeights(BaseModel):
    """How much each kind of feedback on a shown item is worth; a slot's reward is the sum over the kinds seen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    click: float = Field(1.0, ge=0.0, description="Reward for a click on the shown item.")
    add_to_cart: float = Field(2.0, ge=0.0, description="Reward for adding the shown item to the cart.")
    purchase: float = Field(5.0, ge=0.0, description="Reward for buying the shown item.")


class DeepRLConfig(BaseModel):
    """The session-level agents (DQN, PPO) trained against the simulator; see docs/mdp.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_candidates: int = Field(
        40, ge=2, description="Candidates per request the agents choose a slate from (retrieved + explored)."
    )
    retrieved_share: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of the candidates taken from the collaborative-filtering retrieval; the rest are "
        "available items drawn uniformly (so new items can be discovered).",
    )
    hidden_units: tuple[int, ...] = Field((32, 16), description="Per-candidate tower of the Q, actor and value nets.")
    learning_rate: float = Field(0.003, gt=0.0, description="Adam learning rate of DQN and PPO.")
    discount: float = Field(
        0.5, ge=0.0, le=1.0, description="Discount of the next request's value within a session (0: myopic)."
    )
    epsilon_start: float = Field(0.3, ge=0.0, le=1.0, description="DQN collect epsilon at the first step.")
    epsilon_end: float = Field(0.05, ge=0.0, le=1.0, description="DQN collect epsilon after the decay.")
    epsilon_decay_steps: int = Field(
        1500, ge=1, description="Environment requests over which epsilon decays linearly to epsilon_end."
    )
    replay_capacity: int = Field(20000, ge=1, description="Per-item transitions the DQN replay buffer holds.")
    batch_size: int = Field(128, ge=1, description="Transitions per DQN gradient step.")
    target_update_period: int = Field(50, ge=1, description="DQN gradient steps between target-network syncs.")
    train_every: int = Field(2, ge=1, description="Environment requests between DQN gradient steps.")
    warmup_requests: int = Field(
        300, ge=0,
        description="Requests served by the shop's logging policy before learning (off-policy warm start).",
    )
    train_requests: int = Field(2000, ge=1, description="Environment requests of online training (DQN and PPO).")
    ppo_requests_per_iteration: int = Field(
        200, ge=2, description="Requests collected per PPO iteration (one trajectory batch of slot streams)."
    )
    ppo_epochs: int = Field(3, ge=1, description="PPO epochs per iteration.")
    ppo_clip: float = Field(0.2, gt=0.0, description="PPO importance-ratio clipping.")
    entropy_regularization: float = Field(0.01, ge=0.0, description="PPO entropy bonus (exploration).")


class PolicyConfig(BaseModel):
    """Which per-arm bandit agent learns the policy, how it explores, and how it is trained on logged feedback.

    See docs/policy.md for the bandit formulation (one decision per shown slot) and the training objective.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentName = Field(
        "neural_epsilon_greedy",
        description="TF-Agents per-arm agent: neural_epsilon_greedy, lin_ucb or linear_thompson_sampling.",
    )
    exploration: ExplorationName = Field(
        "epsilon_greedy",
        description="How served slates explore: epsilon_greedy (uniform random pick with probability epsilon; "
        "also used on top of lin_ucb's optimistic scores) or thompson (posterior sampling; "
        "linear_thompson_sampling only).",
    )
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="Initial exploration probability (epsilon_greedy).")
    epsilon_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="Epsilon is multiplied by this factor per training step (1 = no decay)."
    )
    min_epsilon: float = Field(0.0, ge=0.0, le=1.0, description="Epsilon never decays below this value.")
    alpha: float = Field(
        1.0, ge=0.0, description="Width of the confidence bound (lin_ucb) or posterior scale (Thompson sampling)."
    )
    num_arms: int = Field(
        10, ge=2, description="Arms per decision: the shown item plus num_arms - 1 sampled catalog items."
    )
    slate_size: int = Field(10, ge=1, description="Items a served slate holds.")
    reward_weights: RewardWeights = Field(RewardWeights(), description="Reward of each feedback kind.")
    attribution_window_s: float = Field(
        3600.0,
        gt=0.0,
        description="Feedback without a request_id is credited to the latest impression of the same user and "
        "item at most this many seconds earlier.",
    )
    unknown_user: Literal["mean", "zero"] = Field(
        "mean", description="Embedding used for users the retrieval model does not know: the mean user or zeros."
    )
    importance_weighting: bool = Field(
        False,
        description="Weight each logged decision by its clipped inverse propensity while training (reward "
        "regression is unbiased without it; see docs/policy.md).",
    )
    propensity_clip: float = Field(
        100.0, gt=1.0, description="Upper bound on inverse-propensity weights (training and off-policy estimates)."
    )
    epochs: int = Field(5, ge=1, description="Passes over the logged decisions.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many gradient steps (None: no limit).")
    batch_size: int = Field(256, ge=1, description="Decisions per training step.")
    learning_rate: float = Field(0.005, gt=0.0, description="Adam learning rate (neural agents).")
    hidden_units: tuple[int, ...] = Field(
        (64, 32), description="Layer sizes of the global, arm and common towers (neural agents)."
    )
    max_decisions: int | None = Field(
        None, ge=1, description="Train on at most this many logged decisions, sampled with the seed (None: all); "
        "the train split is then read in chunks and only the sampled decisions are built (docs/policy.md)."
    )
    seed: int = Field(42, ge=0, description="Seed for candidate sampling, shuffling, initialisation, exploration.")
    rl: DeepRLConfig = Field(DeepRLConfig(), description="Session-level agents (DQN, PPO) over the simulator.")

    @model_validator(mode="after")
    def _exploration_matches_agent(self) -> PolicyConfig:
        if (self.agent == "linear_thompson_sampling") != (self.exploration == "thompson"):
            raise ValueError(
                f"exploration {self.exploration!r} does not fit agent {self.agent!r}: thompson goes with "
                "linear_thompson_sampling, epsilon_greedy with the other agents"
            )
        if self.min_epsilon > self.epsilon:
            raise ValueError(f"min_epsilon {self.min_epsilon} exceeds epsilon {self.epsilon}")
        return self
