"""The logging policy: the shop's existing recommender whose slates (and their propensities) fill the log.

It is deliberately imperfect, so that learned models can beat it: it scores items by a *noisy* popularity
estimate plus the *segment-level* (coarse) category taste of the user, mixes the softmax of that score with
uniform exploration, and samples a slate without replacement (a Plackett-Luce ranking, drawn with the
Gumbel-top-k trick). It never sees individual tastes, context or satiation, and it does not follow drift.

Since its weights depend on the user only through the user's segment, a large catalog
(``simulator.large_catalog_items`` and more) is sampled from one weight vector per segment instead of a dense
(users x items) matrix: the same Plackett-Luce distribution and propensities, drawn from the random stream in
another way (so it is used only at that size, and every smaller world keeps its exact stream).
"""

from __future__ import annotations

import numpy as np

from recflow.simulator.config import SimulatorConfig
from recflow.simulator.world import DRIFT_POLICY, DRIFT_STREAM, POLICY_STREAM, World, stream


class LoggingPolicy:
    """Softmax over noisy popularity + coarse affinity, with temperature and epsilon mixing.

    The per-item weights of a user are ``w = (1 - epsilon) * softmax(score / T) + epsilon / N`` over the N
    candidates (summing to 1). Slot ``k`` of a slate is drawn from ``w`` restricted to the items not yet
    placed and renormalised; the recorded propensity of the item at slot ``k`` is that conditional
    probability, ``w_i / (1 - sum of w over slots < k)``. The product of a slate's propensities is the
    slate's probability.
    """

    def __init__(
        self,
        world: World,
        temperature: float = 0.7,
        epsilon: float = 0.1,
        popularity_noise: float = 0.3,
        policy_id: str = "logging-softmax-v1",
        seed: int | None = None,
        large_catalog_items: int | None = None,
    ) -> None:
        self.world = world
        #: Catalogs of at least this many items (world.n_items) are sampled per segment (:meth:`sample`);
        #: None: always the dense Gumbel-top-k sampler.
        self.large_catalog_items = large_catalog_items
        self.temperature = temperature
        self.epsilon = epsilon
        self.policy_id = policy_id
        seed = world.seed if seed is None else seed
        noise = stream(seed, POLICY_STREAM).normal(0.0, popularity_noise, size=world.n_base_items)
        n_new = world.n_items - world.n_base_items
        if n_new:  # items added by drift: their noise comes from the drift's stream (base items unchanged)
            extra = stream(seed, DRIFT_STREAM, DRIFT_POLICY).normal(0.0, popularity_noise, size=n_new)
            noise = np.concatenate([noise, extra])
        #: The policy's estimate of item popularity (standardised log-popularity plus fixed noise).
        self.item_score = world.popularity_z + noise

    @classmethod
    def from_config(cls, world: World, config: SimulatorConfig) -> LoggingPolicy:
        """The logging policy configured by ``config`` (temperature, epsilon, noise, policy id)."""
        return cls(
            world,
            config.logging_temperature,
            config.logging_epsilon,
            config.logging_popularity_noise,
            config.logging_policy_id,
            large_catalog_items=config.large_catalog_items,
        )

    @property
    def samples_by_segment(self) -> bool:
        """Whether :meth:`sample` uses the per-segment sampler (a catalog of ``large_catalog_items`` or more)."""
        return self.large_catalog_items is not None and self.world.n_items >= self.large_catalog_items

    def scores(self, user_idx: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The policy's score of each candidate item (1-D item indices) for each user: (B, N)."""
        w = self.world
        coarse = w.segment_preferences[w.user_segment[np.asarray(user_idx)]]  # (B, C)
        return self.item_score[candidates][None, :] + coarse[:, w.item_category[candidates]]

    def probabilities(self, user_idx: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The mixing weights ``w`` (B, N) over ``candidates``; rows sum to 1 (slot 0's distribution)."""
        s = self.scores(user_idx, candidates) / self.temperature
        s = np.exp(s - s.max(axis=1, keepdims=True))
        soft = s / s.sum(axis=1, keepdims=True)
        return (1.0 - self.epsilon) * soft + self.epsilon / len(candidates)

    def sample(
        self, user_idx: np.ndarray, candidates: np.ndarray, slate_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one slate per user: (item indices (B, K), propensities (B, K)).

        Gumbel-top-k: adding i.i.d. Gumbel noise to ``log w`` and taking the k largest, in order, samples a
        Plackett-Luce ranking with weights ``w`` without replacement, for all users at once. For a large
        catalog (:attr:`samples_by_segment`) :meth:`sample_by_segment` draws from the same distribution without
        the (B, N) matrices.
        """
        if self.samples_by_segment:
            return self.sample_by_segment(user_idx, candidates, slate_size, rng)
        weights = self.probabilities(user_idx, candidates)
        k = min(slate_size, len(candidates))
        keys = np.log(weights) + rng.gumbel(size=weights.shape)
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        cols = np.take_along_axis(top, order, axis=1)
        chosen_w = np.take_along_axis(weights, cols, axis=1)
        return candidates[cols], _propensities(chosen_w)

    def sample_by_segment(
        self,
        user_idx: np.ndarray,
        candidates: np.ndarray,
        slate_size: int,
        rng: np.random.Generator,
        max_rounds: int = 64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same Plackett-Luce slates as :meth:`sample`, in O(segments x N + B x K) memory.

        The weights ``w`` depend on the user only through the segment, so one weight vector (and its cumulative
        sum) is computed per segment of the batch. Slot k of every slate is drawn by inverse CDF from ``w``;
        a draw of an item already placed in that slate is rejected and drawn again, which samples ``w``
        restricted to the remaining items, renormalised: the Plackett-Luce conditional. Rows still rejected
        after ``max_rounds`` draws (a slot whose remaining mass is tiny) are drawn exactly from the renormalised
        remaining weights of their segment. Propensities are ``w_i / (1 - sum of w over earlier slots)``, the
        same formula as the dense sampler.
        """
        w = self.world
        user_idx = np.asarray(user_idx)
        n = len(candidates)
        k = min(slate_size, n)
        b = len(user_idx)
        segment = w.user_segment[user_idx]
        if b == 0:
            return np.empty((0, k), dtype=candidates.dtype), np.empty((0, k))
        segments, first, seg_row = np.unique(segment, return_index=True, return_inverse=True)
        seg_row = seg_row.reshape(-1)
        weights = self.probabilities(user_idx[first], candidates)  # (S, N): one row per segment of the batch
        cdf = np.cumsum(weights, axis=1)
        total = cdf[:, -1]
        cols = np.empty((b, k), dtype=np.int64)
        for slot in range(k):
            pending = np.arange(b)
            for _ in range(max_rounds):
                rows = seg_row[pending]
                u = rng.random(len(pending)) * total[rows]
                draw = np.empty(len(pending), dtype=np.int64)
                for j in range(len(segments)):
                    mine = rows == j
                    if mine.any():
                        draw[mine] = np.searchsorted(cdf[j], u[mine], side="right")
                draw = np.minimum(draw, n - 1)
                cols[pending, slot] = draw
                repeat = (cols[pending, :slot] == draw[:, None]).any(axis=1)
                pending = pending[repeat]
                if len(pending) == 0:
                    break
            for row in pending:  # exact fallback: draw from the remaining weights, renormalised
                remaining = weights[seg_row[row]].copy()
                remaining[cols[row, :slot]] = 0.0
                cum = np.cumsum(remaining)
                pick = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
                cols[row, slot] = min(pick, n - 1)
        chosen_w = weights[seg_row[:, None], cols]
        return candidates[cols], _propensities(chosen_w)

    def slot_distributions(self, user: int, candidates: np.ndarray, slate: np.ndarray) -> np.ndarray:
        """The distribution over ``candidates`` each slot of ``slate`` (item indices) was drawn from: (K, N).

        Row k is ``w`` with the items of slots < k removed, renormalised; each row sums to 1, and the entry of
        the item shown at slot k is its recorded propensity.
        """
        weights = self.probabilities(np.array([user]), candidates)[0]
        position = {int(item): j for j, item in enumerate(candidates)}
        rows = np.empty((len(slate), len(candidates)))
        remaining = weights.copy()
        for k, item in enumerate(slate):
            rows[k] = remaining / remaining.sum()
            remaining[position[int(item)]] = 0.0
        return rows


def _propensities(chosen_w: np.ndarray) -> np.ndarray:
    """The Plackett-Luce propensity of each slot of slates (B, K) given the chosen items' weights ``w``:
    ``w_i / (1 - sum of w over earlier slots)``."""
    placed_before = np.cumsum(chosen_w, axis=1) - chosen_w
    propensity = chosen_w / np.clip(1.0 - placed_before, 1e-300, None)
    return np.clip(propensity, 1e-300, 1.0)
