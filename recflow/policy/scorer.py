"""The exported policy, reloaded: slates for serving and action probabilities for off-policy evaluation.

The SavedModel written by PolicySaver is loaded with ``tf.saved_model.load`` and called through its ``action``
signature; the per-arm scores come from the policy info it emits (mean reward predictions, the upper confidence
bound for LinUCB). A policy has a fixed number of arms per call, so any number of candidates is scored in blocks
of ``num_arms`` (per-arm scoring is independent across arms in all three agents).

Exploration, the same in :meth:`PolicyScorer.choose` and :meth:`PolicyScorer.action_distribution`:

* epsilon-greedy: each slot, in order, shows the best-scored candidate not yet shown with probability
  ``1 - epsilon``, else a uniformly random one of the ``m`` candidates not yet shown; so
  ``P(a | slots above) = (1 - epsilon) * [a is the best remaining] + epsilon / m`` (closed form).
* Thompson sampling: the slate is ranked by one draw from the ridge posterior
  ``N(mean, alpha^2 x^T (A + lambda I)^-1 x)`` (per arm, as TF-Agents' LinearThompsonSamplingPolicy samples);
  action probabilities are Monte Carlo frequencies over ``samples`` seeded draws.

The propensities :meth:`choose` returns are these conditional slot probabilities given the slots above, which
is what serving logs as ``propensity``.
"""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.policy.logged_data import (
    BanditData,
    FeatureLayout,
    arm_features,
    context_onehots,
    global_features,
)

#: Upper bound on floats in one scoring call (rows x candidates x arm features), to bound memory.
_MAX_FLOATS_PER_CALL = 8_000_000
#: Target distributions over the whole catalog are computed for at most this many (decision x candidate) cells at a
#: time (a few float arrays of this size), so scoring a large log over 100,000 items does not hold them all at once.
MAX_DISTRIBUTION_CELLS = 16_000_000

Context: TypeAlias = pd.DataFrame | Mapping[str, Any] | None
#: Item ids: a sequence or a NumPy array of them.
ItemIds: TypeAlias = Sequence[str] | np.ndarray


class PolicyScorer:
    """A trained policy reloaded from ``out_dir`` (see :func:`load_policy`)."""

    def __init__(self, out_dir: Path, *, seed: int | None = None, samples: int = 200) -> None:
        out_dir = Path(out_dir)
        meta_path = out_dir / bundle_layout.POLICY_META_FILE
        if not meta_path.is_file() or not (out_dir / bundle_layout.POLICY_SAVED_MODEL_DIR).is_dir():
            raise DataError(f"{out_dir}: no exported policy here (expected {bundle_layout.POLICY_META_FILE} and "
                            f"{bundle_layout.POLICY_SAVED_MODEL_DIR}/)")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{meta_path}: cannot read the policy metadata: {exc}") from None
        self.out_dir = out_dir
        self.layout = FeatureLayout.from_description(self.meta["feature_layout"])
        self.agent: str = self.meta["agent"]
        self.exploration: str = self.meta["exploration"]
        self.epsilon: float = float(self.meta["epsilon"])
        self.alpha: float = float(self.meta["alpha"])
        self.num_arms: int = int(self.meta["num_arms"])
        self.item_ids = np.asarray(self.meta["item_ids"], dtype=object)
        self._item_index = pd.Index(self.item_ids)
        self.item_embeddings = np.load(out_dir / bundle_layout.POLICY_ITEM_EMBEDDINGS_FILE)
        self.policy = tf.saved_model.load(str(out_dir / bundle_layout.POLICY_SAVED_MODEL_DIR))
        self.samples = samples
        self.seed = int(self.meta["config"]["seed"]) if seed is None else seed
        self._rng = np.random.default_rng(self.seed)
        self._posterior_inv: np.ndarray | None = None
        if self.exploration == "thompson":
            cov = {v.name.split(":")[0]: v for v in self.policy.model_variables}["a_0"].numpy()
            reg = float(self.meta["tikhonov_weight"]) * np.eye(cov.shape[0])
            self._posterior_inv = np.linalg.inv(cov.astype(np.float64) + reg)

    # ------------------------------------------------------------------------------------------------ features

    def _candidate_index(self, candidate_item_ids: ItemIds) -> np.ndarray:
        idx = self._item_index.get_indexer(pd.Index(np.asarray(candidate_item_ids, dtype=object).astype(str)))
        if (idx < 0).any():
            bad = np.asarray(candidate_item_ids)[idx < 0][:5]
            raise DataError(f"candidate items unknown to the policy's catalog: {', '.join(map(str, bad))}")
        if len(idx) == 0:
            raise DataError("no candidate items to choose from")
        return idx

    def _users(self, user_embeddings: np.ndarray | None, n: int) -> np.ndarray:
        fallback = np.asarray(self.layout.unknown_user_embedding, dtype=np.float32)
        if user_embeddings is None:
            return np.tile(fallback, (n, 1))
        users = np.asarray(user_embeddings, dtype=np.float32).reshape(n, -1).copy()
        if users.shape[1] != self.layout.embedding_dim:
            raise DataError(f"user embeddings have {users.shape[1]} values, the policy expects "
                            f"{self.layout.embedding_dim}")
        missing = ~np.isfinite(users).all(axis=1)
        users[missing] = fallback
        return users

    def _global(self, users: np.ndarray, context: Context) -> np.ndarray:
        n = users.shape[0]
        return global_features(users, context_onehots(context, self.layout.context_columns, n))

    def policy_step(self, global_feats: np.ndarray, arm_feats: np.ndarray) -> Any:
        """Call the SavedModel's ``action`` on ``[n, global_dim]`` and ``[n, num_arms, arm_dim]`` features."""
        step = ts.restart(
            {"global": tf.constant(global_feats, tf.float32), "per_arm": tf.constant(arm_feats, tf.float32)},
            batch_size=global_feats.shape[0],
        )
        return self.policy.action(step)

    def scores(self, user_embeddings: np.ndarray | None, context: Context, candidate_item_ids: ItemIds,
               n: int = 1) -> dict[str, np.ndarray]:
        """Per-candidate scores ``[n, N]`` for ``n`` decisions sharing one candidate list.

        Keys: ``mean`` (predicted reward), ``rank`` (what the greedy policy ranks by: the upper confidence bound
        for lin_ucb, else the mean) and, for Thompson sampling, ``std`` (posterior standard deviation).
        """
        cand = self._candidate_index(candidate_item_ids)
        users = self._users(user_embeddings, n)
        gfeat = self._global(users, context)
        k, n_cand = self.num_arms, len(cand)
        blocks = -(-n_cand // k)
        padded = np.concatenate([cand, np.repeat(cand[-1:], blocks * k - n_cand)])
        rows = max(1, _MAX_FLOATS_PER_CALL // (blocks * k * self.layout.arm_dim))
        out: dict[str, list[np.ndarray]] = {"mean": [], "rank": [], "std": []}
        for start in range(0, n, rows):
            u, g = users[start : start + rows], gfeat[start : start + rows]
            m = u.shape[0]
            arms = arm_features(u, self.item_embeddings[np.broadcast_to(padded, (m, padded.size))])
            flat_arms = arms.reshape(m * blocks, k, -1)
            flat_global = np.repeat(g, blocks, axis=0)
            info = self.policy_step(flat_global, flat_arms).info
            mean = info.predicted_rewards_mean.numpy().reshape(m, -1)[:, :n_cand]
            out["mean"].append(mean)
            if self.agent == "lin_ucb":
                out["rank"].append(info.predicted_rewards_optimistic.numpy().reshape(m, -1)[:, :n_cand])
            else:
                out["rank"].append(mean)
            if self._posterior_inv is not None:
                x = np.concatenate([np.broadcast_to(g[:, None, :], (m, padded.size, g.shape[1])), arms], axis=-1)
                var = np.einsum("npi,ij,npj->np", x, self._posterior_inv, x)[:, :n_cand]
                out["std"].append(self.alpha * np.sqrt(np.maximum(var, 0.0)))
        return {key: np.concatenate(v, axis=0) for key, v in out.items() if v}

    # -------------------------------------------------------------------------------------------- decisions

    def _sampled_scores(self, scores: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return scores["mean"] + scores["std"] * rng.standard_normal(scores["mean"].shape)

    def action_distribution(
        self,
        user_embeddings: np.ndarray | None,
        context: Context,
        candidate_item_ids: ItemIds,
        *,
        n: int = 1,
        exclude: np.ndarray | None = None,
        greedy: bool = False,
    ) -> np.ndarray:
        """``[n, N]``: the probability that the policy fills a slot with each candidate (rows sum to 1).

        ``exclude`` (``[n, N]`` bool) marks candidates already shown above the slot; they get probability 0.
        ``greedy`` drops exploration (epsilon 0; Thompson sampling ranks by the posterior mean).
        """
        scores = self.scores(user_embeddings, context, candidate_item_ids, n)
        n_cand = scores["mean"].shape[1]
        allowed = np.ones((n, n_cand), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
        if not allowed.any(axis=1).all():
            raise DataError("a decision has every candidate excluded")
        rows = np.arange(n)
        if self.exploration == "thompson" and not greedy:
            rng = np.random.default_rng(self.seed)
            counts = np.zeros((n, n_cand))
            for _ in range(self.samples):
                best = np.where(allowed, self._sampled_scores(scores, rng), -np.inf).argmax(axis=1)
                counts[rows, best] += 1
            return counts / self.samples
        eps = 0.0 if greedy or self.exploration == "thompson" else self.epsilon
        best = np.where(allowed, scores["rank"], -np.inf).argmax(axis=1)
        dist = allowed * (eps / allowed.sum(axis=1, keepdims=True))
        dist[rows, best] += 1.0 - eps
        return dist

    def action_probabilities(
        self,
        user_embeddings: np.ndarray | None,
        context: Context,
        candidate_item_ids: ItemIds,
        logged_item_ids: ItemIds,
        *,
        exclude: np.ndarray | None = None,
        greedy: bool = False,
    ) -> np.ndarray:
        """``[n]``: the probability that the policy would have shown each logged item in its slot (for OPE)."""
        n = len(logged_item_ids)
        cand = pd.Index(np.asarray(candidate_item_ids, dtype=object).astype(str))
        col = cand.get_indexer(pd.Index(np.asarray(logged_item_ids, dtype=object).astype(str)))
        if (col < 0).any():
            raise DataError(f"logged item {np.asarray(logged_item_ids)[col < 0][0]!r} is not among the candidates")
        dist = self.action_distribution(user_embeddings, context, candidate_item_ids, n=n, exclude=exclude,
                                        greedy=greedy)
        return dist[np.arange(n), col]

    def logged_action_probabilities(self, data: BanditData, *, greedy: bool = False) -> np.ndarray:
        """Target probabilities of the logged decisions in ``data``, candidates = the whole catalog.

        Each slot's candidates exclude the items the log showed above it in the same request, matching the
        conditional propensities serving logs.
        """
        n, n_items = len(data), len(self.item_ids)
        col = self._candidate_index(data.item_ids)
        above: dict[int, np.ndarray] = {}
        frame = pd.DataFrame({"req": data.request_ids, "pos": data.positions, "col": col, "row": np.arange(n)})
        for _, group in frame.groupby("req", sort=False):
            if len(group) < 2:
                continue
            for row, pos in zip(group["row"].to_numpy(), group["pos"].to_numpy(), strict=True):
                above[int(row)] = group["col"].to_numpy()[group["pos"].to_numpy() < pos]
        # In row chunks of at most MAX_DISTRIBUTION_CELLS cells (one chunk, as before, for a small log x catalog).
        rows = max(1, MAX_DISTRIBUTION_CELLS // n_items)
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            exclude = np.zeros((stop - start, n_items), dtype=bool)
            for row in range(start, stop):
                if row in above:
                    exclude[row - start, above[row]] = True
            out[start:stop] = self.action_probabilities(
                data.user_embeddings[start:stop], data.context.iloc[start:stop].reset_index(drop=True),
                self.item_ids, data.item_ids[start:stop], exclude=exclude, greedy=greedy)
        return out

    def choose(
        self,
        user_embedding: np.ndarray | None,
        context: Mapping[str, Any] | None,
        candidate_item_ids: Sequence[str],
        k: int,
        greedy: bool = False,
    ) -> tuple[list[str], np.ndarray]:
        """A slate of ``min(k, N)`` distinct candidates for one request and each slot's propensity.

        ``greedy`` returns the ranking without exploration (propensities 1).
        """
        candidates = np.asarray(candidate_item_ids, dtype=object).astype(str)
        scores = self.scores(None if user_embedding is None else np.asarray(user_embedding)[None, :],
                             context, candidates, 1)
        k = min(k, len(candidates))
        remaining = np.ones(len(candidates), dtype=bool)
        chosen: list[int] = []
        props: list[float] = []
        if self.exploration == "thompson" and not greedy:
            sample = self._sampled_scores(scores, self._rng)
            chosen = list(np.argsort(-sample[0], kind="stable")[:k])
            # Marginal slot probabilities by Monte Carlo, counting the draw that built the slate.
            counts = np.ones(k)
            mc_rng = np.random.default_rng(self._rng.integers(2**63))
            for _ in range(self.samples):
                order = np.argsort(-self._sampled_scores(scores, mc_rng)[0], kind="stable")[:k]
                counts += order == np.asarray(chosen)
            props = list(counts / (self.samples + 1))
            return [str(candidates[i]) for i in chosen], np.asarray(props)
        rank = scores["rank"][0] if self.exploration != "thompson" else scores["mean"][0]
        eps = 0.0 if greedy or self.exploration == "thompson" else self.epsilon
        for _ in range(k):
            best = int(np.flatnonzero(remaining)[np.argmax(rank[remaining])])
            m = int(remaining.sum())
            pick = int(self._rng.choice(np.flatnonzero(remaining))) if self._rng.random() < eps else best
            props.append((1.0 - eps) * (pick == best) + eps / m)
            chosen.append(pick)
            remaining[pick] = False
        return [str(candidates[i]) for i in chosen], np.asarray(props)


def load_policy(out_dir: Path, *, seed: int | None = None, samples: int = 200) -> PolicyScorer:
    """Reload a policy exported by :func:`recflow.policy.trainer.train_policy`.

    ``seed`` seeds exploration (default: the training seed); ``samples`` is the Monte Carlo size for Thompson
    sampling probabilities.
    """
    return PolicyScorer(Path(out_dir), seed=seed, samples=samples)
