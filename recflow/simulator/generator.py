"""The batch log generator: simulate days of shop traffic under the logging policy and write the data set.

Each day is generated in vectorised batches: all sessions of the day are drawn at once; sessions are processed
in rounds (the r-th session of every user of that day together, so a user's satiation carries from one session
to the next) and each round in steps (request j of every still-active session together). Each day has its own
random stream (a SeedSequence spawn key), so a day's traffic does not depend on how many days are generated.

:func:`generate_dataset` streams: each simulated day is converted and appended to ``events.parquet`` as row
groups and dropped, so memory does not grow with the number of days (docs/simulator.md, "At scale").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recflow.errors import DataError
from recflow.io import atomic_path, to_arrow, write_dataset
from recflow.schema import EVENT_TYPES, FILE_NAMES, SCHEMA_VERSION
from recflow.simulator.config import SimulatorConfig
from recflow.simulator.logging_policy import LoggingPolicy
from recflow.simulator.response import (
    decay_satiation,
    events_frame,
    events_from_response,
    sample_response,
    satiation_increment,
)
from recflow.simulator.world import HOUR_PROFILE, MS_PER_DAY, TRAFFIC_STREAM, Context, World, stream

#: Pause between two requests of a session: this fixed part plus an exponential part plus the dwell of clicks.
REQUEST_GAP_S, REQUEST_GAP_MEAN_S = 15.0, 30.0
#: A user's next session starts at least this long after the previous one ended.
SESSION_GAP_MS = 60_000
#: Streaming generation converts and writes at most this many events at a time (one Parquet row group each).
ROW_GROUP_EVENTS = 500_000


@dataclass(frozen=True)
class GenerationSummary:
    """What a generation run produced (counts and funnel rates measured on the generated log)."""

    events: int
    counts: dict[str, int]
    users: int
    items: int
    days: int
    sessions: int
    requests: int
    click_through_rate: float
    conversion_rate: float
    cart_rate: float
    purchase_rate: float
    seconds: float
    out_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        """A short human-readable summary."""
        counts = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        where = f" -> {self.out_dir}" if self.out_dir else ""
        return "\n".join(
            [
                f"generated {self.events:,} events in {self.seconds:.1f} s{where}",
                f"  {self.users:,} users, {self.items:,} items, {self.days} days, "
                f"{self.sessions:,} sessions, "
                f"{self.requests:,} slates",
                f"  {counts}",
                f"  click-through rate {self.click_through_rate:.2%}, "
                f"add-to-cart per click {self.cart_rate:.1%}, "
                f"purchase per cart {self.purchase_rate:.1%}, conversion (purchase per click) "
                f"{self.conversion_rate:.2%}",
            ]
        )

    def to_dict(self) -> dict[str, object]:
        """The summary as plain JSON-able values."""
        return asdict(self)


@dataclass
class SimulatedLog:
    """An in-memory generation result: the ground-truth world and the logged tables."""

    world: World
    policy: LoggingPolicy
    events: pd.DataFrame
    sessions: int
    requests: int

    def items(self) -> pd.DataFrame:
        """The catalog table (prices as of the last day)."""
        return self.world.items_frame()

    def users(self) -> pd.DataFrame:
        """The users table."""
        return self.world.users_frame()


def _simulate_day(
    world: World,
    policy: LoggingPolicy,
    day: int,
    satiation: np.ndarray,
    last_ms: np.ndarray,
    counters: dict[str, int],
) -> tuple[list[dict[str, np.ndarray]], int, int]:
    """Simulate one day, updating ``satiation``/``last_ms`` in place: (code columns, sessions, requests)."""
    c = world.config
    rng = stream(world.seed, TRAFFIC_STREAM, day)
    n_users = world.n_users
    n_sessions = np.minimum(
        rng.poisson(c.sessions_per_user_per_day * world.user_activity), c.max_sessions_per_user_per_day
    )
    users = np.repeat(np.arange(n_users), n_sessions)
    total = len(users)
    cum_mix = np.cumsum(world.user_device_mix[users], axis=1)
    device = np.minimum((rng.random(total)[:, None] > cum_mix).sum(axis=1), len(c.devices) - 1)
    hour = rng.choice(24, size=total, p=HOUR_PROFILE)
    start = world.start_ms + day * MS_PER_DAY + hour * 3_600_000 + rng.integers(0, 3_600_000, size=total)
    order = np.lexsort((start, users))
    users, device, start = users[order], device[order], start[order]
    rank = np.arange(total) - np.searchsorted(users, users, side="left")
    session_code = counters["session"] + np.arange(total)
    counters["session"] += total
    candidates = world.available_items(day)
    chunks: list[dict[str, np.ndarray]] = []
    requests = 0
    for r in range(int(rank.max()) + 1 if total else 0):
        sel = np.flatnonzero(rank == r)
        su = users[sel]
        clock = np.maximum(start[sel], last_ms[su] + SESSION_GAP_MS)
        s_hour = (clock // 3_600_000) % 24
        s_weekday = (clock // MS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday
        active = np.ones(len(sel), dtype=bool)
        for _ in range(c.max_requests_per_session):
            idx = np.flatnonzero(active)
            if len(idx) == 0:
                break
            u = su[idx]
            now = clock[idx]
            satiation[u] = decay_satiation(satiation[u], now - last_ms[u], c.satiation_half_life_hours)
            context = Context(s_hour[idx], s_weekday[idx], device[sel][idx])
            slates, propensities = policy.sample(u, candidates, c.slate_size, rng)
            response = sample_response(world, u, slates, context, day, satiation[u], rng)
            request_code = counters["request"] + np.arange(len(idx))
            counters["request"] += len(idx)
            requests += len(idx)
            chunks.append(
                events_from_response(
                    slates,
                    propensities,
                    response,
                    now,
                    {
                        "user": u,
                        "session": session_code[sel][idx],
                        "request": request_code,
                        "hour": context.hour,
                        "weekday": context.weekday,
                        "device": context.device,
                        "region": world.user_region[u],
                    },
                )
            )
            satiation[u] += satiation_increment(world, slates, response)
            clicked = response.click.any(axis=1)
            keep_going = rng.random(len(idx)) < np.where(
                clicked, c.continue_after_click, c.continue_probability
            )
            gap_s = (
                REQUEST_GAP_S
                + rng.exponential(REQUEST_GAP_MEAN_S, size=len(idx))
                + np.where(response.click, response.dwell_s, 0.0).sum(axis=1)
            )
            last_ms[u] = now + (gap_s * 1000).astype(np.int64)
            clock[idx] = last_ms[u]
            active[idx] = keep_going
    return chunks, total, requests


@dataclass
class _DayState:
    """What carries over from one simulated day to the next: satiation, each user's clock, the id counters."""

    satiation: np.ndarray
    last_ms: np.ndarray
    counters: dict[str, int]

    @classmethod
    def start(cls, world: World) -> _DayState:
        return cls(np.zeros((world.n_users, world.n_categories)),
                   np.full(world.n_users, world.start_ms - MS_PER_DAY, dtype=np.int64),
                   {"session": 0, "request": 0})

    def simulate(self, world: World, policy: LoggingPolicy, day: int
                 ) -> tuple[list[dict[str, np.ndarray]], int, int]:
        return _simulate_day(world, policy, day, self.satiation, self.last_ms, self.counters)


def simulate_log(config: SimulatorConfig, progress: bool = False) -> SimulatedLog:
    """Simulate ``config.days`` days of traffic under the logging policy, in memory."""
    world = World(config)
    policy = LoggingPolicy.from_config(world, config)
    state = _DayState.start(world)
    chunks: list[dict[str, np.ndarray]] = []
    sessions = requests = 0
    for day in tqdm(range(config.days), desc="simulating", unit="day", disable=not progress):
        day_chunks, s, r = state.simulate(world, policy, day)
        chunks.extend(day_chunks)
        sessions += s
        requests += r
    if not chunks:
        raise _no_sessions(config)
    columns = {name: np.concatenate([ch[name] for ch in chunks]) for name in chunks[0]}
    events = events_frame(world, columns, policy.policy_id)
    return SimulatedLog(world, policy, events, sessions, requests)


def _no_sessions(config: SimulatorConfig) -> DataError:
    return DataError(
        f"simulator: the configuration produced no sessions ({config.users} users x {config.days} days x "
        f"{config.sessions_per_user_per_day} sessions per user per day); raise users, days or "
        "sessions_per_user_per_day"
    )


@dataclass
class StreamedLog:
    """What :func:`stream_events` wrote: the world and policy, and the counts accumulated day by day."""

    world: World
    policy: LoggingPolicy
    events: int
    counts: dict[str, int]
    sessions: int
    requests: int
    row_groups: int


def iter_event_frames(
    world: World, policy: LoggingPolicy, progress: bool = False, max_rows: int = ROW_GROUP_EVENTS
) -> Iterator[tuple[pd.DataFrame, int, int]]:
    """Simulate ``world.config.days`` days and yield ``(events, sessions, requests)`` pieces of at most
    ``max_rows`` events whose concatenation equals ``simulate_log(config).events`` exactly.

    The in-memory log sorts all events by timestamp (stably) and numbers them in that order. Every event of a
    later day is at or after that day's midnight (sessions start in their day and only move later), so after
    simulating day d the events before day d+1's midnight are final: they are converted, numbered and yielded;
    the rest (sessions running past midnight, late carts) wait in a small buffer, kept in their stable order.
    ``sessions``/``requests`` are those simulated since the previous piece (0 on all but a day's first piece).
    """
    config = world.config
    state = _DayState.start(world)
    buffer: list[dict[str, np.ndarray]] = []
    next_event = 0
    written_until = np.iinfo(np.int64).min  # every event yielded so far is before this instant
    for day in tqdm(range(config.days), desc="simulating", unit="day", disable=not progress):
        day_chunks, sessions, requests = state.simulate(world, policy, day)
        pieces = buffer + day_chunks
        buffer = []
        if not pieces:
            continue
        # Column by column, releasing each input as it is used, so a day's events are held about once.
        columns = {name: np.concatenate([p.pop(name) for p in pieces]) for name in list(pieces[0])}
        del pieces, day_chunks
        order = np.argsort(columns["timestamp_ms"], kind="stable")
        for name in columns:
            columns[name] = columns[name][order]
        del order
        if columns["timestamp_ms"][0] < written_until:  # the invariant that makes the stream exact
            raise RuntimeError(
                f"simulator: day {day} has an event before the previous day's end; streamed generation "
                "would reorder events"
            )
        n = len(columns["timestamp_ms"])
        ready = (
            n
            if day == config.days - 1
            else int(np.searchsorted(columns["timestamp_ms"], world.start_ms + (day + 1) * MS_PER_DAY))
        )
        written_until = world.start_ms + (day + 1) * MS_PER_DAY
        if ready < n:  # copies, so the day's arrays are freed
            buffer = [{name: values[ready:].copy() for name, values in columns.items()}]
        for lo in range(0, ready, max_rows):
            hi = min(lo + max_rows, ready)
            piece = {name: values[lo:hi] for name, values in columns.items()}
            frame = events_frame(world, piece, policy.policy_id, first_event=next_event)
            del piece
            next_event += hi - lo
            yield frame, sessions, requests
            del frame
            sessions = requests = 0
        del columns  # not held while the next day is simulated
        if ready == 0 and (sessions or requests):  # all of the day's events wait in the buffer
            yield pd.DataFrame(), sessions, requests


def stream_events(config: SimulatorConfig, path: Path, progress: bool = False) -> StreamedLog:
    """Simulate the default world day by day and write its events to ``path`` (Parquet) as it goes.

    Each piece of :func:`iter_event_frames` becomes one row group (recflow's events schema, so every row group
    has the same types); the file is written under a temporary name and renamed into place at the end, so a
    reader never sees half of it. The file's table equals ``simulate_log(config).events`` written by
    :func:`recflow.io.write_table`. Counts are accumulated per piece; memory does not grow with the days.
    """
    world = World(config)
    policy = LoggingPolicy.from_config(world, config)
    counts = dict.fromkeys(EVENT_TYPES, 0)
    events = sessions = requests = row_groups = 0
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for frame, s, r in iter_event_frames(world, policy, progress):
                sessions += s
                requests += r
                if frame.empty:
                    continue
                table = to_arrow(frame, "events")
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
                row_groups += 1
                events += len(frame)
                for name, n in frame["event_type"].value_counts().items():
                    counts[str(name)] += int(n)
                del frame, table
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise _no_sessions(config)
    return StreamedLog(world, policy, events, counts, sessions, requests, row_groups)


def summarize(
    log: SimulatedLog, seconds: float, out_dir: Path | None = None, files: dict[str, str] | None = None
) -> GenerationSummary:
    """Counts and funnel rates of a simulated log."""
    cfg = log.world.config
    return summarize_counts(
        log.events,
        users=cfg.users,
        items=log.world.n_items,
        days=cfg.days,
        sessions=log.sessions,
        requests=log.requests,
        seconds=seconds,
        out_dir=out_dir,
        files=files,
    )


def summarize_counts(
    events: pd.DataFrame,
    *,
    users: int,
    items: int,
    days: int,
    sessions: int,
    requests: int,
    seconds: float,
    out_dir: Path | None = None,
    files: dict[str, str] | None = None,
) -> GenerationSummary:
    """Counts and funnel rates of any generated events table (the default or a preset world's)."""
    counts_series = events["event_type"].value_counts()
    counts = {t: int(counts_series.get(t, 0)) for t in EVENT_TYPES}
    return summary_from_counts(
        counts,
        events=len(events),
        users=users,
        items=items,
        days=days,
        sessions=sessions,
        requests=requests,
        seconds=seconds,
        out_dir=out_dir,
        files=files,
    )


def summary_from_counts(
    counts: dict[str, int],
    *,
    events: int,
    users: int,
    items: int,
    days: int,
    sessions: int,
    requests: int,
    seconds: float,
    out_dir: Path | None = None,
    files: dict[str, str] | None = None,
) -> GenerationSummary:
    """The summary of a log from its per-type event counts (what streaming generation accumulates)."""
    counts = {t: int(counts.get(t, 0)) for t in EVENT_TYPES}

    def ratio(a: str, b: str) -> float:
        return counts[a] / counts[b] if counts[b] else 0.0

    return GenerationSummary(
        events=events,
        counts=counts,
        users=users,
        items=items,
        days=days,
        sessions=sessions,
        requests=requests,
        click_through_rate=ratio("click", "impression"),
        conversion_rate=ratio("purchase", "click"),
        cart_rate=ratio("add_to_cart", "click"),
        purchase_rate=ratio("purchase", "add_to_cart"),
        seconds=round(seconds, 3),
        out_dir=str(out_dir) if out_dir is not None else None,
        files=files or {},
    )


def generate_dataset(config: SimulatorConfig, out_dir: Path, progress: bool = True) -> GenerationSummary:
    """Simulate the shop; write events, items, users (Parquet) and simulator.json into ``out_dir``.

    ``config.world`` picks the world: ``default`` (below) or ``organic`` (the organic-views preset,
    :func:`recflow.simulator.organic.generate_organic_dataset`).

    ``simulator.json`` records the configuration used and the counts, not the latent ground truth.
    """
    if config.world == "organic":
        from recflow.simulator.organic import generate_organic_dataset

        return generate_organic_dataset(config, out_dir, progress=progress)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: output path exists and is not a directory")
    events_path = out_dir / FILE_NAMES["events"]
    created = not out_dir.exists()
    try:
        log = stream_events(config, events_path, progress=progress)
    except DataError:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing written: leave no empty directory behind
        raise
    written = write_dataset(out_dir, items=log.world.items_frame(), users=log.world.users_frame())
    files = {"events": events_path.name, **{kind: path.name for kind, path in written.items()}}
    summary = summary_from_counts(
        log.counts,
        events=log.events,
        users=config.users,
        items=log.world.n_items,
        days=config.days,
        sessions=log.sessions,
        requests=log.requests,
        seconds=time.perf_counter() - started,
        out_dir=out_dir,
        files=files,
    )
    meta = {
        "generator": "recflow.simulator",
        "schema_version": SCHEMA_VERSION,
        "policy_id": log.policy.policy_id,
        "config": config.model_dump(mode="json"),
        "summary": summary.to_dict(),
    }
    with atomic_path(out_dir / "simulator.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return summary
