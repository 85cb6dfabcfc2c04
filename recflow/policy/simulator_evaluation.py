"""Online evaluation of slate policies against the simulator: the metrics of the comparison table.

Every policy faces the same :class:`ShopPyEnvironment` (same world, same candidate retrieval, same traffic
seed) and picks ``slate_size`` of the request's candidates. Per run: click-through rate (clicks per shown
item), conversion rate (purchased items per shown item, as the off-policy estimators define it), average order
value (order value per purchased item), cart abandonment (carted items not bought), reward per session, regret
against the simulator's myopic oracle (expected reward of the oracle slate minus the shown one, per request),
exploration cost (expected reward lost to exploration relative to the policy's own greedy slate, on the same
requests) and the same click rate for cold-start users (no events in the training log).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from recflow.policy.environment import ShopPyEnvironment


class SlatePolicy(Protocol):
    """What the benchmark runs: a slate of candidate indices for the environment's current request."""

    name: str

    def slate(self, env: ShopPyEnvironment, greedy: bool = False) -> np.ndarray: ...


@dataclass
class RunMetrics:
    """Totals of one policy's run; the rates are properties."""

    requests: int = 0
    sessions: int = 0
    impressions: int = 0
    clicks: float = 0.0
    carts: float = 0.0
    purchases: float = 0.0
    order_value: float = 0.0
    reward: float = 0.0
    regret: float = 0.0
    expected: float = 0.0
    greedy_expected: float = 0.0
    decision_seconds: float = 0.0
    cold_impressions: int = 0
    cold_clicks: float = 0.0
    quality: list[float] = field(default_factory=list)  #: expected / oracle expected reward per request

    @property
    def ctr(self) -> float:
        return self.clicks / max(self.impressions, 1)

    @property
    def cvr(self) -> float:
        return self.purchases / max(self.impressions, 1)

    @property
    def aov(self) -> float:
        return self.order_value / self.purchases if self.purchases else 0.0

    @property
    def cart_abandonment(self) -> float:
        return 1.0 - self.purchases / self.carts if self.carts else 0.0

    @property
    def avg_reward(self) -> float:
        """Reward per session (episode)."""
        return self.reward / max(self.sessions, 1)

    @property
    def regret_per_request(self) -> float:
        return self.regret / max(self.requests, 1)

    @property
    def exploration_cost(self) -> float:
        """Share of the greedy slates' expected reward lost by exploring (0 for a policy that never explores)."""
        return 1.0 - self.expected / self.greedy_expected if self.greedy_expected > 0 else 0.0

    @property
    def cold_ctr(self) -> float:
        return self.cold_clicks / max(self.cold_impressions, 1)

    @property
    def inference_ms(self) -> float:
        return 1000.0 * self.decision_seconds / max(self.requests, 1)

    def summary(self) -> dict[str, float]:
        """The table's metrics."""
        return {
            "ctr": self.ctr, "cvr": self.cvr, "aov": self.aov, "cart_abandonment": self.cart_abandonment,
            "avg_reward": self.avg_reward, "reward_per_request": self.reward / max(self.requests, 1),
            "regret": self.regret_per_request,
            "cumulative_regret": self.regret, "exploration_cost": self.exploration_cost,
            "cold_start_ctr": self.cold_ctr, "inference_ms": self.inference_ms,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("quality")
        return out


#: Called after every step with (env, policy slate, StepResult): online learners update themselves here.
Observer = Callable[[ShopPyEnvironment, np.ndarray, Any], None]


def run_policy(
    env: ShopPyEnvironment,
    policy: SlatePolicy,
    requests: int,
    *,
    cold_users: np.ndarray | None = None,
    explores: bool = True,
    observer: Observer | None = None,
) -> RunMetrics:
    """Serve ``requests`` requests with ``policy`` (sessions continue across the boundary until done).

    ``cold_users`` is a boolean mask over user indices. With ``explores`` the greedy slate of the same request is
    scored too (expected reward only, nothing is shown) to measure the exploration cost.
    """
    m = RunMetrics()
    step = env.reset()
    while m.requests < requests:
        obs = env.observation
        assert obs is not None
        started = time.perf_counter()
        slate = np.asarray(policy.slate(env), dtype=np.int64)
        m.decision_seconds += time.perf_counter() - started
        greedy = np.asarray(policy.slate(env, greedy=True), dtype=np.int64) if explores else slate
        greedy_value = env.env.expected_reward(env.candidate_items[greedy]) if explores else None
        step = env.step(slate.astype(np.int32))
        result = env.last_result
        assert result is not None
        info = result.info
        k = len(slate)
        m.requests += 1
        m.impressions += k
        m.clicks += info["clicks"]
        m.carts += info["carts"]
        m.purchases += info["purchases"]
        m.order_value += info["order_value"]
        m.reward += result.reward
        m.regret += info["regret"]
        m.expected += info["expected_reward"]
        m.greedy_expected += info["expected_reward"] if greedy_value is None else greedy_value
        oracle = info["oracle_expected_reward"]
        m.quality.append(info["expected_reward"] / oracle if oracle > 0 else 1.0)
        if cold_users is not None and cold_users[obs.user_idx]:
            m.cold_impressions += k
            m.cold_clicks += info["clicks"]
        if observer is not None:
            observer(env, env.last_slate, result)
        if step.is_last():
            m.sessions += 1
            step = env.reset()
    return m


def recovery_steps(quality: np.ndarray, drift_index: int, window: int = 100, tolerance: float = 0.95
                   ) -> tuple[int, bool, float, float]:
    """Requests after the drift until the rolling mean quality (window ``window``) is back to ``tolerance`` x
    the pre-drift mean. Returns ``(steps, recovered, pre-drift level, lowest rolling level after)``; when it
    never recovers, ``steps`` is the number of post-drift requests observed (a censored value)."""
    q = np.asarray(quality, dtype=float)
    pre = float(q[:drift_index].mean()) if drift_index > 0 else float("nan")
    post = q[drift_index:]
    if post.size < window:
        return int(post.size), False, pre, float("nan")
    rolling = np.convolve(post, np.ones(window) / window, mode="valid")  # rolling[j] = mean(post[j : j+window])
    ok = np.flatnonzero(rolling >= tolerance * pre)
    if ok.size:
        return int(ok[0] + window), True, pre, float(rolling.min())
    return int(post.size), False, pre, float(rolling.min())


def fast_forward(env: ShopPyEnvironment, day: int, margin_sessions: int = 0) -> int:
    """Skip arriving sessions (nothing shown) until the clock reaches ``day`` minus ``margin_sessions``
    sessions' worth of arrivals; returns how many sessions were skipped."""
    shop = env.env
    per_day = shop.config.users * shop.config.sessions_per_user_per_day
    target_ms = shop.world.start_ms + day * 86_400_000 - int(margin_sessions / per_day * 86_400_000)
    skipped = 0
    while True:
        obs = shop.reset()
        if int(obs.timestamp.value // 1_000_000) >= target_ms:
            return skipped
        skipped += 1


class ScoreSlatePolicy:
    """Top-``k`` candidates by ``score(env) -> [M]`` (the static baselines; random scores give the random
    policy). It never explores, so its greedy slate is its slate."""

    def __init__(self, name: str, score: Callable[[ShopPyEnvironment], np.ndarray]) -> None:
        self.name = name
        self._score = score

    def slate(self, env: ShopPyEnvironment, greedy: bool = False) -> np.ndarray:
        s = np.asarray(self._score(env), dtype=float)
        return np.argsort(-s, kind="stable")[: env.slate_size]


class SessionAgentSlatePolicy:
    """A DQN/PPO export (:class:`recflow.policy.candidate_networks.CandidatePolicy`) over the env's features."""

    def __init__(self, name: str, policy: Any) -> None:
        self.name = name
        self.policy = policy
        self._cache: tuple[Any, np.ndarray] | None = None

    def slate(self, env: ShopPyEnvironment, greedy: bool = False) -> np.ndarray:
        if self._cache is None or self._cache[0] is not env.observation:
            self._cache = (env.observation, self.policy.scores(env.features))
        return self.policy.slate_from_scores(self._cache[1], env.slate_size, greedy=greedy)


class BanditSlatePolicy:
    """A per-arm bandit (:class:`recflow.policy.scorer.PolicyScorer`) choosing among the candidates its catalog
    knows (items added later have no retrieval embedding; they only fill slots left over).

    Slots are filled as :meth:`PolicyScorer.choose` does (epsilon-greedy on the ranking scores; Thompson: one
    posterior draw); the request's scores are computed once and reused for the greedy slate.
    """

    def __init__(self, name: str, scorer: Any, user_embeddings: dict[str, np.ndarray], seed: int = 0) -> None:
        self.name = name
        self.scorer = scorer
        self.user_embeddings = user_embeddings
        self._known = set(map(str, scorer.item_ids))
        self._rng = np.random.default_rng(seed)
        self._cache: tuple[Any, np.ndarray, np.ndarray] | None = None

    def _scores(self, env: ShopPyEnvironment) -> tuple[np.ndarray, np.ndarray]:
        obs = env.observation
        assert obs is not None
        if self._cache is not None and self._cache[0] is obs:
            return self._cache[1], self._cache[2]
        ids = env.env.world.item_ids[env.candidate_items].astype(str)
        known = np.flatnonzero([i in self._known for i in ids])
        if known.size == 0:  # no candidate has a retrieval embedding: nothing to score, keep retrieval order
            self._cache = (obs, known, np.zeros((2, 0)))
            return self._cache[1], self._cache[2]
        context = {"hour": obs.hour, "weekday": obs.weekday, "device": obs.device}
        user = self.user_embeddings.get(obs.user_id)
        scores = self.scorer.scores(None if user is None else user[None, :], context, list(ids[known]), 1)
        rank = scores["rank"][0]
        if "std" in scores:  # Thompson sampling: one posterior draw ranks the slate
            rank = scores["mean"][0] + scores["std"][0] * self._rng.standard_normal(rank.shape)
        self._cache = (obs, known, np.stack([rank, scores["mean"][0]]))
        return known, self._cache[2]

    def slate(self, env: ShopPyEnvironment, greedy: bool = False) -> np.ndarray:
        from recflow.policy.candidate_networks import epsilon_greedy_slate

        known, ranks = self._scores(env)
        if known.size == 0:
            return np.arange(env.slate_size, dtype=np.int64)
        eps = 0.0 if greedy or self.scorer.exploration == "thompson" else self.scorer.epsilon
        rank = ranks[1] if greedy and self.scorer.exploration == "thompson" else ranks[0]
        chosen = known[epsilon_greedy_slate(rank, env.slate_size, eps, self._rng)[0]].tolist()
        rest = [j for j in range(len(env.candidate_items)) if j not in set(chosen)]
        return np.asarray(chosen + rest[: env.slate_size - len(chosen)], dtype=np.int64)
