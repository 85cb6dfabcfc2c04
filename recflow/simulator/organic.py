"""The ``organic`` world preset: a shop whose log is mostly organic product views, plus recommendations that
were shown uniformly at random (about 1% clicks), and whose online users are new people who arrive with their own
view history.

It is built in the style of RecoGym (Rohde et al. 2018) from the paper's description: a user alternates organic
browsing (a Markov chain over products driven by a user latent and product embeddings) and recommendations (the
shown product is clicked with a probability that depends on the same user latent and a related but not identical
product embedding). The model, its parameters and what each stands for are in docs/simulator.md
("The organic-views world").

* :class:`OrganicWorld`: the latent ground truth (embeddings, popularity, the calibrated click intercept).
* :func:`simulate_organic_log` / :func:`generate_organic_dataset`: the batch log of the training users
  (``recflow data generate --world organic``).
* :class:`OrganicShop`: the online environment over NEW users (a random stream disjoint from the training
  users'): ``new_user()``, ``show(user, slate)`` with sampled clicks and the true click probabilities.
* :func:`measure_headroom`: true CTR of random, most-viewed, most-recent and oracle recommendations on new users
  (``python -m recflow.simulator.organic``).

Random streams (``SeedSequence(seed, spawn_key=key)``): ``(10,)`` the world, ``(11, u, s)`` training user ``u``
and ``(12, u, s)`` online user ``u``, with sub-stream ``s`` 0 for browsing, 1 for the logging policy and 2 for
clicks. A user's browsing never reads the click or logging streams, so every policy served to online user ``u``
meets the same views at the same times (common random numbers), and a user's log does not depend on how many
users are generated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recflow.errors import DataError
from recflow.io import atomic_path, write_dataset
from recflow.schema import SCHEMA_VERSION
from recflow.simulator.config import OrganicConfig, SimulatorConfig
from recflow.simulator.world import MS_PER_DAY, _sigmoid, _solve_intercept, stream

if TYPE_CHECKING:
    from recflow.simulator.generator import GenerationSummary

#: Spawn keys of the organic world's random streams (the default world uses 0-3).
ORGANIC_WORLD_STREAM, ORGANIC_TRAINING_STREAM, ORGANIC_ONLINE_STREAM = 10, 11, 12
#: Spawn key of the history-Bayes ceiling's particle filters (:class:`HistoryPosterior`), one per online user.
ORGANIC_POSTERIOR_STREAM = 13
#: Sub-streams of one user.
BROWSE, LOGGING, CLICKS = 0, 1, 2
#: Seconds between the end of a product view's dwell and the next page; a click is logged this long after
#: its impression; a recommendation takes this fixed time plus an exponential part before the next one.
VIEW_GAP_S, CLICK_DELAY_S, REC_GAP_S, REC_GAP_MEAN_S = 5.0, 2.0, 10.0, 20.0
#: Random (user latent, product) pairs used to calibrate the click intercept.
CALIBRATION_USERS = 20_000
DEFAULT_START_DATE = "2026-01-05"


class OrganicWorld:
    """Products and the true organic and click models of one organic-views shop, drawn from (config, seed)."""

    def __init__(self, config: OrganicConfig, seed: int, start_date: str = DEFAULT_START_DATE) -> None:
        self.config = c = config
        self.seed = seed
        self.start_ms = int(pd.Timestamp(start_date, tz="UTC").value // 1_000_000)
        rng = stream(seed, ORGANIC_WORLD_STREAM)
        n, d = c.items, c.latent_dim
        self.n_items = n
        #: e_j: organic (browsing) embeddings; b_j: click embeddings, related to e_j but not identical.
        self.organic_embedding = rng.normal(0.0, 1.0, size=(n, d))
        rho = c.click_embedding_noise
        self.click_embedding = math.sqrt(1.0 - rho * rho) * self.organic_embedding + rho * rng.normal(
            0.0, 1.0, size=(n, d)
        )
        self.organic_bias = rng.normal(0.0, c.organic_popularity, size=n)
        self.click_bias = rng.normal(0.0, c.click_popularity, size=n)
        unit = self.organic_embedding / np.linalg.norm(self.organic_embedding, axis=1, keepdims=True)
        #: cos(e_i, e_j): what makes the next view resemble the previous one.
        self.coview = unit @ unit.T
        self.price = np.maximum(np.round(np.exp(rng.normal(np.log(30.0), 0.8, size=n))) - 0.01, 0.99)
        self.item_created_ms = self.start_ms - (rng.uniform(1.0, 365.0, size=n) * MS_PER_DAY).astype(np.int64)
        latents = rng.normal(0.0, 1.0, size=(CALIBRATION_USERS, d))
        x = (c.click_weight * latents @ self.click_embedding.T / math.sqrt(d) + self.click_bias).ravel()
        #: c0: the mean first-slot P(click) of a uniformly random product for a random user is click_rate.
        self.click_intercept = _solve_intercept(x, np.ones(len(x)), c.click_rate)
        self.item_ids = np.array([f"i{i:06d}" for i in range(n)], dtype=object)
        self._item_index = {item_id: i for i, item_id in enumerate(self.item_ids)}

    def item_index(self, item_ids: Sequence[str]) -> np.ndarray:
        """Product indices of item ids; a DataError names the first unknown id."""
        try:
            return np.array([self._item_index[i] for i in item_ids], dtype=np.int64)
        except KeyError as exc:
            raise DataError(
                f"organic world: unknown item id {exc.args[0]!r} (the catalog is {self.item_ids[0]} .. "
                f"{self.item_ids[-1]})"
            ) from None

    def organic_logits(self, latent: np.ndarray) -> np.ndarray:
        """alpha (w . e_j) / sqrt(d) + mu_j for every product: the browsing logits before the co-view term."""
        c = self.config
        affinity = self.organic_embedding @ latent / math.sqrt(c.latent_dim)
        return c.organic_weight * affinity + self.organic_bias

    def click_probabilities(self, latent: np.ndarray, items: np.ndarray) -> np.ndarray:
        """True P(click) of products ``items`` shown in slots 0..K-1 to a user with latent ``latent``."""
        c = self.config
        items = np.asarray(items, dtype=np.int64)
        logit = (
            self.click_intercept
            + c.click_weight * self.click_embedding[items] @ latent / math.sqrt(c.latent_dim)
            + self.click_bias[items]
        )
        examination = (np.arange(len(items), dtype=float) + 1.0) ** -c.position_bias
        return examination * _sigmoid(logit)

    def first_slot_probabilities(self, latent: np.ndarray) -> np.ndarray:
        """True P(click) of every product if shown alone (slot 0) to a user with latent ``latent``."""
        return _sigmoid(
            self.click_intercept
            + self.config.click_weight * self.click_embedding @ latent / math.sqrt(self.config.latent_dim)
            + self.click_bias
        )

    def items_frame(self) -> pd.DataFrame:
        """The catalog in the recflow ``items`` schema."""
        return pd.DataFrame(
            {
                "item_id": self.item_ids,
                "price": self.price,
                "created_at": pd.to_datetime(self.item_created_ms, unit="ms", utc=True),
            }
        )


@dataclass(frozen=True)
class Visit:
    """One visit of a user: its organic views, then the times at which recommendations are shown."""

    views: list[tuple[int, int, float]]  # (product, timestamp ms, dwell s)
    recommendation_ms: list[int]
    last: bool  # the user leaves after this visit


class _Browsing:
    """One user's browsing process. It reads only the user's browsing stream: what is recommended, and whether
    it is clicked, never changes the views, their times or when the user leaves."""

    def __init__(self, world: OrganicWorld, rng: np.random.Generator, window_start_ms: int) -> None:
        c = world.config
        self.world, self.rng = world, rng
        self.latent = rng.normal(0.0, 1.0, size=c.latent_dim)
        self.clock = window_start_ms + int(rng.random() * c.days * MS_PER_DAY)
        self.visits = 0

    def next_visit(self) -> Visit:
        c, rng, world = self.world.config, self.rng, self.world
        if self.visits > 0:
            self.clock += int(rng.exponential(c.visit_gap_hours) * 3_600_000)
            delta = c.taste_drift
            self.latent = math.sqrt(1.0 - delta * delta) * self.latent + delta * rng.normal(
                0.0, 1.0, size=c.latent_dim
            )
        self.visits += 1
        base = world.organic_logits(self.latent)
        views: list[tuple[int, int, float]] = []
        previous = -1
        for _ in range(int(rng.geometric(1.0 / c.views_per_session))):
            logits = base if previous < 0 else base + c.coview_weight * world.coview[previous]
            weights = np.exp(logits - logits.max())
            cum = np.cumsum(weights)
            item = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), world.n_items - 1)
            dwell = float(np.exp(np.log(c.dwell_median_s) + 0.6 * rng.standard_normal()))
            views.append((item, self.clock, round(dwell, 3)))
            self.clock += int((dwell + VIEW_GAP_S) * 1000)
            previous = item
        shown: list[int] = []
        for _ in range(int(rng.geometric(1.0 / c.recommendations_per_visit))):
            shown.append(self.clock)
            self.clock += int((REC_GAP_S + rng.exponential(REC_GAP_MEAN_S)) * 1000)
        last = bool(rng.random() < 1.0 / c.visits_per_user)
        return Visit(views, shown, last)


def _organic_config(config: OrganicConfig | SimulatorConfig) -> tuple[OrganicConfig, int | None, str]:
    if isinstance(config, SimulatorConfig):
        return config.organic, config.seed, config.start_date
    return config, None, DEFAULT_START_DATE


# ---------------------------------------------------------------------------------------------- batch log
@dataclass
class OrganicLog:
    """An in-memory organic-world log of the training users."""

    world: OrganicWorld
    events: pd.DataFrame
    users_table: pd.DataFrame
    sessions: int
    requests: int

    def items(self) -> pd.DataFrame:
        """The catalog table."""
        return self.world.items_frame()

    def users(self) -> pd.DataFrame:
        """The users table."""
        return self.users_table


_VIEW, _IMPRESSION, _CLICK = 0, 1, 2
_TYPE_NAMES = np.array(["view", "impression", "click"], dtype=object)


def simulate_organic_log(
    config: OrganicConfig | SimulatorConfig, seed: int | None = None, start_date: str | None = None
) -> OrganicLog:
    """Simulate the training users of the organic world (views and uniformly random logged recommendations).

    ``config`` is the ``organic`` section (or a whole simulator config, whose seed and start_date are then the
    defaults); the same (config, seed, start_date) gives the same log.
    """
    organic, cfg_seed, cfg_start = _organic_config(config)
    seed = cfg_seed if seed is None else seed
    if seed is None:
        raise ValueError("simulate_organic_log: pass a seed (or a SimulatorConfig, whose seed is used)")
    start_date = start_date or cfg_start
    world = OrganicWorld(organic, seed, start_date)
    n, k = world.n_items, organic.slate_size
    names = ("type", "ms", "user", "item", "session", "request", "pos", "dwell")
    cols: dict[str, list] = {name: [] for name in names}
    first_ms: list[int] = []
    sessions = requests = 0

    def add(
        kind: int, ms: int, user: int, item: int, session: int, request: int, pos: int, dwell: float
    ) -> None:
        for name, value in zip(cols, (kind, ms, user, item, session, request, pos, dwell), strict=True):
            cols[name].append(value)

    for u in range(organic.users):
        browse = _Browsing(world, stream(seed, ORGANIC_TRAINING_STREAM, u, BROWSE), world.start_ms)
        logging_rng = stream(seed, ORGANIC_TRAINING_STREAM, u, LOGGING)
        click_rng = stream(seed, ORGANIC_TRAINING_STREAM, u, CLICKS)
        first_ms.append(browse.clock)
        while True:
            visit = browse.next_visit()
            for item, ms, dwell in visit.views:
                add(_VIEW, ms, u, item, sessions, -1, -1, dwell)
            for ms in visit.recommendation_ms:
                slate = logging_rng.permutation(n)[:k]  # uniformly random: P(item j in slot s) = 1/n
                clicks = click_rng.random(k) < world.click_probabilities(browse.latent, slate)
                for pos, item in enumerate(slate.tolist()):
                    add(_IMPRESSION, ms, u, item, sessions, requests, pos, math.nan)
                for pos in np.flatnonzero(clicks).tolist():
                    click_ms = ms + int(CLICK_DELAY_S * 1000)
                    add(_CLICK, click_ms, u, int(slate[pos]), sessions, requests, pos, math.nan)
                requests += 1
            sessions += 1
            if visit.last:
                break
    events = _events_frame(world, {name: np.asarray(values) for name, values in cols.items()})
    user_ids = np.array([f"u{i:06d}" for i in range(organic.users)], dtype=object)
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "signup_at": pd.to_datetime(np.asarray(first_ms, dtype=np.int64), unit="ms", utc=True),
        }
    )
    return OrganicLog(world, events, users, sessions, requests)


def _where_recommended(is_rec: np.ndarray, policy_id: str) -> np.ndarray:
    """``policy_id`` on the recommended events, None on the organic ones (an object array)."""
    out = np.full(len(is_rec), None, dtype=object)
    out[is_rec] = policy_id
    return out


def _events_frame(world: OrganicWorld, col: dict[str, np.ndarray]) -> pd.DataFrame:
    order = np.lexsort((np.arange(len(col["ms"])), col["ms"]))
    col = {name: values[order] for name, values in col.items()}
    n = len(order)
    is_rec = col["request"] >= 0
    timestamp = pd.to_datetime(col["ms"], unit="ms", utc=True)
    return pd.DataFrame(
        {
            "event_id": np.array([f"e{i:010d}" for i in range(n)], dtype=object),
            "event_type": _TYPE_NAMES[col["type"]],
            "timestamp": timestamp,
            "user_id": np.array([f"u{i:06d}" for i in col["user"].tolist()], dtype=object),
            "item_id": world.item_ids[col["item"]],
            "session_id": np.array([f"s{i:08d}" for i in col["session"].tolist()], dtype=object),
            "request_id": np.array(
                [f"r{r:09d}" if r >= 0 else None for r in col["request"].tolist()], dtype=object
            ),
            "position": pd.arrays.IntegerArray(
                np.where(is_rec, col["pos"], 0).astype(np.int32), ~is_rec
            ),
            "price": world.price[col["item"]],
            "dwell_time_s": np.where(col["type"] == _VIEW, col["dwell"], np.nan),
            "hour": timestamp.hour.to_numpy().astype(np.int8),
            "weekday": timestamp.weekday.to_numpy().astype(np.int8),
            "policy_id": _where_recommended(is_rec, world.config.policy_id),
            "propensity": np.where(is_rec, 1.0 / world.n_items, np.nan),
        }
    )


def generate_organic_dataset(
    config: SimulatorConfig, out_dir: Path, progress: bool = False
) -> GenerationSummary:
    """Simulate the organic world of ``config`` (its ``organic`` section, seed and start_date); write events,
    items, users (Parquet) and simulator.json into ``out_dir``; return the GenerationSummary."""
    from recflow.simulator.generator import summarize_counts

    del progress  # a thousand users take about a second; there is no progress bar to show
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: output path exists and is not a directory")
    log = simulate_organic_log(config)
    written = write_dataset(out_dir, events=log.events, items=log.items(), users=log.users())
    files = {kind: path.name for kind, path in written.items()}
    summary = summarize_counts(
        log.events,
        users=config.organic.users,
        items=log.world.n_items,
        days=config.organic.days,
        sessions=log.sessions,
        requests=log.requests,
        seconds=time.perf_counter() - started,
        out_dir=out_dir,
        files=files,
    )
    meta = {
        "generator": "recflow.simulator.organic",
        "world": "organic",
        "schema_version": SCHEMA_VERSION,
        "policy_id": config.organic.policy_id,
        "config": config.model_dump(mode="json"),
        "summary": summary.to_dict(),
    }
    with atomic_path(out_dir / "simulator.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return summary


# ---------------------------------------------------------------------------------------------- online
def _iso(ms: int) -> str:
    text = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class SlateFeedback:
    """What happened when a slate was shown: sampled clicks and the true click probabilities, slot by slot."""

    user_id: str
    request_id: str
    slate: tuple[str, ...]
    clicks: tuple[bool, ...]
    probabilities: tuple[float, ...]
    timestamp: str

    @property
    def n_clicks(self) -> int:
        """Sampled clicks on the slate."""
        return sum(self.clicks)

    @property
    def expected_clicks(self) -> float:
        """Expected clicks (the sum of the true click probabilities): less noisy than the sampled clicks."""
        return float(sum(self.probabilities))


@dataclass
class OrganicUser:
    """A new (online) user of the organic shop.

    ``history``: the user's events so far, oldest first, as dicts ``{item_id, event_type, timestamp}``
    (event_type ``view`` for organic browsing, ``click`` for clicked recommendations; timestamp ISO 8601 UTC),
    the shape serving's request ``history`` takes. It grows after every :meth:`OrganicShop.show` with the
    clicks and, when the visit ends, the views of the user's next visit. ``done``: the user has left.
    """

    user_id: str
    index: int
    history: list[dict[str, str]] = field(default_factory=list)
    done: bool = False
    recommendations: int = 0
    _browsing: _Browsing | None = field(default=None, repr=False)
    _click_rng: np.random.Generator | None = field(default=None, repr=False)
    _pending_ms: list[int] = field(default_factory=list, repr=False)
    _last_visit: bool = field(default=False, repr=False)

    def viewed_items(self) -> list[str]:
        """Item ids of the user's organic views so far, oldest first."""
        return [e["item_id"] for e in self.history if e["event_type"] == "view"]

    @property
    def latent(self) -> np.ndarray:
        """The user's current latent taste (ground truth; for oracles and analysis, not for recommenders)."""
        assert self._browsing is not None
        return self._browsing.latent.copy()


class OrganicShop:
    """The online organic-views shop: new users, unseen at training time, who arrive having browsed.

    ``OrganicShop(config, seed)`` with ``config`` the ``organic`` section (or a whole simulator config, whose
    seed and start_date are the defaults) builds the same world as :func:`simulate_organic_log` with that seed;
    its users come from another random stream (ids ``n000000``...; training users are ``u000000``...) and their
    first visits start in the ``days`` window right after the training window. ``user(k)`` is the same user for
    the same (config, seed, k) whatever was shown to others, and with the same views whatever is shown to them.
    """

    def __init__(
        self, config: OrganicConfig | SimulatorConfig, seed: int | None = None, start_date: str | None = None
    ) -> None:
        organic, cfg_seed, cfg_start = _organic_config(config)
        seed = cfg_seed if seed is None else seed
        if seed is None:
            raise ValueError("OrganicShop: pass a seed (or a SimulatorConfig, whose seed is used)")
        self.config = organic
        self.seed = seed
        self.world = OrganicWorld(organic, seed, start_date or cfg_start)
        self._next_user = 0
        self._requests = 0

    @property
    def item_ids(self) -> list[str]:
        """The catalog's item ids."""
        return self.world.item_ids.tolist()

    def new_user(self) -> OrganicUser:
        """The next new user (user 0, 1, 2, ... of this shop), after the organic views of their first visit."""
        user = self.user(self._next_user)
        self._next_user += 1
        return user

    def user(self, index: int) -> OrganicUser:
        """New user ``index``, after the organic views of their first visit (deterministic per index)."""
        if index < 0:
            raise ValueError(f"user index must be >= 0, got {index}")
        window = self.world.start_ms + self.config.days * MS_PER_DAY
        browsing = _Browsing(self.world, stream(self.seed, ORGANIC_ONLINE_STREAM, index, BROWSE), window)
        user = OrganicUser(
            f"n{index:06d}", index, _browsing=browsing,
            _click_rng=stream(self.seed, ORGANIC_ONLINE_STREAM, index, CLICKS),
        )
        self._start_visit(user)
        return user

    def _start_visit(self, user: OrganicUser) -> None:
        assert user._browsing is not None
        visit = user._browsing.next_visit()
        ids = self.world.item_ids
        user.history.extend(
            {"item_id": str(ids[item]), "event_type": "view", "timestamp": _iso(ms)}
            for item, ms, _ in visit.views
        )
        user._pending_ms = list(visit.recommendation_ms)
        user._last_visit = visit.last

    def click_probabilities(self, user: OrganicUser, slate: Sequence[str]) -> np.ndarray:
        """True P(click) of each item of ``slate`` in its slot, for the user now (nothing is sampled)."""
        return self.world.click_probabilities(user.latent, self.world.item_index(list(slate)))

    def show(self, user: OrganicUser, slate: Sequence[str]) -> SlateFeedback:
        """Show ``slate`` (distinct item ids, best first) to ``user``: sample clicks, record them in the
        history, then move the user on (another recommendation in this visit, their next visit's views, or
        leaving)."""
        if user.done:
            raise ValueError(f"user {user.user_id} has left the shop; draw a new_user()")
        slate = [str(s) for s in slate]
        if not slate:
            raise DataError(f"slate for user {user.user_id} is empty")
        if len(set(slate)) != len(slate):
            raise DataError(f"slate for user {user.user_id} repeats an item: {slate}")
        probabilities = self.click_probabilities(user, slate)
        assert user._click_rng is not None
        clicks = user._click_rng.random(len(slate)) < probabilities
        ms = user._pending_ms.pop(0)
        request_id = f"{user.user_id}-r{user.recommendations:04d}"
        user.recommendations += 1
        self._requests += 1
        user.history.extend(
            {"item_id": item, "event_type": "click", "timestamp": _iso(ms + int(CLICK_DELAY_S * 1000))}
            for item, hit in zip(slate, clicks, strict=True) if hit
        )
        if not user._pending_ms:
            if user._last_visit:
                user.done = True
            else:
                self._start_visit(user)
        return SlateFeedback(
            user.user_id, request_id, tuple(slate), tuple(bool(c) for c in clicks),
            tuple(float(p) for p in probabilities), _iso(ms),
        )


# ---------------------------------------------------------------------------------------------- headroom
class HistoryPosterior:
    """The Bayes posterior over one online user's latent taste given what their history shows, under the TRUE
    world model (a particle filter): the best any recommender can know about the user from their requests.

    It starts from the prior ``w ~ N(0, I_d)`` (``particles`` draws from ``rng``) and is updated, in the order
    the user's events happen, with :meth:`observe_views` (one visit's organic views: the browsing chain's
    likelihood, co-view term included), :meth:`observe_feedback` (the clicked and unclicked slots of a shown
    slate) and :meth:`next_visit` (the taste drift between visits, applied to every particle). It resamples
    (systematically) when the effective sample size falls under half the particles.
    :meth:`expected_click_probabilities` averages every product's true first-slot P(click) over the posterior.
    """

    def __init__(self, world: OrganicWorld, rng: np.random.Generator, particles: int = 4000) -> None:
        if particles < 1:
            raise ValueError(f"particles must be >= 1, got {particles}")
        self.world, self.rng = world, rng
        self.latents = rng.normal(0.0, 1.0, size=(particles, world.config.latent_dim))
        self.log_weights = np.zeros(particles)

    def _normalized(self) -> np.ndarray:
        w = np.exp(self.log_weights - self.log_weights.max())
        return w / w.sum()

    def _resample_if_degenerate(self) -> None:
        w = self._normalized()
        n = len(w)
        if 1.0 / float(np.sum(w * w)) >= 0.5 * n:
            return
        positions = (self.rng.random() + np.arange(n)) / n
        index = np.minimum(np.searchsorted(np.cumsum(w), positions, side="right"), n - 1)
        self.latents = self.latents[index]
        self.log_weights = np.zeros(n)

    def observe_views(self, items: Sequence[int]) -> None:
        """One visit's organic views, in order (the first without the co-view term, as the chain starts)."""
        world, c = self.world, self.world.config
        base = (c.organic_weight / math.sqrt(c.latent_dim)) * self.latents @ world.organic_embedding.T
        base += world.organic_bias
        previous = -1
        for item in items:
            logits = base if previous < 0 else base + c.coview_weight * world.coview[previous]
            top = logits.max(axis=1, keepdims=True)
            log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            self.log_weights += logits[:, item] - log_norm
            previous = int(item)
        self._resample_if_degenerate()

    def observe_feedback(self, items: Sequence[int], clicks: Sequence[bool]) -> None:
        """A shown slate (products in slots 0..K-1) and which slots were clicked."""
        c = self.world.config
        for slot, (item, clicked) in enumerate(zip(items, clicks, strict=True)):
            p = (slot + 1.0) ** -c.position_bias * _sigmoid(
                self.world.click_intercept
                + (c.click_weight / math.sqrt(c.latent_dim)) * self.latents @ self.world.click_embedding[item]
                + self.world.click_bias[item]
            )
            self.log_weights += np.log(np.clip(p if clicked else 1.0 - p, 1e-300, None))
        self._resample_if_degenerate()

    def next_visit(self) -> None:
        """The taste drift before a new visit: w' = sqrt(1 - delta^2) w + delta n, for every particle."""
        delta = self.world.config.taste_drift
        noise = self.rng.normal(0.0, 1.0, size=self.latents.shape)
        self.latents = math.sqrt(1.0 - delta * delta) * self.latents + delta * noise

    def expected_click_probabilities(self) -> np.ndarray:
        """E[P(click) of each product in slot 0 | the history so far]."""
        c, world = self.world.config, self.world
        x = world.click_intercept + (c.click_weight / math.sqrt(c.latent_dim)) * (
            self.latents @ world.click_embedding.T
        ) + world.click_bias
        return self._normalized() @ _sigmoid(x)


def history_bayes_slate(posterior: HistoryPosterior, k: int) -> np.ndarray:
    """The ``k`` products of highest posterior expected click probability, best first (stable ties)."""
    return np.argsort(-posterior.expected_click_probabilities(), kind="stable")[:k]


class HistoryBayesRecommender:
    """Serves one :class:`OrganicShop`'s users by the posterior of their history (:class:`HistoryPosterior`):
    the ceiling of what a recommender that sees only the user's requests can earn in this world, because it
    knows the true browsing and click models that a learner must estimate from the training log.

    Call :meth:`slate` before each ``shop.show(user, slate)`` and :meth:`feedback` with what ``show`` returned
    (or never, to use the views alone); it reads only the user's history and the feedback, never
    ``user.latent``. Each user gets a posterior from its own random
    stream (``(13, user index)``), so results do not depend on the order users are served in.
    """

    def __init__(self, shop: OrganicShop, particles: int = 4000) -> None:
        self.shop, self.particles = shop, particles
        self._posteriors: dict[str, tuple[HistoryPosterior, int]] = {}

    def slate(self, user: OrganicUser, k: int = 1) -> list[str]:
        """The best ``k`` products for ``user`` now, after reading the history events it has not yet seen."""
        world = self.shop.world
        if user.user_id not in self._posteriors:
            rng = stream(self.shop.seed, ORGANIC_POSTERIOR_STREAM, user.index)
            self._posteriors[user.user_id] = (HistoryPosterior(world, rng, self.particles), 0)
        posterior, seen = self._posteriors[user.user_id]
        views = [e["item_id"] for e in user.history[seen:] if e["event_type"] == "view"]
        if views:  # a visit's views arrive together, after the previous visit's feedback
            if seen > 0:
                posterior.next_visit()
            posterior.observe_views(world.item_index(views).tolist())
        self._posteriors[user.user_id] = (posterior, len(user.history))
        return [str(i) for i in world.item_ids[history_bayes_slate(posterior, k)]]

    def feedback(self, fb: SlateFeedback) -> None:
        """Update the posterior of ``fb.user_id`` with the clicks on the slate just shown to them (the drift to
        their next visit, if one started, comes with the next :meth:`slate`)."""
        if fb.user_id not in self._posteriors:
            raise ValueError(f"feedback for user {fb.user_id}, who was never served a slate() by this recommender")
        posterior, seen = self._posteriors[fb.user_id]
        posterior.observe_feedback(self.shop.world.item_index(list(fb.slate)).tolist(), fb.clicks)
        # The clicks were appended to the history; skip them (the next visit's views, if any, follow them).
        self._posteriors[fb.user_id] = (posterior, seen + fb.n_clicks)

    def forget(self, user: OrganicUser) -> None:
        """Drop a user's posterior (once they have left)."""
        self._posteriors.pop(user.user_id, None)


@dataclass(frozen=True)
class Headroom:
    """Mean true first-slot CTR per recommendation of simple rules on new users (one seed)."""

    seed: int
    users: int
    recommendations: int
    random: float
    most_viewed: float
    most_recent: float
    oracle: float
    history_bayes: float

    def ratios(self) -> dict[str, float]:
        """Each rule's CTR over random's."""
        return {
            name: getattr(self, name) / self.random
            for name in ("most_viewed", "most_recent", "history_bayes", "oracle")
        }


def most_viewed_item(views: Sequence[str]) -> str:
    """The item viewed most often; ties go to the one viewed most recently."""
    counts: dict[str, int] = {}
    last: dict[str, int] = {}
    for t, item in enumerate(views):
        counts[item] = counts.get(item, 0) + 1
        last[item] = t
    return max(counts, key=lambda i: (counts[i], last[i]))


def measure_headroom(config: OrganicConfig, seed: int, users: int = 2000, particles: int = 4000) -> Headroom:
    """Serve ``users`` new users of ``OrganicShop(config, seed)`` until they leave, one item per slate, and
    average the true click probability of: a uniformly random item (its exact expectation), the user's
    most-viewed item, their most recent view, the history-Bayes pick (the highest posterior expected click
    probability given the user's views under the true model, :class:`HistoryPosterior` with ``particles``; here
    it reads the views only, as the shown items are the oracle's) and the oracle (the item with the highest true
    probability). The oracle's item is the one shown (the users' views do not depend on it)."""
    shop = OrganicShop(config, seed)
    bayes = HistoryBayesRecommender(shop, particles)
    all_items = shop.item_ids
    totals = np.zeros(5)
    n = 0
    for _ in range(users):
        user = shop.new_user()
        while not user.done:
            views = user.viewed_items()
            first_slot = shop.world.first_slot_probabilities(user.latent)
            picks = (
                float(first_slot.mean()),
                float(first_slot[shop.world.item_index([most_viewed_item(views)])[0]]),
                float(first_slot[shop.world.item_index([views[-1]])[0]]),
                float(first_slot.max()),
                float(first_slot[shop.world.item_index(bayes.slate(user))[0]]),
            )
            totals += picks
            n += 1
            shop.show(user, [all_items[int(first_slot.argmax())]])
        bayes.forget(user)
    mean = totals / max(n, 1)
    return Headroom(seed, users, n, *(float(v) for v in mean))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recflow.simulator.organic [--items N] [--users U] [--seeds S ...]``: headroom as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--items", type=int, default=OrganicConfig().items)
    parser.add_argument("--users", type=int, default=2000, help="new users per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--particles", type=int, default=4000, help="particles of the history-Bayes posterior")
    args = parser.parse_args(argv)
    config = OrganicConfig(items=args.items)
    rows = []
    for seed in args.seeds:
        h = measure_headroom(config, seed, args.users, args.particles)
        rows.append({**h.__dict__, "ratios_to_random": {k: round(v, 3) for k, v in h.ratios().items()}})
    result = {"command": "python -m recflow.simulator.organic", "items": args.items, "runs": rows}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
