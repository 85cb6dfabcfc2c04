"""Train the per-arm bandit policy on logged feedback and export it with TF-Agents' PolicySaver.

Output directory::

    out_dir/policy/                 the SavedModel (PolicySaver: ``action`` signature, train step, variables)
    out_dir/item_embeddings.npy     the candidate catalog's embeddings, rows in ``policy_meta.json:item_ids`` order
    out_dir/policy_meta.json        agent, feature layout, arms, item ids, config, loss curve, metrics

Training is off-policy reward regression on the logged (context, shown item, reward) decisions; see
docs/policy.md for why that is unbiased for the chosen arms and when inverse-propensity weights help.
"""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory
from tf_agents.utils import common

from recflow import bundle_layout
from recflow.io import atomic_path
from recflow.policy import agents
from recflow.policy.candidate_networks import save_policy, write_policy_meta
from recflow.policy.config import PolicyConfig
from recflow.policy.logged_data import BanditData, load_bandit_data, read_embeddings
from recflow.policy.scorer import PolicyScorer, load_policy

__all__ = ["PolicyResult", "train_policy", "train_agent", "load_policy", "PolicyScorer", "export_policy"]




@dataclass
class PolicyResult:
    """What :func:`train_policy` did."""

    out_dir: Path
    agent: str
    steps: int
    final_loss: float
    seconds: float
    n_decisions: int
    mean_reward: float
    propensity_source: str
    loss_curve: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Numeric metrics for run tracking."""
        return {"final_loss": self.final_loss, "steps": float(self.steps), "seconds": self.seconds,
                "n_decisions": float(self.n_decisions), "mean_reward": self.mean_reward}

    def format(self) -> str:
        lines = [f"trained {self.agent} on {self.n_decisions} logged decisions: {self.steps} steps, "
                 f"final loss {self.final_loss:.4f}, {self.seconds:.1f} s -> {self.out_dir}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _experience(agent: Any, global_feats: np.ndarray, arm_feats: np.ndarray, rewards: np.ndarray) -> Any:
    """A batch of single-step bandit trajectories ([B, 1, ...]) with the chosen arm's features in policy_info."""
    b = global_feats.shape[0]

    def timed(x: np.ndarray) -> tf.Tensor:
        return tf.constant(x[:, None])

    info_spec = agent.training_data_spec.policy_info
    info = tf.nest.map_structure(lambda s: tf.zeros([b, 1, *s.shape.as_list()], s.dtype), info_spec)
    info = info._replace(chosen_arm_features=timed(arm_feats.astype(np.float32)))
    return trajectory.Trajectory(
        step_type=tf.fill([b, 1], ts.StepType.FIRST),
        observation={"global": timed(global_feats.astype(np.float32))},
        action=tf.zeros([b, 1], tf.int32),  # unused by per-arm agents: the chosen arm's features identify it
        policy_info=info,
        next_step_type=tf.fill([b, 1], ts.StepType.LAST),
        reward=timed(rewards.astype(np.float32)),
        discount=tf.zeros([b, 1]),
    )


def training_weights(data: BanditData, config: PolicyConfig) -> np.ndarray:
    """Per-decision training weights: 1, or clipped inverse propensities normalised to mean 1."""
    if not config.importance_weighting:
        return np.ones(len(data), dtype=np.float32)
    w = np.minimum(1.0 / data.propensities, config.propensity_clip)
    return (w / w.mean()).astype(np.float32)


def train_agent(data: BanditData, config: PolicyConfig) -> tuple[Any, tf.Variable, list[float], int]:
    """Train a fresh agent on ``data``; returns ``(agent, epsilon variable, per-epoch mean losses, steps)``.

    Neural agents take ``config.epochs`` shuffled passes of Adam steps (bounded by ``max_steps``). Linear agents
    accumulate exact ridge-regression statistics, so they take exactly one pass (a second would count every
    decision twice).
    """
    tf.keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    time_step_spec, action_spec = agents.per_arm_specs(
        data.layout.global_dim, data.layout.arm_dim, config.num_arms
    )
    epsilon = tf.Variable(config.epsilon, dtype=tf.float32, trainable=False, name="epsilon")
    agent = agents.make_agent(config, time_step_spec, action_spec, epsilon=epsilon)
    agent.initialize()
    train = common.function(agent.train)
    weights = training_weights(data, config)
    chosen = data.chosen_arm_features
    neural = config.agent == "neural_epsilon_greedy"
    epochs = config.epochs if neural else 1
    curve: list[float] = []
    steps = 0
    n = len(data)
    for _ in range(epochs):
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, config.batch_size):
            if config.max_steps is not None and steps >= config.max_steps:
                break
            idx = order[start : start + config.batch_size]
            exp = _experience(agent, data.global_features[idx], chosen[idx], data.rewards[idx])
            loss = train(exp, weights=tf.constant(weights[idx]))
            steps += 1
            epsilon.assign(agents.epsilon_schedule(config, steps))
            losses.append(float(loss.loss))
        if losses:
            curve.append(float(np.mean(losses)))
    return agent, epsilon, curve, steps


def export_policy(
    agent: Any,
    out_dir: Path,
    meta: dict[str, Any],
    item_embeddings: np.ndarray,
) -> None:
    """Save the agent's policy with PolicySaver to ``out_dir/policy`` plus the catalog embeddings and the meta.

    The SavedModel is written to a temporary directory and renamed into place, so a failed export never leaves
    a half-written policy where serving would load it.
    """
    save_policy(agent.policy, agent.train_step_counter, out_dir)
    with atomic_path(out_dir / bundle_layout.POLICY_ITEM_EMBEDDINGS_FILE) as path, open(path, "wb") as fh:
        np.save(fh, item_embeddings.astype(np.float32))
    write_policy_meta(out_dir, meta)


def sampled_bandit_data(examples_dir: Path, model_dir: Path, config: PolicyConfig) -> tuple[BanditData, list[str]]:
    """The logged decisions the agent trains on and the notes saying how they were drawn: with
    ``policy.max_decisions`` the split is streamed and only the sampled decisions are built (a note says when the
    cap bound); a split out of time order is loaded whole and sampled here, as before."""
    data = load_bandit_data(Path(examples_dir) / "train.parquet", Path(model_dir), config,
                            max_decisions=config.max_decisions)
    notes = list(data.notes)
    if config.max_decisions is not None and len(data) > config.max_decisions:
        keep = np.sort(np.random.default_rng(config.seed).choice(len(data), config.max_decisions, replace=False))
        notes.append(f"trained on {config.max_decisions} of {len(data)} decisions (policy.max_decisions)")
        data = data.subset(keep)
    return data, notes


def policy_meta(config: PolicyConfig, data: BanditData, epsilon: float, item_ids: Sequence[Any] | np.ndarray,
                curve: list[float], steps: int, seconds: float, notes: list[str]) -> dict[str, Any]:
    """``policy_meta.json``'s content: what the scorer needs to rebuild the features (``feature_layout``, the
    catalog's ``item_ids``) and the run's record."""
    return {
        "format_version": 1,
        "agent": config.agent,
        "exploration": config.exploration,
        "epsilon": float(epsilon),
        "alpha": config.alpha,
        "tikhonov_weight": 1.0,  # TF-Agents' default ridge penalty of the linear agents
        "num_arms": config.num_arms,
        "slate_size": config.slate_size,
        "feature_layout": data.layout.describe(),
        "item_ids": [str(i) for i in item_ids],
        "config": config.model_dump(mode="json"),
        "loss_curve": curve,
        "metrics": {"final_loss": curve[-1] if curve else math.nan, "steps": steps, "seconds": seconds,
                    "n_decisions": len(data), "mean_reward": float(data.rewards.mean())},
        "propensity_source": data.propensity_source,
        "notes": notes,
    }


def train_policy(examples_dir: Path, model_dir: Path, out_dir: Path, config: PolicyConfig) -> PolicyResult:
    """Train the configured per-arm agent on ``examples_dir/train.parquet`` and export it to ``out_dir``.

    ``model_dir`` holds the retrieval model's ``item_embeddings.parquet`` (the candidate catalog) and
    ``user_embeddings.parquet``. Returns the training metrics; see the module docstring for the outputs.
    """
    started = time.perf_counter()
    examples_dir, model_dir, out_dir = Path(examples_dir), Path(model_dir), Path(out_dir)
    data, notes = sampled_bandit_data(examples_dir, model_dir, config)
    agent, epsilon, curve, steps = train_agent(data, config)
    item_ids, item_emb = read_embeddings(model_dir / bundle_layout.ITEM_EMBEDDINGS_FILE, "item_id")
    seconds = time.perf_counter() - started
    final_loss = curve[-1] if curve else math.nan
    meta = policy_meta(config, data, float(epsilon.numpy()), item_ids, curve, steps, seconds, notes)
    export_policy(agent, out_dir, meta, item_emb)
    return PolicyResult(
        out_dir=out_dir, agent=config.agent, steps=steps, final_loss=final_loss, seconds=seconds,
        n_decisions=len(data), mean_reward=float(data.rewards.mean()),
        propensity_source=data.propensity_source, loss_curve=curve, notes=notes,
    )
