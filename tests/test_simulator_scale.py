"""The simulator at scale (issue 17 item 4): streamed generation and the large-catalog logging-policy sampler."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import chisquare

from recflow.cli import main
from recflow.config import ValidationConfig
from recflow.errors import DataError
from recflow.io import write_table
from recflow.simulator import LoggingPolicy, OrganicConfig, SimulatorConfig, World, generate_dataset, simulate_log
from recflow.simulator.config import DriftConfig
from recflow.simulator.generator import iter_event_frames
from recflow.simulator.world import MS_PER_DAY
from recflow.validation import validate_path

DEFAULT = SimulatorConfig(users=300, days=5, seed=42)
DRIFT = DEFAULT.model_copy(
    update={"drift": DriftConfig(day=2, new_items=50, category_demand_shift={"toys": -1.0})}
)
ORGANIC = SimulatorConfig(world="organic", seed=5, organic=OrganicConfig(users=150))

#: sha256 of each table's column values (:func:`_fingerprint`: timestamps as epoch milliseconds, integers as
#: little-endian 64-bit, floats to 10 significant digits, strings joined; independent of the pandas/numpy versions,
#: of ms/ns timestamps and of the CPU), for the events of main's simulator before streaming generation (95dc8c9,
#: bit-identical there): the events every benchmark in benchmarks/results was measured on. ``events`` holds for
#: the written file and for simulate_log's frame.
PINNED = {
    "default": {
        "rows": 15229,
        "events": "df84a2f34df26d357f97ee2deafe2011acec95af7422f6d29bcdd950813585d0",
        "items": "58522bdd3275b7dcb461b9130770382feb1386bf194140d17e8be6e8172eff05",
        "users": "0d585a38ef2dea5d53ea01aade4d58239d632d0f1504f3dd880a7150a06fb0d3",
    },
    "drift": {
        "rows": 15090,
        "events": "ac7cb168393e188d91801aa300f0e6ee56bef9477ef08eb1ddc6b9cd9e436162",
        "items": "f9cb6a1c0e188dcba97f3a02261efede7fe58b632fa847547852cd310d280f16",
        "users": "0d585a38ef2dea5d53ea01aade4d58239d632d0f1504f3dd880a7150a06fb0d3",
    },
    "organic": {
        "rows": 7936,
        "events": "5944a5a6627950d3bc7d5d74dfe9c70533884ad4111f44b83adf3ad0287615bc",
        "items": "984d221913730fded05cb3663e693e0b884561354f681217f561029477b06495",
        "users": "55369290b0331860fd8be800defd923f1e30faaca02ff2729cfdcf7a15c839f9",
    },
}
CONFIGS = {"default": DEFAULT, "drift": DRIFT, "organic": ORGANIC}


def _fingerprint(df: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for name in df.columns:
        col = df[name]
        digest.update(str(name).encode() + b"\x00")
        if pd.api.types.is_datetime64_any_dtype(col):
            ms = (pd.to_datetime(col, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
            digest.update(ms.to_numpy(dtype="<i8").tobytes())
        elif pd.api.types.is_float_dtype(col):
            # 10 significant digits: numpy's vectorised exp/log can differ in the last bit between CPUs
            digest.update("\x1f".join(np.char.mod("%.10g", col.to_numpy(dtype="<f8"))).encode())
        elif pd.api.types.is_integer_dtype(col):
            digest.update(col.to_numpy(dtype="<i8").tobytes())
        else:
            digest.update("\x1f".join(map(str, col.tolist())).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ the events stay exactly the same
@pytest.mark.parametrize("name", ["default", "drift", "organic"])
def test_generated_tables_match_the_fingerprints_pinned_before_streaming(name: str, tmp_path: Path):
    config, pinned = CONFIGS[name], PINNED[name]
    summary = generate_dataset(config, tmp_path / "data", progress=False)
    assert summary.events == pinned["rows"]
    for kind in ("events", "items", "users"):
        assert _fingerprint(pq.read_table(tmp_path / "data" / f"{kind}.parquet").to_pandas()) == pinned[kind], kind
    if config.world == "default":
        assert _fingerprint(simulate_log(config).events) == pinned["events"]


def test_streamed_file_equals_the_in_memory_log_written_the_old_way(tmp_path: Path):
    config = SimulatorConfig(users=400, items=200, days=4, seed=3)
    memory = simulate_log(config).events
    # Sessions that run past midnight: their late events are held back until the next day is simulated.
    day_of = (memory["timestamp"].astype("int64") // 1_000_000 - World(config).start_ms) // MS_PER_DAY
    first_day = memory.groupby("session_id")["timestamp"].transform("min")
    first_day = (first_day.astype("int64") // 1_000_000 - World(config).start_ms) // MS_PER_DAY
    assert (day_of > first_day).sum() > 0, "the config should have events after their session's midnight"

    world = World(config)
    pieces = list(iter_event_frames(world, LoggingPolicy.from_config(world, config), max_rows=1_000))
    assert len(pieces) > config.days
    streamed = pd.concat([frame for frame, _, _ in pieces], ignore_index=True)
    pd.testing.assert_frame_equal(streamed, memory)
    log = simulate_log(config)
    assert sum(s for _, s, _ in pieces) == log.sessions and sum(r for _, _, r in pieces) == log.requests

    summary = generate_dataset(config, tmp_path / "data", progress=False)
    old = write_table(memory, tmp_path / "old.parquet", "events")
    new = pq.ParquetFile(tmp_path / "data" / "events.parquet")
    assert new.metadata.num_row_groups >= config.days
    assert new.read().equals(pq.read_table(old))
    assert new.schema_arrow.equals(pq.read_schema(old), check_metadata=True)
    counts = memory["event_type"].value_counts()
    assert summary.events == len(memory)
    assert summary.counts == {t: int(counts.get(t, 0)) for t in summary.counts}
    assert not list((tmp_path / "data").glob(".*.tmp"))


# ------------------------------------------------------------------ the large-catalog sampler
def _forced(items: int = 25, **update: object) -> tuple[World, LoggingPolicy, LoggingPolicy]:
    config = SimulatorConfig(users=200, items=items, seed=7, **update)
    world = World(config)
    dense = LoggingPolicy.from_config(world, config.model_copy(update={"large_catalog_items": None}))
    large = LoggingPolicy.from_config(world, config.model_copy(update={"large_catalog_items": 1}))
    return world, dense, large


def _slot_marginals(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact P(slot 0 = j) and P(slot 1 = j) of a Plackett-Luce ranking with weights w."""
    second = np.array([sum(w[i] * w[j] / (1.0 - w[i]) for i in range(len(w)) if i != j) for j in range(len(w))])
    return w, second


@pytest.mark.parametrize("max_rounds", [64, 0])
def test_large_catalog_sampler_draws_the_dense_plackett_luce_distribution(max_rounds: int):
    world, dense, large = _forced(logging_temperature=0.3)  # a peaked policy: many rejected repeats
    assert large.samples_by_segment and not dense.samples_by_segment
    candidates = world.available_items(0)
    user = int(np.flatnonzero(world.user_segment == world.user_segment[0])[0])
    n = 6_000 if max_rounds else 2_000
    users = np.full(n, user)
    slates, prop = large.sample_by_segment(users, candidates, 3, np.random.default_rng(0), max_rounds=max_rounds)
    assert all(len(set(row)) == 3 for row in slates.tolist())
    w = dense.probabilities(np.array([user]), candidates)[0]
    first, second = _slot_marginals(w)
    for slot, expected in ((0, first), (1, second)):
        observed = np.bincount(np.searchsorted(candidates, slates[:, slot]), minlength=len(candidates))
        big = expected * n >= 5  # chi-square on the cells with enough mass, the rest pooled
        f_obs, f_exp = observed[big], expected[big] * n
        if not big.all():
            f_obs, f_exp = np.append(f_obs, observed[~big].sum()), np.append(f_exp, expected[~big].sum() * n)
        assert chisquare(f_obs, f_exp).pvalue > 0.001, slot
    # Propensities: exactly the dense formula on the dense weights, and the slot distributions' entries.
    chosen = w[np.searchsorted(candidates, slates)]
    before = np.cumsum(chosen, axis=1) - chosen
    assert np.array_equal(prop, np.clip(chosen / np.clip(1.0 - before, 1e-300, None), 1e-300, 1.0))
    rows = dense.slot_distributions(user, candidates, slates[0])
    assert np.allclose(rows[np.arange(3), np.searchsorted(candidates, slates[0])], prop[0], rtol=1e-12)


def test_large_catalog_sampler_uses_each_users_segment():
    world, dense, large = _forced(items=40)
    candidates = world.available_items(0)
    users = np.arange(world.n_users)
    slates, prop = large.sample(users, candidates, 5, np.random.default_rng(1))
    assert slates.shape == (world.n_users, 5) and np.all((prop > 0) & (prop <= 1))
    w = dense.probabilities(users, candidates)  # each user's own dense row
    chosen = np.take_along_axis(w, np.searchsorted(candidates, slates), axis=1)
    before = np.cumsum(chosen, axis=1) - chosen
    assert np.array_equal(prop, np.clip(chosen / np.clip(1.0 - before, 1e-300, None), 1e-300, 1.0))
    # Slot 0 of the segments' slates follows their own weights: the segments' top items differ.
    top = {int(s): int(np.argmax(w[np.flatnonzero(world.user_segment == s)[0]])) for s in np.unique(world.user_segment)}
    assert len(set(top.values())) > 1 or len(top) == 1


def test_the_default_world_keeps_the_dense_sampler():
    assert SimulatorConfig().large_catalog_items == 60_000
    assert not LoggingPolicy.from_config(World(SimulatorConfig(users=10)), SimulatorConfig(users=10)).samples_by_segment
    with pytest.raises(ValueError, match="large_catalog_items"):
        SimulatorConfig(large_catalog_items=0)


def test_a_large_catalog_generation_runs_and_validates(tmp_path: Path):
    config = SimulatorConfig(users=2_000, items=30_000, days=1, seed=4, large_catalog_items=20_000)
    summary = generate_dataset(config, tmp_path / "data", progress=False)
    assert summary.events > 1_000 and summary.items == 30_000
    report = validate_path(tmp_path / "data", ValidationConfig())
    assert report.passed and sum(report.bad_rows.values()) == 0, report.format()
    events = pq.read_table(tmp_path / "data" / "events.parquet").to_pandas()
    shown = events[events["event_type"] == "impression"]
    assert not shown.duplicated(["request_id", "item_id"]).any()
    assert shown["propensity"].between(0.0, 1.0, inclusive="right").all()
    assert shown["item_id"].nunique() > 1_000  # the long tail is explored (epsilon mixing)


def test_cli_generate_shows_the_per_day_progress_bar(tmp_path: Path, capsys):
    rc = main(["data", "generate", "--users", "60", "--items", "40", "--days", "3", "--out", str(tmp_path / "d")])
    captured = capsys.readouterr()
    assert rc == 0
    assert "simulating" in captured.err and "3/3" in captured.err
    assert "generated" in captured.out and (tmp_path / "d" / "events.parquet").is_file()


def test_a_generation_without_sessions_fails_clearly_and_writes_nothing(tmp_path: Path):
    config = SimulatorConfig(users=3, items=20, days=2, sessions_per_user_per_day=1e-9)
    with pytest.raises(DataError, match="produced no sessions"):
        generate_dataset(config, tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()
