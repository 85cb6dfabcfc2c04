"""The release gate's online half: always-valid confidence sequences, the canary guardrail, the store's canary
alias and decision log, and the `recflow models canary` commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recflow.model_store import ModelStore
from recflow.release import ArmStats, CanaryConfig, GuardrailState, canary_decision
from recflow.sequential import mean_difference, msprt_half_width, rate_difference

# ------------------------------------------------------------------------------------- confidence sequences


def _peeking_false_alarms(reps: int, looks: int, batch: int, p: float, seed: int, always_valid: bool) -> float:
    """Share of A/A comparisons (both arms click at rate p) that ever declare a difference when checked after
    every batch: the mSPRT sequence vs a fixed-sample 95% z-interval checked the same way."""
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(reps):
        ca = cb = na = nb = 0
        running = None
        for _ in range(looks):
            ca += int(rng.binomial(batch, p))
            cb += int(rng.binomial(batch, p))
            na += batch
            nb += batch
            if always_valid:
                running = rate_difference(cb, nb, ca, na, alpha=0.05, tau=0.01).intersect(running)
                hit = running.low > 0 or running.high < 0
            else:
                pa, pb = ca / na, cb / nb
                se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb) or 1e-12
                hit = abs(pb - pa) / se > 1.96
            if hit:
                alarms += 1
                break
    return alarms / reps


def test_checking_after_every_batch_keeps_the_always_valid_error_rate_below_alpha():
    # 400 A/A tests, each checked 50 times: the fixed-sample interval cries wolf far more often than 5%
    naive = _peeking_false_alarms(400, 50, 200, 0.05, seed=1, always_valid=False)
    valid = _peeking_false_alarms(400, 50, 200, 0.05, seed=1, always_valid=True)
    assert naive > 0.15
    assert valid <= 0.05


def test_a_real_difference_is_found_and_the_interval_covers_it():
    rng = np.random.default_rng(2)
    n = 20000
    control, treatment = rng.binomial(1, 0.06, n), rng.binomial(1, 0.04, n)
    cs = rate_difference(int(treatment.sum()), n, int(control.sum()), n, alpha=0.05, tau=0.01)
    assert cs.high < 0 and cs.low < -0.02 < cs.high
    assert cs.p_value < 0.05
    # means: latency 30 ms vs 40 ms
    a, b = rng.normal(30, 5, 500), rng.normal(40, 5, 500)
    m = mean_difference(b.sum(), (b * b).sum(), 500, a.sum(), (a * a).sum(), 500, alpha=0.05, tau=5.0)
    assert 5 < m.low < 10 < m.high < 15


def test_half_width_shrinks_with_data_and_rejects_bad_parameters():
    assert msprt_half_width(1e-4, 0.01, 0.05) < msprt_half_width(1e-3, 0.01, 0.05)
    assert msprt_half_width(0.0, 0.01, 0.05) == 0.0
    with pytest.raises(ValueError, match="alpha"):
        msprt_half_width(1e-3, 0.01, 1.5)
    with pytest.raises(ValueError, match="tau"):
        msprt_half_width(1e-3, 0.0, 0.05)
    # no data on an arm: the interval is the whole line
    empty = rate_difference(0, 0, 5, 100)
    assert empty.low == -math.inf and empty.high == math.inf


# ------------------------------------------------------------------------------------------------ guardrail

CFG = CanaryConfig(min_requests=200, min_impressions=1000, max_requests=20000, decide_every=50)


def _simulate(ctr_champion: float, ctr_canary: float, *, lat_canary: float = 20.0, err_canary: float = 0.0,
              seed: int = 0, share: float = 0.5, config: CanaryConfig = CFG, max_requests: int = 40000):
    """Requests one by one (slates of 5 impressions), the guardrail asked every ``decide_every`` canary
    requests, as serving does; returns the decision and how many canary requests it took."""
    rng = np.random.default_rng(seed)
    champion, canary, state = ArmStats(), ArmStats(), GuardrailState()
    for _ in range(max_requests):
        to_canary = rng.random() < share
        arm = canary if to_canary else champion
        ctr = ctr_canary if to_canary else ctr_champion
        latency = rng.normal(lat_canary if to_canary else 20.0, 3.0)
        arm.add_request(latency, error=bool(to_canary and rng.random() < err_canary))
        arm.impressions += 5
        arm.clicks += int(rng.binomial(5, ctr))
        if to_canary and canary.requests % config.decide_every == 0:
            decision = canary_decision(champion, canary, config, state)
            if decision.action != "continue":
                return decision
    return canary_decision(champion, canary, config, state)


def test_the_guardrail_rolls_back_a_canary_with_a_lower_click_rate():
    decision = _simulate(0.10, 0.06)
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("click rate lower")
    assert decision.canary_requests < 2000


def test_the_guardrail_promotes_an_equal_canary_once_shown_within_the_margin():
    decision = _simulate(0.10, 0.10, seed=3)
    assert decision.action == "promote", decision.reasons
    assert decision.canary_requests >= CFG.min_requests
    assert decision.reasons[0].startswith("non-inferior after")


def test_the_guardrail_rolls_back_slow_and_failing_canaries():
    slow = _simulate(0.10, 0.10, lat_canary=40.0, seed=4)
    assert slow.action == "rollback" and "slower" in slow.reasons[0]
    over = _simulate(0.10, 0.10, lat_canary=130.0, seed=4,
                     config=CFG.model_copy(update={"latency_margin_ms": 500.0}))
    assert over.action == "rollback" and "over the latency budget" in " ".join(over.reasons)
    failing = _simulate(0.10, 0.10, err_canary=0.05, seed=5)
    assert failing.action == "rollback" and "error rate higher" in " ".join(failing.reasons)


def test_an_undecided_canary_is_rolled_back_at_max_requests():
    config = CFG.model_copy(update={"max_requests": 300, "ctr_margin": 0.0})
    decision = _simulate(0.10, 0.10, seed=6, config=config)
    assert decision.action == "rollback" and decision.reasons[0].startswith("inconclusive after")


def test_no_promotion_before_min_requests():
    champion, canary = ArmStats(), ArmStats()
    for arm in (champion, canary):
        for _ in range(100):
            arm.add_request(20.0)
        arm.impressions, arm.clicks = 100000, 10000
    decision = canary_decision(champion, canary, CFG)
    assert decision.action == "continue" and "100 of 200 canary requests" in decision.reasons


# --------------------------------------------------------------------------------------------- store + CLI


def _push(store: ModelStore, tmp_path: Path, tag: str, canary: bool = True):
    part = tmp_path / f"model-{tag}"
    part.mkdir(exist_ok=True)
    (part / "weights.bin").write_bytes(tag.encode() * 50)
    evaluation = tmp_path / f"eval-{tag}"
    evaluation.mkdir(exist_ok=True)
    (evaluation / "blessing.json").write_text(json.dumps({"blessed": True}))
    return store.push({"model": part}, evaluation, {"mlflow_run_id": None}, canary=canary)


def test_a_push_with_a_champion_is_a_canary_and_is_promoted_or_aborted(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    first = _push(store, tmp_path, "a")
    assert first.pushed and not first.as_canary and store.champion().version == "v0001"  # first: champion
    second = _push(store, tmp_path, "b")
    assert second.as_canary and store.champion().version == "v0001" and store.canary().version == "v0002"
    assert store.alias("canary").previous == "v0001"
    assert store.promote_canary("guardrail", {"canary": {"requests": 900}}, expected="v0002").version == "v0002"
    assert store.champion().version == "v0002" and store.alias().previous == "v0001" and store.canary() is None
    _push(store, tmp_path, "c")
    assert store.promote_canary("x", expected="v0002") is None  # a stale decision does nothing
    assert store.abort_canary("click rate lower", {"canary": {"requests": 400}}) == "v0003"
    assert store.champion().version == "v0002" and store.canary() is None
    decisions = [(d["decision"], d["version"], d["champion"]) for d in store.canary_decisions()]
    assert decisions == [("promoted", "v0002", "v0001"), ("rolled_back", "v0003", "v0002")]
    # a new push supersedes a running canary
    _push(store, tmp_path, "d")
    _push(store, tmp_path, "e")
    assert store.canary().version == "v0005"
    assert store.canary_decisions()[-1]["decision"] == "aborted"
    assert "superseded by v0005" in store.canary_decisions()[-1]["reason"]
    # canary off: a push replaces the champion at once
    store.abort_canary("test")
    assert not _push(store, tmp_path, "f", canary=False).as_canary and store.champion().version == "v0006"


def test_models_canary_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from recflow.cli import main

    root = tmp_path / "store"
    store = ModelStore(root)
    _push(store, tmp_path, "a")
    _push(store, tmp_path, "b")

    def run(*args: str) -> tuple[int, str]:
        code = main(["models", "canary", *args, "--store", str(root)])
        out = capsys.readouterr()
        return code, out.out + out.err

    code, out = run("status")
    assert code == 0, out
    assert "canary v0002 on 10% of users" in out and "would replace v0001" in out
    code, out = run("promote", "--version", "v0001", "--no-registry")
    assert code != 0 and "error: model store" in out and "the canary is v0002, not v0001" in out
    assert "Traceback" not in out
    code, out = run("abort", "--reason", "looks odd", "--no-registry")
    assert code == 0, out
    assert "canary v0002 aborted (the champion stays)" in out
    assert store.champion().version == "v0001" and store.canary() is None
    code, out = run("status")
    assert "no canary running" in out and "rolled_back" in out and "by hand: looks odd" in out
    code, out = run("promote", "--no-registry")
    assert code != 0 and "no canary is running" in out
