"""Networks over a variable set of candidate rows, slate building from their scores, and export/reload.

The session agents (:mod:`recflow.policy.dqn`, :mod:`recflow.policy.ppo`) score ``[batch, candidates,
features]`` observations with one shared per-candidate tower, so the action space ("which candidate") needs no
fixed item vocabulary: new items are scored from their features like any other.
"""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.networks import network
from tf_agents.policies import policy_saver
from tf_agents.specs import distribution_spec, tensor_spec

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.io import atomic_path


def _tower(hidden_units: Sequence[int], name: str) -> list[tf.keras.layers.Layer]:
    return [tf.keras.layers.Dense(u, activation="relu", name=f"{name}_{i}") for i, u in enumerate(hidden_units)]


class CandidateScoreNetwork(network.Network):
    """``[B, M, F] -> [B, M]``: the same MLP applied to every candidate row (Q-values or logits)."""

    def __init__(self, observation_spec: Any, hidden_units: Sequence[int], name: str = "CandidateScoreNetwork"):
        super().__init__(input_tensor_spec=observation_spec, state_spec=(), name=name)
        self._layers_ = _tower(hidden_units, "score")
        self._out = tf.keras.layers.Dense(1, name="score_out")

    def call(self, observation: tf.Tensor, step_type: Any = None, network_state: Any = (), training: bool = False):
        x = tf.cast(observation, tf.float32)
        for layer in self._layers_:
            x = layer(x)
        return tf.squeeze(self._out(x), -1), network_state


class CandidateActorNetwork(network.DistributionNetwork):
    """``[B, M, F] ->`` a categorical distribution over the ``M`` candidates (logits from a per-candidate MLP)."""

    def __init__(self, observation_spec: Any, action_spec: Any, hidden_units: Sequence[int],
                 name: str = "CandidateActorNetwork"):
        m = observation_spec.shape[0]
        output_spec = distribution_spec.DistributionSpec(
            tfp.distributions.Categorical,
            {"logits": tensor_spec.TensorSpec([m], tf.float32)},
            sample_spec=action_spec,
            dtype=action_spec.dtype,
        )
        super().__init__(input_tensor_spec=observation_spec, state_spec=(), output_spec=output_spec, name=name)
        self._action_dtype = action_spec.dtype
        self._scores = CandidateScoreNetwork(observation_spec, hidden_units, name=f"{name}_scores")

    def call(self, observation: tf.Tensor, step_type: Any = None, network_state: Any = (), training: bool = False):
        logits, _ = self._scores(observation, step_type=step_type, training=training)
        return tfp.distributions.Categorical(logits=logits, dtype=self._action_dtype), network_state


class CandidateValueNetwork(network.Network):
    """``[B, M, F] -> [B]``: per-candidate tower, mean and max pooled over candidates, then a linear value head."""

    def __init__(self, observation_spec: Any, hidden_units: Sequence[int], name: str = "CandidateValueNetwork"):
        super().__init__(input_tensor_spec=observation_spec, state_spec=(), name=name)
        self._layers_ = _tower(hidden_units, "value")
        self._out = tf.keras.layers.Dense(1, name="value_out")

    def call(self, observation: tf.Tensor, step_type: Any = None, network_state: Any = (), training: bool = False):
        x = tf.cast(observation, tf.float32)
        for layer in self._layers_:
            x = layer(x)
        pooled = tf.concat([tf.reduce_mean(x, axis=-2), tf.reduce_max(x, axis=-2)], axis=-1)
        return tf.squeeze(self._out(pooled), -1), network_state


def epsilon_greedy_slate(scores: np.ndarray, k: int, epsilon: float, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``k`` slots in order: the best remaining candidate with probability ``1 - epsilon``, else a uniform
    remaining one. Returns the slate and each slot's conditional propensity ``(1-eps)[best] + eps/m``."""
    remaining = np.ones(scores.size, dtype=bool)
    slate, props = [], []
    for _ in range(min(k, scores.size)):
        idx = np.flatnonzero(remaining)
        best = int(idx[np.argmax(scores[idx])])
        pick = int(rng.choice(idx)) if rng.random() < epsilon else best
        props.append((1.0 - epsilon) * (pick == best) + epsilon / idx.size)
        slate.append(pick)
        remaining[pick] = False
    return np.asarray(slate, dtype=np.int32), np.asarray(props)


def plackett_luce_slate(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sample ``k`` distinct candidates from ``softmax(logits)`` without replacement (Gumbel top-k)."""
    g = logits - np.log(-np.log(rng.uniform(1e-12, 1.0, size=logits.shape)))
    return np.argsort(-g, kind="stable")[:k].astype(np.int32)


def save_policy(policy: Any, train_step: tf.Variable, out_dir: Path) -> None:
    """PolicySaver export of ``policy`` to ``out_dir/policy``: written to a temporary directory and renamed into
    place, so a failed export never leaves a half-written policy where serving would load it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saver = policy_saver.PolicySaver(policy, batch_size=None, train_step=train_step)
    name = bundle_layout.POLICY_SAVED_MODEL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".policy.", dir=out_dir))
    try:
        saver.save(str(tmp / name))
        target, old = out_dir / name, out_dir / ".policy.old"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        (tmp / name).rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_policy_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """``policy_meta.json`` in ``out_dir``, atomically."""
    with atomic_path(Path(out_dir) / bundle_layout.POLICY_META_FILE) as path:
        path.write_text(json.dumps(meta, indent=2), encoding="utf-8")


def session_policy_meta(agent: str, env: Any, config: Any, score_variable_prefix: str,
                        extra: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The meta :class:`CandidatePolicy` needs to rebuild slates from a session agent's export."""
    return {
        "format_version": 1,
        "agent": agent,
        "num_candidates": env.num_candidates,
        "num_features": int(env.observation_spec().shape[1]),
        "hidden_units": list(config.hidden_units),
        "score_variable_prefix": score_variable_prefix,
        **fields,
        "config": config.model_dump(mode="json"),
        **(extra or {}),
    }


def export_candidate_policy(policy: Any, train_step: tf.Variable, out_dir: Path, meta: dict[str, Any]) -> None:
    """PolicySaver export of ``policy`` to ``out_dir/policy`` (:func:`save_policy`) and ``policy_meta.json``."""
    save_policy(policy, train_step, out_dir)
    write_policy_meta(out_dir, meta)


class CandidatePolicy:
    """A session agent's policy reloaded from its PolicySaver export: candidate scores and slates for serving.

    The SavedModel's ``action`` signature gives the agent's own choice (one candidate); slates need every
    candidate's score, so the score tower is rebuilt from the meta and its weights are read from the SavedModel's
    ``model_variables`` (the same tensors the ``action`` signature uses).
    """

    def __init__(self, out_dir: Path, seed: int = 0) -> None:
        out_dir = Path(out_dir)
        meta_path = out_dir / bundle_layout.POLICY_META_FILE
        if not meta_path.is_file() or not (out_dir / bundle_layout.POLICY_SAVED_MODEL_DIR).is_dir():
            raise DataError(f"{out_dir}: no exported session policy here (expected {bundle_layout.POLICY_META_FILE} "
                            f"and {bundle_layout.POLICY_SAVED_MODEL_DIR}/)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        self.saved = tf.saved_model.load(str(out_dir / bundle_layout.POLICY_SAVED_MODEL_DIR))
        m, f = int(self.meta["num_candidates"]), int(self.meta["num_features"])
        spec = tensor_spec.TensorSpec([m, f], tf.float32)
        self.network = CandidateScoreNetwork(spec, self.meta["hidden_units"])
        self.network.create_variables()
        prefix = self.meta["score_variable_prefix"]
        saved = [v for v in self.saved.model_variables if prefix in v.name]
        if len(saved) != len(self.network.variables):
            raise DataError(f"{out_dir}: the saved policy has {len(saved)} score variables, expected "
                            f"{len(self.network.variables)}")
        for dst, src in zip(self.network.variables, saved, strict=True):
            dst.assign(src)
        self._score_fn = tf.function(
            lambda x: self.network(x)[0], input_signature=[tf.TensorSpec([None, m, f], tf.float32)]
        )
        self.epsilon = float(self.meta.get("epsilon", 0.0))
        self.stochastic = self.meta["agent"] == "ppo"
        self._rng = np.random.default_rng(seed)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``[M]`` scores (Q-values or logits) of one request's candidate rows ``[M, F]``."""
        return self._score_fn(tf.constant(features[None], tf.float32))[0].numpy()

    def saved_action(self, features: np.ndarray) -> int:
        """The exported TF-Agents policy's own action (one candidate index) for ``[M, F]`` rows."""
        from tf_agents.trajectories import time_step as ts

        step = ts.restart(tf.constant(features[None], tf.float32), batch_size=1)
        return int(self.saved.action(step).action.numpy()[0])

    def slate(self, features: np.ndarray, k: int, greedy: bool = False) -> np.ndarray:
        """A slate of ``k`` candidate indices: top-k (greedy), Plackett-Luce sample (PPO) or epsilon-greedy."""
        return self.slate_from_scores(self.scores(features), k, greedy)

    def slate_from_scores(self, s: np.ndarray, k: int, greedy: bool = False) -> np.ndarray:
        """:meth:`slate` from already computed candidate scores."""
        if greedy:
            return np.argsort(-s, kind="stable")[:k].astype(np.int32)
        if self.stochastic:
            return plackett_luce_slate(s, k, self._rng)
        return epsilon_greedy_slate(s, k, self.epsilon, self._rng)[0]
