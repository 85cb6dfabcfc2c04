"""Incremental updates of a served bandit policy from new feedback, without a full retrain.

Serving calls::

    updater = OnlineUpdater(policy_dir, user_ids=ids, user_embeddings=emb)   # once, from the pushed export
    stats = updater.update(feedback_events)      # impressions + clicks/carts/purchases since the last call
    scorer = updater.scorer()                    # a PolicyScorer on the live, updated variables
    updater.export(new_dir)                      # PolicySaver export of the updated policy (atomic)

The agent is rebuilt from the export's ``policy_meta.json`` and its variables are read from the SavedModel, so
an update continues exactly where training (or the previous update) stopped:

* ``lin_ucb`` / ``linear_thompson_sampling``: the ridge statistics ``A = sum x x^T`` and ``b = sum r x`` are
  updated exactly; with ``online.forgetting < 1`` they are first multiplied by it on every update (TF-Agents'
  ``gamma``), an exponential window that lets the policy track preference drift;
* ``neural_epsilon_greedy``: ``online.gradient_steps`` Adam steps on the new decisions.

Feedback is turned into per-slot decisions by :func:`recflow.policy.logged_data.build_bandit_data` with the
export's feature layout (unknown users get the layout's fallback embedding).
"""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
from tf_agents.utils import common

from recflow.errors import DataError
from recflow.policy import agents
from recflow.policy.config import OnlineConfig, PolicyConfig
from recflow.policy.logged_data import build_bandit_data
from recflow.policy.scorer import PolicyScorer, load_policy
from recflow.policy.trainer import _experience, export_policy


@dataclass(frozen=True)
class UpdateStats:
    """What one :meth:`OnlineUpdater.update` did."""

    decisions: int  #: per-slot decisions learned from
    mean_reward: float
    updates: int  #: updates applied since the updater was created
    total_decisions: int
    seconds: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OnlineUpdater:
    """Keeps a trained per-arm bandit policy learning from new feedback (see the module docstring)."""

    def __init__(
        self,
        policy_dir: Path,
        *,
        user_ids: np.ndarray | None = None,
        user_embeddings: np.ndarray | None = None,
        config: OnlineConfig | None = None,
        seed: int | None = None,
    ) -> None:
        self.policy_dir = Path(policy_dir)
        self._base = load_policy(self.policy_dir, seed=seed)
        meta = self._base.meta
        self.config = PolicyConfig.model_validate(meta["config"])
        self.online = config or self.config.online
        self.layout = self._base.layout
        time_step_spec, action_spec = agents.per_arm_specs(
            self.layout.global_dim, self.layout.arm_dim, self.config.num_arms
        )
        self.epsilon = tf.Variable(float(meta["epsilon"]), dtype=tf.float32, trainable=False, name="epsilon")
        self.agent = agents.make_agent(
            self.config, time_step_spec, action_spec, epsilon=self.epsilon, forgetting=self.online.forgetting
        )
        self.agent.initialize()
        self._copy_saved_variables()
        self._train = common.function(self.agent.train)
        self._action = common.function(self.agent.policy.action)
        self.item_ids = self._base.item_ids
        self.item_embeddings = self._base.item_embeddings
        if (user_ids is None) != (user_embeddings is None):
            raise DataError("OnlineUpdater: give both user_ids and user_embeddings, or neither")
        if user_ids is None or len(user_ids) == 0:
            # No known users: every decision uses the layout's fallback embedding (a placeholder row that no
            # real user id matches keeps the lookup's array non-empty).
            user_ids = np.array(["\x00no-user"], dtype=object)
            user_embeddings = np.asarray(self.layout.unknown_user_embedding, np.float32)[None, :]
        self.user_ids = np.asarray(user_ids, dtype=object).astype(str)
        self.user_embeddings = np.asarray(user_embeddings, np.float32)
        self.updates = 0
        self.total_decisions = 0

    def _copy_saved_variables(self) -> None:
        """Assign the export's variables to the fresh agent: by name, else (Keras layer names carry process-wide
        counters) in order, with matching shapes."""
        saved = list(self._base.policy.model_variables)
        live = list(self.agent.policy.variables())
        by_name = {v.name: v for v in saved}
        if all(v.name in by_name for v in live):
            pairs = [(v, by_name[v.name]) for v in live]
        elif len(saved) == len(live) and all(a.shape == b.shape for a, b in zip(live, saved, strict=True)):
            pairs = list(zip(live, saved, strict=True))
        else:
            raise DataError(f"{self.policy_dir}: the export's variables do not fit a {self.config.agent} policy "
                            "built from its own policy_meta.json")
        for var, value in pairs:
            var.assign(value)

    def update(self, feedback_events: pd.DataFrame) -> UpdateStats:
        """Learn from new impressions and their feedback (recflow events schema); returns what was learned."""
        started = time.perf_counter()
        if feedback_events is None or feedback_events.empty:
            return UpdateStats(0, 0.0, self.updates, self.total_decisions, 0.0, ("no feedback events",))
        data = build_bandit_data(
            feedback_events, self.item_ids, self.item_embeddings, self.user_ids, self.user_embeddings,
            self.config.model_copy(update={"seed": self.config.seed + self.updates + 1}),
            source="feedback", layout=self.layout,
        )
        if len(data) == 0:
            return UpdateStats(0, 0.0, self.updates, self.total_decisions, 0.0, tuple(data.notes))
        exp = _experience(self.agent, data.global_features, data.chosen_arm_features, data.rewards)
        steps = self.online.gradient_steps if self.config.agent == "neural_epsilon_greedy" else 1
        for _ in range(steps):
            self._train(exp)
        self.updates += 1
        self.total_decisions += len(data)
        return UpdateStats(len(data), float(data.rewards.mean()), self.updates, self.total_decisions,
                           time.perf_counter() - started, tuple(data.notes))

    def scorer(self) -> PolicyScorer:
        """A :class:`PolicyScorer` that scores with the live (updated) variables; call again after updates for
        Thompson sampling (its posterior covariance is copied when the scorer is made)."""
        scorer = _live_scorer(self._base)
        scorer.policy = _LivePolicy(self._action)
        if scorer.exploration == "thompson":
            cov = {v.name.split(":")[0]: v for v in self.agent.policy.variables()}["a_0"].numpy()
            reg = float(scorer.meta["tikhonov_weight"]) * np.eye(cov.shape[0])
            scorer._posterior_inv = np.linalg.inv(cov.astype(np.float64) + reg)
        return scorer

    def export(self, out_dir: Path | None = None) -> Path:
        """Write the updated policy with PolicySaver (to ``out_dir``, default: the policy dir itself)."""
        out_dir = Path(out_dir) if out_dir is not None else self.policy_dir
        meta = dict(self._base.meta)
        meta["online_updates"] = int(meta.get("online_updates", 0)) + self.updates
        meta["online_decisions"] = int(meta.get("online_decisions", 0)) + self.total_decisions
        meta["epsilon"] = float(self.epsilon.numpy())
        export_policy(self.agent, out_dir, meta, self.item_embeddings)
        return out_dir


class _LivePolicy:
    """Adapter so a PolicyScorer can call the in-memory TF-Agents policy like the SavedModel's ``action``."""

    def __init__(self, action: Any) -> None:
        self._action = action

    def action(self, time_step: Any) -> Any:
        return self._action(time_step)


def _live_scorer(base: PolicyScorer) -> PolicyScorer:
    """A shallow copy of the reloaded scorer (meta, layout, catalog) with its own exploration RNG."""
    scorer = object.__new__(PolicyScorer)
    scorer.__dict__.update(base.__dict__)
    scorer._rng = np.random.default_rng(base.seed)
    return scorer
