"""Off-policy evaluation on the Open Bandit Dataset (ZOZOTOWN): the estimators validated as OBP does, and
recflow's policies estimated on real logged feedback.

**Validation** (:func:`validate_estimators`): OBD holds two logs of the same campaign, one collected by a
uniform-random policy and one by Bernoulli Thompson sampling (BTS). Each log's click rate is the on-policy truth
for its policy, so an estimator is checked by estimating one policy's click rate from the *other* policy's log:

* ``bts_from_random`` (OBP's own setup, whose published relative errors we compare with): BTS is the target,
  the random log the data. BTS on ZOZOTOWN is context-free, so its action distribution per position is read
  from the BTS log itself: the mean logged propensity of each (item, position), normalised per position
  (OBP recomputes it by Monte Carlo from the production prior, which the sample does not ship);
* ``random_from_bts``: uniform target ``1/n_items`` on the BTS log with its logged propensities.

Propensities in OBD are *marginal* per position, so target probabilities are too. DM and DR use a logistic
click model (scikit-learn) on context one-hots, item one-hots and position one-hots fitted on the data log with
``folds``-fold cross-fitting (each row's prediction comes from a model that did not see it), like OBP's
``RegressionModel``. Relative error = ``|estimate - truth| / truth``.

**Policies** (:func:`evaluate_policies`): every policy is fitted on the BTS log and estimated on the random log
(uniform propensities, the best-conditioned data for OPE): random, popularity, collaborative filtering (OBD's
user-item affinity columns rank items), content-based (a click model on item features x user features) and the
TF-Agents LinUCB per-arm bandit on the same features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow.datasets import load_obd
from recflow.datasets.obd import ObdData
from recflow.evaluation.off_policy import Estimate, direct_method, doubly_robust, ips, snips

#: OBP's published relative errors of the on-policy CTR estimate on the small OBD sample (OBP README / paper).
OBP_PUBLISHED_RELATIVE_ERROR = {"dm": 0.157, "ips": 0.311, "dr": 0.292, "dros": 0.160}
ESTIMATORS = ("ips", "snips", "dm", "dr")


@dataclass
class ObdLogs:
    """Both OBD logs of one campaign with one shared context encoding."""

    random: ObdData
    bts: ObdData
    context_random: np.ndarray
    context_bts: np.ndarray

    @property
    def n_items(self) -> int:
        return self.random.n_actions

    @property
    def len_list(self) -> int:
        return self.random.len_list


def load_logs(cache_dir: Path, campaign: str = "all") -> ObdLogs:
    """Load the random and BTS logs of ``campaign`` and one-hot their user features with shared columns."""
    rnd = load_obd(Path(cache_dir), "random", campaign)  # type: ignore[arg-type]
    bts = load_obd(Path(cache_dir), "bts", campaign)  # type: ignore[arg-type]
    cols = [c for c in rnd.frame.columns if c.startswith("user_feature")]
    both = pd.concat([rnd.frame[cols], bts.frame[cols]], ignore_index=True).astype(str)
    onehot = pd.get_dummies(both).to_numpy(dtype=np.float32)
    return ObdLogs(rnd, bts, onehot[: rnd.n_rounds], onehot[rnd.n_rounds :])


def bts_action_distribution(bts: ObdData) -> np.ndarray:
    """``[len_list, n_items]``: BTS's probability of each item at each position, from its logged propensities."""
    dist = np.zeros((bts.len_list, bts.n_actions))
    frame = pd.DataFrame({"pos": bts.positions, "a": bts.actions, "p": bts.propensities})
    mean = frame.groupby(["pos", "a"])["p"].mean()
    dist[mean.index.get_level_values(0), mean.index.get_level_values(1)] = mean.to_numpy()
    return dist / dist.sum(axis=1, keepdims=True)


def _design(context: np.ndarray, actions: np.ndarray, positions: np.ndarray, n_items: int, len_list: int
            ) -> np.ndarray:
    n = len(actions)
    items = np.zeros((n, n_items), np.float32)
    items[np.arange(n), actions] = 1.0
    pos = np.zeros((n, len_list), np.float32)
    pos[np.arange(n), positions] = 1.0
    return np.concatenate([context, items, pos], axis=1)


def click_model_predictions(
    data: ObdData, context: np.ndarray, folds: int = 3, seed: int = 0
) -> np.ndarray:
    """``[n, n_items]`` cross-fitted click probabilities for every item at each logged row's position."""
    from sklearn.linear_model import LogisticRegression

    n, n_items, k = data.n_rounds, data.n_actions, data.len_list
    out = np.zeros((n, n_items))
    fold = np.random.default_rng(seed).permutation(n) % folds
    for f in range(folds):
        train, test = fold != f, fold == f
        x = _design(context[train], data.actions[train], data.positions[train], n_items, k)
        model = LogisticRegression(C=1.0, max_iter=500).fit(x, data.rewards[train])
        rows = np.flatnonzero(test)
        for a in range(n_items):
            xa = _design(context[rows], np.full(rows.size, a), data.positions[rows], n_items, k)
            out[rows, a] = model.predict_proba(xa)[:, 1]
    return out


def estimate_all(data: ObdData, target: np.ndarray, q: np.ndarray, seed: int = 0, replicates: int = 500
                 ) -> dict[str, Estimate]:
    """IPS, SNIPS, DM and DR of a target with per-row action distribution ``target`` (``[n, n_items]``)."""
    rows = np.arange(data.n_rounds)
    pi = target[rows, data.actions]
    kw = {"replicates": replicates, "seed": seed}
    q_pi = (target * q).sum(axis=1)
    return {
        "ips": ips(data.rewards, pi, data.propensities, **kw),
        "snips": snips(data.rewards, pi, data.propensities, **kw),
        "dm": direct_method(q_pi, **kw),
        "dr": doubly_robust(data.rewards, pi, data.propensities, q[rows, data.actions], q_pi, **kw),
    }


def validate_estimators(logs: ObdLogs, seed: int = 0, replicates: int = 500) -> dict[str, Any]:
    """Both directions of the OBP validation; per estimator: estimate, CI, truth, relative error, OBP's number."""
    out: dict[str, Any] = {}
    bts_dist = bts_action_distribution(logs.bts)
    q_random = click_model_predictions(logs.random, logs.context_random, seed=seed)
    target_bts = bts_dist[logs.random.positions]  # [n, n_items] at each row's position
    q_bts = click_model_predictions(logs.bts, logs.context_bts, seed=seed)
    target_random = np.full((logs.bts.n_rounds, logs.n_items), 1.0 / logs.n_items)
    directions = {
        "bts_from_random": (logs.random, target_bts, q_random, logs.bts.click_rate),
        "random_from_bts": (logs.bts, target_random, q_bts, logs.random.click_rate),
    }
    for name, (data, target, q, truth) in directions.items():
        est = estimate_all(data, target, q, seed=seed, replicates=replicates)
        out[name] = {
            key: {**e.as_dict(), "truth": truth, "relative_error": abs(e.value - truth) / truth}
            for key, e in est.items()
        }
        out[name]["truth"] = truth
    return out


def _ranking_target(scores: np.ndarray, positions: np.ndarray, len_list: int, epsilon: float = 0.0
                    ) -> np.ndarray:
    """Per-row distribution over items at the row's position for a ranking policy (top-len_list by score),
    mixed with ``epsilon`` uniform exploration."""
    n, n_items = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")[:, :len_list]
    target = np.full((n, n_items), epsilon / n_items)
    target[np.arange(n), order[np.arange(n), positions]] += 1.0 - epsilon
    return target


def policy_scores(logs: ObdLogs, seed: int = 0, lin_ucb_alpha: float = 0.1) -> dict[str, np.ndarray]:
    """``[n_random_rows, n_items]`` scores of each policy fitted on the BTS log, for the random log's rows."""
    from sklearn.linear_model import LogisticRegression

    rnd, bts = logs.random, logs.bts
    n, n_items = rnd.n_rounds, logs.n_items
    rng = np.random.default_rng(seed)
    clicks = np.bincount(bts.actions, weights=bts.rewards, minlength=n_items)
    shows = np.bincount(bts.actions, minlength=n_items)
    items = logs.random.action_context
    items = (items - items.mean(0)) / (items.std(0) + 1e-9)
    # content: a click model on item features x user features (no item ids: generalises across items)
    def content_x(ctx: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        return np.concatenate([ctx, items[item_rows], (ctx[:, :, None] * items[item_rows][:, None, :]
                                                       ).reshape(len(ctx), -1)], axis=1)

    content = LogisticRegression(C=0.5, max_iter=500).fit(content_x(logs.context_bts, bts.actions), bts.rewards)
    content_scores = np.stack(
        [content.predict_proba(content_x(logs.context_random, np.full(n, a)))[:, 1] for a in range(n_items)], 1
    )
    return {
        "random": rng.random((n, n_items)),
        "popularity": np.broadcast_to((clicks + 1) / (shows + 30), (n, n_items)).copy(),
        "collaborative_filtering": rnd.user_item_affinity.copy(),
        "content_based": content_scores,
        "lin_ucb": lin_ucb_scores(logs, alpha=lin_ucb_alpha, seed=seed),
    }


def lin_ucb_scores(logs: ObdLogs, alpha: float = 0.1, seed: int = 0, num_arms: int = 10) -> np.ndarray:
    """Train TF-Agents' per-arm LinUCB on the BTS log and return its UCB scores for the random log's rows.

    Global features: user one-hots; per-arm: standardised item features and the user-item affinity.
    """
    import recflow  # noqa: F401
    # isort: split

    import tensorflow as tf
    from tf_agents.trajectories import time_step as ts

    from recflow.policy import agents
    from recflow.policy.config import PolicyConfig
    from recflow.policy.trainer import _experience

    items = logs.random.action_context
    items = ((items - items.mean(0)) / (items.std(0) + 1e-9)).astype(np.float32)

    def arms(aff: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        return np.concatenate([items[item_rows], aff[..., None]], axis=-1).astype(np.float32)

    config = PolicyConfig(agent="lin_ucb", num_arms=num_arms, alpha=alpha, seed=seed)
    g_dim, a_dim = logs.context_bts.shape[1], items.shape[1] + 1
    spec, action_spec = agents.per_arm_specs(g_dim, a_dim, num_arms)
    agent = agents.make_agent(config, spec, action_spec)
    agent.initialize()
    bts = logs.bts
    aff = bts.user_item_affinity[np.arange(bts.n_rounds), bts.actions]
    chosen = arms(aff[:, None], bts.actions[:, None])[:, 0]
    agent.train(_experience(agent, logs.context_bts, chosen, bts.rewards.astype(np.float32)))
    n, n_items = logs.random.n_rounds, logs.n_items
    out = np.zeros((n, n_items))
    for start in range(0, n_items, num_arms):
        cols = np.arange(start, min(start + num_arms, n_items))
        pad = np.concatenate([cols, np.repeat(cols[-1:], num_arms - len(cols))])
        per_arm = arms(logs.random.user_item_affinity[:, pad], np.broadcast_to(pad, (n, num_arms)))
        step = ts.restart({"global": tf.constant(logs.context_random), "per_arm": tf.constant(per_arm)},
                          batch_size=n)
        info = agent.policy.action(step).info
        out[:, cols] = info.predicted_rewards_optimistic.numpy()[:, : len(cols)]
    return out


def evaluate_policies(logs: ObdLogs, seed: int = 0, epsilon: float = 0.05, replicates: int = 500
                      ) -> dict[str, dict[str, dict[str, float]]]:
    """OPE (IPS, SNIPS, DM, DR) of each policy's click rate on the random log; epsilon-uniform exploration."""
    q = click_model_predictions(logs.random, logs.context_random, seed=seed)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, scores in policy_scores(logs, seed=seed).items():
        eps = 1.0 if name == "random" else epsilon
        target = _ranking_target(scores, logs.random.positions, logs.len_list, eps)
        out[name] = {k: e.as_dict() for k, e in estimate_all(logs.random, target, q, seed, replicates).items()}
    return out
