"""The simulator as a TF-Agents environment over candidate slates, with the features every session agent sees.

One request of a :class:`recflow.simulator.ShopEnv` session is one environment step (docs/mdp.md):

* **observation**: ``[num_candidates, NUM_FEATURES]`` float32, one row per candidate item. Each row holds the
  candidate's own features (collaborative-filtering score for this user, log-popularity in the training log,
  category one-hot, price relative to the category's median today, "unknown to the CF model") and the state
  shared by all rows (context one-hots, the request index, how often the candidate's category appeared in the
  user's recent clicks, and in this session's earlier slates and clicks -- the satiation the user builds up);
* **action**: ``[slate_size]`` distinct candidate indices, best position first;
* **reward**: the session reward of the slate (``ShopEnv``'s reward weights); the per-slot rewards are kept in
  :attr:`ShopPyEnvironment.last_slot_rewards` for the per-item agents.

Everything here is observable by the shop: nothing reads the simulator's latent preferences. The candidate list
is the CF retrieval's top ``retrieved_share`` plus available items drawn uniformly (new items included).
"""

from __future__ import annotations

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

# isort: split

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from recflow.baselines import ALSRecommender
from recflow.errors import ConfigError
from recflow.policy.config import DeepRLConfig
from recflow.simulator import Observation, ShopEnv, StepResult

DAYPARTS = 4
#: Reward of each logged event type, in the order of ShopEnv.reward_weights (click, cart, purchase, revenue).
_REWARD_EVENTS = ("click", "add_to_cart", "purchase")


@dataclass
class SessionState:
    """What the shop remembers within the current session: category counts of shown and clicked items."""

    shown: np.ndarray
    clicked: np.ndarray
    slates: int = 0


class CandidateFeaturizer:
    """Candidate retrieval and per-candidate features from observable data: the training log and the catalog.

    ``als`` is a fitted :class:`recflow.baselines.ALSRecommender` (the retrieval model); ``train_events`` gives
    item popularity; ``env`` supplies the catalog (categories, today's prices) and the users' ids.
    """

    def __init__(self, env: ShopEnv, als: ALSRecommender, train_events: pd.DataFrame, config: DeepRLConfig) -> None:
        world = env.world
        self.env = env
        self.config = config
        self.n_categories = world.n_categories
        self.n_devices = len(env.config.devices)
        n_items = world.n_items
        self.item_category = world.item_category
        counts = (
            train_events.loc[train_events["event_type"] == "impression", "item_id"].value_counts()
            if "event_type" in train_events.columns
            else train_events["item_id"].value_counts()
        )
        clicks = train_events.loc[train_events.get("event_type", pd.Series(dtype=str)) == "click", "item_id"]
        click_counts = clicks.value_counts().reindex(world.item_ids, fill_value=0).to_numpy(dtype=float)
        shown = counts.reindex(world.item_ids, fill_value=0).to_numpy(dtype=float)
        log_pop = np.log1p(click_counts)
        self.popularity = ((log_pop - log_pop.mean()) / (log_pop.std() or 1.0)).astype(np.float32)
        self.ctr_prior = ((click_counts + 1.0) / (shown + 30.0)).astype(np.float32)
        # CF factors aligned to the world's item indices (zeros for items the CF model never saw).
        dim = als.item_factors.shape[1] if als.item_factors is not None else 0
        self.item_factors = np.zeros((n_items, dim), dtype=np.float32)
        self.item_known = np.zeros(n_items, dtype=bool)
        pos = pd.Index(world.item_ids).get_indexer(pd.Index(als.item_ids.astype(str)))
        ok = pos >= 0
        if als.item_factors is not None:
            self.item_factors[pos[ok]] = als.item_factors[ok]
        self.item_known[pos[ok]] = True
        self.user_factors = np.zeros((world.n_users, dim), dtype=np.float32)
        self.user_known = np.zeros(world.n_users, dtype=bool)
        upos = pd.Index(world.user_ids).get_indexer(pd.Index(list(als._user_pos.keys())))
        rows = np.array(list(als._user_pos.values()), dtype=np.int64)
        uok = upos >= 0
        if als.user_factors is not None and uok.any():
            self.user_factors[upos[uok]] = als.user_factors[rows[uok]]
        self.user_known[upos[uok]] = True
        cf = self.user_factors[self.user_known] @ self.item_factors[self.item_known].T
        self.cf_scale = float(cf.std()) if cf.size else 1.0
        self.cf_scale = self.cf_scale or 1.0

    @property
    def num_features(self) -> int:
        """Columns of a candidate row."""
        return 6 + self.n_categories + 3 + 1 + self.n_devices + DAYPARTS + 1 + 1

    def cf_scores(self, user: int, items: np.ndarray) -> np.ndarray:
        """The CF retrieval score of ``items`` for ``user`` (0 for an unknown user or item)."""
        return (self.item_factors[items] @ self.user_factors[user]) / self.cf_scale

    def retrieve(self, obs: Observation, rng: np.random.Generator) -> np.ndarray:
        """``num_candidates`` distinct available items: the CF top share, then uniform draws from the rest."""
        available = obs.candidates
        m = min(self.config.num_candidates, len(available))
        n_top = int(round(m * self.config.retrieved_share)) if self.user_known[obs.user_idx] else 0
        if n_top:
            scores = self.cf_scores(obs.user_idx, available)
            top = available[np.argsort(-scores, kind="stable")[:n_top]]
        else:
            top = np.empty(0, dtype=np.int64)
        rest = np.setdiff1d(available, top, assume_unique=True)
        explore = rng.choice(rest, size=m - len(top), replace=False)
        return np.concatenate([top, explore]).astype(np.int64)

    def features(self, obs: Observation, items: np.ndarray, session: SessionState) -> np.ndarray:
        """``[len(items), num_features]`` float32 rows for the candidates ``items`` of request ``obs``."""
        world = self.env.world
        n = len(items)
        cat = self.item_category[items]
        prices = world.prices(obs.day)[items]
        log_ratio = np.log(prices / world.category_reference_price[cat])
        history = np.zeros(self.n_categories)
        if obs.history:
            hist_items = world.item_index(list(obs.history))
            np.add.at(history, self.item_category[hist_items], 1.0)
            history /= len(hist_items)
        shown_share = session.shown / max(session.shown.sum(), 1.0)
        onehot = np.zeros((n, self.n_categories), dtype=np.float32)
        onehot[np.arange(n), cat] = 1.0
        shared = np.zeros(1 + self.n_devices + DAYPARTS + 1 + 1, dtype=np.float32)
        shared[0] = obs.request_index / max(self.env.config.max_requests_per_session, 1)
        shared[1 + self.env.config.devices.index(obs.device)] = 1.0
        shared[1 + self.n_devices + obs.hour // 6] = 1.0
        shared[1 + self.n_devices + DAYPARTS] = float(obs.weekday >= 5)
        shared[-1] = float(not self.user_known[obs.user_idx])
        own = np.stack(
            [
                self.cf_scores(obs.user_idx, items),
                self.popularity[items],
                np.log(self.ctr_prior[items] * 30.0),
                (~self.item_known[items]).astype(np.float32),
                log_ratio,
                np.full(n, session.slates > 0, dtype=np.float32),
            ],
            axis=1,
        )
        state = np.stack([history[cat], shown_share[cat], session.clicked[cat]], axis=1)
        out = np.concatenate([own, onehot, state, np.broadcast_to(shared, (n, shared.size))], axis=1)
        return out.astype(np.float32)


def slot_rewards(result: StepResult, slate_length: int, weights: Sequence[float]) -> np.ndarray:
    """Per-position reward of a shown slate from its events (click, cart and purchase counts, order value)."""
    out = np.zeros(slate_length)
    events = result.events
    if events is None:
        raise ConfigError("per-slot rewards need the ShopEnv to record events (record_events=True)")
    if events.empty:
        return out
    types = events["event_type"].astype(str).to_numpy()
    pos = pd.to_numeric(events["position"], errors="coerce").fillna(-1).to_numpy(dtype=int)
    for name, weight in zip(_REWARD_EVENTS, weights[:3], strict=True):
        hit = (types == name) & (pos >= 0)
        np.add.at(out, pos[hit], weight)
    if weights[3]:
        buy = (types == "purchase") & (pos >= 0)
        np.add.at(out, pos[buy], weights[3] * events["order_value"].to_numpy(dtype=float)[buy])
    return out


def distinct_slate(slate: np.ndarray, num_candidates: int) -> np.ndarray:
    """``slate`` with repeated candidate indices replaced by the lowest unused ones (first occurrence kept).

    The action spec cannot say "distinct", so an agent that samples slots independently may repeat an item;
    the shop never shows an item twice in a slate.
    """
    out = slate.copy()
    seen: set[int] = set()
    unused = iter(i for i in range(num_candidates) if i not in set(slate.tolist()))
    for k, a in enumerate(slate.tolist()):
        if a in seen:
            out[k] = next(unused)
        seen.add(int(out[k]))
    return out


class ShopPyEnvironment(py_environment.PyEnvironment):
    """A TF-Agents ``PyEnvironment`` over :class:`ShopEnv`: one step = one slate shown to the session's user.

    An episode is one session. ``reset()`` draws the next arriving user; ``step(slate)`` takes
    ``slate_size`` distinct candidate indices. Candidates are retrieved by ``featurizer`` with an RNG seeded from
    ``seed``; the current candidates' item indices are in :attr:`candidate_items`. Per-slot rewards (needed to
    train the per-item agents) come from the slate's events: with ``ShopEnv(record_events=False)`` (faster, for
    evaluation) :attr:`last_slot_rewards` is all NaN.
    """

    def __init__(self, env: ShopEnv, featurizer: CandidateFeaturizer, seed: int = 0) -> None:
        super().__init__()
        self.env = env
        self.featurizer = featurizer
        self.slate_size = env.config.slate_size
        self.num_candidates = featurizer.config.num_candidates
        self._rng = np.random.default_rng(seed)
        self._obs_spec = array_spec.ArraySpec(
            (self.num_candidates, featurizer.num_features), np.float32, name="candidates"
        )
        self._action_spec = array_spec.BoundedArraySpec(
            (self.slate_size,), np.int32, minimum=0, maximum=self.num_candidates - 1, name="slate"
        )
        self.candidate_items = np.empty(0, dtype=np.int64)
        self.observation: Observation | None = None
        self.session = self._fresh_session()
        self.last_result: StepResult | None = None
        self.last_slot_rewards = np.zeros(self.slate_size)
        self.last_slate = np.arange(self.slate_size)
        self._features = np.zeros(self._obs_spec.shape, np.float32)

    def _fresh_session(self) -> SessionState:
        c = self.featurizer.n_categories
        return SessionState(np.zeros(c), np.zeros(c))

    def observation_spec(self) -> array_spec.ArraySpec:
        return self._obs_spec

    def action_spec(self) -> array_spec.BoundedArraySpec:
        return self._action_spec

    @property
    def features(self) -> np.ndarray:
        """The current observation's candidate rows."""
        return self._features

    def _observe(self, obs: Observation) -> np.ndarray:
        self.observation = obs
        self.candidate_items = self.featurizer.retrieve(obs, self._rng)
        self._features = self.featurizer.features(obs, self.candidate_items, self.session)
        return self._features

    def _reset(self) -> ts.TimeStep:
        self.session = self._fresh_session()
        return ts.restart(self._observe(self.env.reset()))

    def _step(self, action: np.ndarray) -> ts.TimeStep:
        if self.current_time_step() is None or self.current_time_step().is_last():
            return self.reset()
        slate = distinct_slate(np.asarray(action, dtype=np.int64).reshape(-1), self.num_candidates)
        self.last_slate = slate
        items = self.candidate_items[slate]
        result = self.env.step(items)
        self.last_result = result
        if result.events is not None:
            self.last_slot_rewards = slot_rewards(result, len(items), self.env.reward_weights)
        else:
            self.last_slot_rewards = np.full(len(items), np.nan)
        cat = self.featurizer.item_category[items]
        np.add.at(self.session.shown, cat, 1.0)
        # The session's clicks per category are spread over the slate's categories (a slate-level signal), so
        # the feature is the same whether or not the env records per-position events (no train/serve skew).
        if result.info["clicks"] > 0:
            np.add.at(self.session.clicked, cat, result.info["clicks"] / len(items))
        self.session.slates += 1
        reward = np.float32(result.reward)
        if result.done:
            return ts.termination(self._features, reward)
        return ts.transition(self._observe(result.observation), reward)
