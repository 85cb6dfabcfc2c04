"""benchmarks/policy/headroom.py: the true-logit decomposition and the observable proxies it tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "policy" / "headroom.py"


@pytest.fixture(scope="module")
def headroom() -> Iterator[ModuleType]:
    # The script sets OMP_NUM_THREADS=1 for itself at import; it must not leak into the processes that later tests
    # of this worker start.
    before = os.environ.get("OMP_NUM_THREADS")
    spec = importlib.util.spec_from_file_location("policy_headroom", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_headroom"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("policy_headroom", None)
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


@pytest.fixture(scope="module")
def bench(headroom: ModuleType):
    return headroom.build(quick=True)


def test_true_components_leave_only_satiation(headroom: ModuleType, bench) -> None:
    """The satiation term is the logit minus every other true component: zero for a user's first request on a
    fresh traffic seed, never positive, and negative once slates were shown (else a component is mis-specified)."""
    from recflow.policy.environment import ShopPyEnvironment
    from recflow.simulator import ShopEnv

    w = bench.world
    env = ShopPyEnvironment(ShopEnv(bench.cfg, seed=123, world=w, record_events=False), bench.featurizer, seed=1)
    tracker = headroom.ExposureTracker(w.n_users, w.n_categories, w.item_category)
    env.reset()
    first = headroom.extra_columns(bench, env, tracker)
    np.testing.assert_allclose(first["true_satiation_term"], 0.0, atol=1e-9)
    assert np.all(first["cross_session_exposure"] == 0.0)
    worst = 0.0
    rng = np.random.default_rng(0)
    for _ in range(60):
        cols = headroom.extra_columns(bench, env, tracker)
        assert np.all(cols["true_satiation_term"] <= 1e-9)
        worst = min(worst, float(cols["true_satiation_term"].min()))
        slate = rng.choice(len(env.candidate_items), size=env.slate_size, replace=False)
        step = env.step(slate.astype(np.int32))
        tracker.observe(env, slate, env.last_result)
        if step.is_last():
            env.reset()
    assert worst < -0.01
    assert tracker.value.sum() > 0


def test_exposure_decays_with_half_life(headroom: ModuleType) -> None:
    t = headroom.ExposureTracker(2, 3, np.array([0, 1, 2]))
    t.value[1] = [4.0, 2.0, 0.0]
    t.last_ms[1] = 1_000
    np.testing.assert_allclose(t.at(1, 1_000 + int(headroom.HALF_LIFE_H * 3.6e6)), [2.0, 1.0, 0.0])


def test_log_proxies_from_training_log(headroom: ModuleType, bench) -> None:
    logodds, taste = headroom.log_proxies(bench.world, bench.events)
    assert logodds.shape == (bench.world.n_users, bench.world.n_categories)
    assert np.isfinite(logodds).all() and np.isfinite(taste).all()
    assert logodds.std() > 0 and taste.std() > 0
