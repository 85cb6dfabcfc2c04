"""The step-by-step environment: users arrive one session at a time and react to the slates a policy shows.

Used for reinforcement learning (many short episodes: one episode = one session) and, through
:meth:`ShopEnv.step_ids`, to drive simulated traffic against a recommender that speaks item id strings. The
world, the response model and the satiation dynamics are the generator's (:mod:`recflow.simulator.response`),
so a policy trained here faces the same shop that produced the logged data.

The env keeps a simulated clock: sessions arrive as a Poisson process following the daily hour profile
(``users x sessions_per_user_per_day`` sessions per simulated day), requests of a session take simulated time,
and satiation decays with it. Drift applies from ``drift.day`` on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recflow.errors import DataError
from recflow.simulator.config import SimulatorConfig
from recflow.simulator.generator import REQUEST_GAP_MEAN_S, REQUEST_GAP_S, SESSION_GAP_MS
from recflow.simulator.response import (
    SlateResponse,
    decay_satiation,
    events_frame,
    events_from_response,
    sample_response,
    satiation_increment,
)
from recflow.simulator.world import ENV_STREAM, HOUR_PROFILE, MS_PER_DAY, Context, World, _sigmoid, stream


@dataclass(frozen=True)
class Observation:
    """What a policy sees before choosing a slate: the user, the context and the candidate items."""

    user_idx: int
    user_id: str
    session_id: str
    request_index: int  # 0-based index of the request within the session
    day: int  # simulated day (0 = config.start_date)
    timestamp: pd.Timestamp
    hour: int
    weekday: int
    device: str
    region: str
    history: tuple[str, ...]  # the user's most recently clicked item ids, oldest first
    candidates: np.ndarray = field(repr=False)  # indices of the items available now

    def candidate_ids(self, world: World) -> list[str]:
        """The candidate item ids."""
        return world.item_ids[self.candidates].tolist()


@dataclass(frozen=True)
class StepResult:
    """The outcome of showing one slate."""

    observation: Observation  # the next request of the session (or the last one when done)
    reward: float
    done: bool
    events: pd.DataFrame | None  # the slate's events in the recflow events schema (None: record_events off)
    info: dict[str, float]  # expected_reward, oracle_expected_reward, regret, clicks, carts, purchases, ...


class ShopEnv:
    """A simulated shop to show slates to, one request at a time.

    ``ShopEnv(config, seed)``: the world is built from ``config.seed`` (the same shop as the generator's); the
    traffic (arrivals and reactions) is drawn from ``seed`` (default ``config.seed``). ``reset(seed=s)``
    starts over at day 0 with fresh state, so it is reproducible; ``reset()`` continues the clock and the
    users' satiation and histories. Ids of the events it emits start with ``id_prefix`` so they never
    collide with a generated log's.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        seed: int | None = None,
        world: World | None = None,
        id_prefix: str = "env-",
        record_events: bool = True,
    ) -> None:
        self.config = config
        #: Build each step's events table (about half of a step's cost; RL loops may switch it off).
        self.record_events = record_events
        self.world = world if world is not None else World(config)
        self.id_prefix = id_prefix
        self.reward_weights = (
            config.reward.click,
            config.reward.add_to_cart,
            config.reward.purchase,
            config.reward.revenue,
        )
        self._activity = self.world.user_activity / self.world.user_activity.sum()
        self._start_fresh(config.seed if seed is None else seed)

    # ------------------------------------------------------------------ state
    def _start_fresh(self, seed: int) -> None:
        w = self.world
        self._rng = stream(seed, ENV_STREAM)
        self._now = w.start_ms
        self._satiation = np.zeros((w.n_users, w.n_categories))
        self._last_ms = np.full(w.n_users, w.start_ms - MS_PER_DAY, dtype=np.int64)
        self._history: dict[int, deque[int]] = {}
        self._counters = {"session": 0, "request": 0, "event": 0}
        self._obs: Observation | None = None
        self._done = True

    @property
    def now(self) -> pd.Timestamp:
        """The simulated clock."""
        return pd.Timestamp(self._now, unit="ms", tz="UTC")

    @property
    def day(self) -> int:
        """The simulated day of the clock (0 = config.start_date)."""
        return int((self._now - self.world.start_ms) // MS_PER_DAY)

    @property
    def observation(self) -> Observation:
        """The current observation (after :meth:`reset`)."""
        if self._obs is None:
            raise RuntimeError("call reset() first")
        return self._obs

    def _next_arrival(self) -> int:
        """Advance to the next session start: a Poisson process with the hour profile (thinning)."""
        per_hour_max = self.config.users * self.config.sessions_per_user_per_day * HOUR_PROFILE.max()
        t = self._now
        while True:
            t += int(self._rng.exponential(1.0 / per_hour_max) * 3_600_000) + 1
            hour = (t // 3_600_000) % 24
            if self._rng.random() < HOUR_PROFILE[hour] / HOUR_PROFILE.max():
                return t

    def _observe(self, user: int, session: int, request_index: int, device: int, now: int) -> Observation:
        w = self.world
        day = int((now - w.start_ms) // MS_PER_DAY)
        history = self._history.get(user, ())
        return Observation(
            user_idx=user,
            user_id=str(w.user_ids[user]),
            session_id=f"{self.id_prefix}s{session:08d}",
            request_index=request_index,
            day=day,
            timestamp=pd.Timestamp(now, unit="ms", tz="UTC"),
            hour=int((now // 3_600_000) % 24),
            weekday=int((now // MS_PER_DAY + 3) % 7),
            device=self.config.devices[device],
            region=self.config.regions[int(w.user_region[user])],
            history=tuple(w.item_ids[list(history)].tolist()) if history else (),
            candidates=w.available_items(day),
        )

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int | None = None, user: int | str | None = None) -> Observation:
        """Start the next session (episode): a user arrives with a context.

        ``seed`` restarts the env from day 0 with that traffic seed; ``user`` (index or id) picks who arrives
        instead of drawing a user in proportion to activity.
        """
        if seed is not None:
            self._start_fresh(seed)
        w = self.world
        arrival = self._next_arrival()
        if user is None:
            u = int(self._rng.choice(w.n_users, p=self._activity))
        elif isinstance(user, str):
            matches = np.flatnonzero(w.user_ids == user)
            if len(matches) == 0:
                raise DataError(f"reset: unknown user id {user!r}")
            u = int(matches[0])
        else:
            if not 0 <= int(user) < w.n_users:
                raise DataError(f"reset: user index {user} is outside 0..{w.n_users - 1}")
            u = int(user)
        drawn = int(np.searchsorted(np.cumsum(w.user_device_mix[u]), self._rng.random(), side="right"))
        device = min(drawn, len(self.config.devices) - 1)
        self._now = max(arrival, int(self._last_ms[u]) + SESSION_GAP_MS)
        self._decay(u)
        session = self._counters["session"]
        self._counters["session"] += 1
        self._session = (u, session, device)
        self._obs = self._observe(u, session, 0, device, self._now)
        self._done = False
        return self._obs

    def _decay(self, user: int) -> None:
        elapsed = np.array([self._now - self._last_ms[user]])
        self._satiation[user] = decay_satiation(
            self._satiation[user][None, :], elapsed, self.config.satiation_half_life_hours
        )[0]
        self._last_ms[user] = self._now

    def _context(self, obs: Observation) -> Context:
        return Context.single(obs.hour, obs.weekday, self.config.devices.index(obs.device))

    def _check_slate(self, slate: Sequence[int] | np.ndarray) -> np.ndarray:
        obs = self.observation
        items = np.asarray(slate, dtype=np.int64).ravel()
        if not 1 <= len(items) <= self.config.slate_size:
            raise DataError(f"slate: expected 1..{self.config.slate_size} items, got {len(items)}")
        if len(set(items.tolist())) != len(items):
            raise DataError(f"slate: items must be distinct, got {items.tolist()}")
        w = self.world
        bad = (items < 0) | (items >= w.n_items)
        bad[~bad] = w.item_created_day[items[~bad]] > obs.day
        if bad.any():
            raise DataError(f"slate: item index {int(items[bad][0])} is not in the catalog on day {obs.day}")
        return items

    # ------------------------------------------------------------------ the oracle
    def _item_values(self, items: np.ndarray) -> np.ndarray:
        obs = self.observation
        return self.world.item_values(
            np.array([obs.user_idx]),
            items[None, :],
            self._context(obs),
            obs.day,
            self._satiation[obs.user_idx][None, :],
            self.reward_weights,
        )[0]

    def attraction_probabilities(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """The true P(click | examined) of ``items`` (item indices) for the current user now: context, day and
        satiation included, the position's examination left out. Ranking by it is the myopic click oracle."""
        obs = self.observation
        items = np.asarray(items, dtype=np.int64).ravel()
        logits = self.world.attraction_logits(
            np.array([obs.user_idx]), items[None, :], self._context(obs), obs.day,
            self._satiation[obs.user_idx][None, :],
        )[0]
        return _sigmoid(logits)

    def _slate_value(self, items: np.ndarray, values: np.ndarray) -> float:
        exam = self.world.examination(np.arange(len(items)), self.config.position_bias)
        return float((exam * values).sum())

    def expected_reward(self, slate: Sequence[int] | np.ndarray) -> float:
        """The true expected immediate reward of showing ``slate`` (item indices, best position first) now."""
        items = self._check_slate(slate)
        return self._slate_value(items, self._item_values(items))

    def _oracle(self, length: int) -> tuple[np.ndarray, float]:
        candidates = self.observation.candidates
        values = self._item_values(candidates)
        k = min(length, len(candidates))
        top = np.argpartition(-values, k - 1)[:k]
        top = top[np.argsort(-values[top], kind="stable")]
        return candidates[top], self._slate_value(candidates[top], values[top])

    def oracle_slate(self) -> np.ndarray:
        """The slate with the highest expected immediate reward under the true model (a myopic oracle).

        Reactions are independent across positions and examination falls with position, so the best slate is
        the items of highest expected value, in decreasing order.
        """
        return self._oracle(self.config.slate_size)[0]

    # ------------------------------------------------------------------ steps
    def _log_request(self, obs: Observation, slates: np.ndarray, props: np.ndarray | None, response: SlateResponse,
                     policy_id: str) -> pd.DataFrame | None:
        """Count the request and its events; the events as a frame when ``record_events``, else None."""
        w = self.world
        u = obs.user_idx
        request = self._counters["request"]
        self._counters["request"] += 1
        _, session, device = self._session
        cols = events_from_response(
            slates,
            props,
            response,
            np.array([self._now]),
            {
                "user": np.array([u]),
                "session": np.array([session]),
                "request": np.array([request]),
                "hour": np.array([obs.hour]),
                "weekday": np.array([obs.weekday]),
                "device": np.array([device]),
                "region": np.array([w.user_region[u]]),
            },
        )
        events = None
        if self.record_events:
            events = events_frame(
                w, cols, policy_id, id_prefix=self.id_prefix, first_event=self._counters["event"]
            )
        self._counters["event"] += len(cols["type"])
        return events

    def step(
        self,
        slate: Sequence[int] | np.ndarray,
        propensities: Sequence[float] | None = None,
        policy_id: str = "env-policy",
    ) -> StepResult:
        """Show ``slate`` (item indices, position 0 first) to the current user; sample the reaction."""
        if self._done:
            raise RuntimeError("the episode is over: call reset() to start the next session")
        items = self._check_slate(slate)
        obs = self.observation
        c, w = self.config, self.world
        u = obs.user_idx
        expected = self._slate_value(items, self._item_values(items))
        oracle = self._oracle(len(items))[1]
        context = self._context(obs)
        slates = items[None, :]
        response = sample_response(
            w, np.array([u]), slates, context, obs.day, self._satiation[u][None, :], self._rng
        )
        props = None
        if propensities is not None:
            props = np.asarray(propensities, dtype=float).reshape(1, -1)
            if props.shape != slates.shape:
                raise DataError(f"propensities: expected {len(items)} values, got {props.size}")
        _, session, device = self._session
        events = self._log_request(obs, slates, props, response, policy_id)

        self._satiation[u] += satiation_increment(w, slates, response)[0]
        clicked = items[response.click[0]]
        if len(clicked):
            hist = self._history.setdefault(u, deque(maxlen=c.history_length))
            hist.extend(int(i) for i in clicked)
        n_click, n_cart = int(response.click.sum()), int(response.cart.sum())
        n_buy = int(response.purchase.sum())
        order_value = float((response.price * response.quantity).sum())
        wc, wa, wb, wr = self.reward_weights
        reward = wc * n_click + wa * n_cart + wb * n_buy + wr * order_value
        p_continue = c.continue_after_click if n_click else c.continue_probability
        done = bool(self._rng.random() >= p_continue or obs.request_index + 1 >= c.max_requests_per_session)
        gap_s = (
            REQUEST_GAP_S
            + self._rng.exponential(REQUEST_GAP_MEAN_S)
            + float(response.dwell_s[response.click].sum())
        )
        self._now += int(gap_s * 1000)
        self._last_ms[u] = self._now
        self._done = done
        if not done:
            self._obs = self._observe(u, session, obs.request_index + 1, device, self._now)
        info = {
            "expected_reward": expected,
            "oracle_expected_reward": oracle,
            "regret": oracle - expected,
            "clicks": float(n_click),
            "carts": float(n_cart),
            "purchases": float(n_buy),
            "order_value": order_value,
        }
        return StepResult(self.observation, float(reward), done, events, info)

    def step_ids(
        self,
        item_ids: Sequence[str],
        propensities: Sequence[float] | None = None,
        policy_id: str = "env-policy",
    ) -> StepResult:
        """:meth:`step` with a slate of item id strings (e.g. the response of an HTTP recommender)."""
        try:
            items = self.world.item_index(list(item_ids))
        except KeyError as exc:
            raise DataError(f"slate: {exc.args[0]}") from None
        return self.step(items, propensities, policy_id)
