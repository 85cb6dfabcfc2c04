"""The drift job: verdicts (drift, no drift, too little data), outputs, CLI exit codes and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from monitoring.config import DriftConfig
from monitoring.drift import compare_windows, load_events, run_drift_job, two_proportion_test
from recflow.cli import main
from recflow.errors import DataError
from recflow.io import write_dataset
from recflow.simulator import SimulatorConfig, simulate_log


def _split(drift_day: int | None, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Days 0-1 as reference, days 2-3 as current, of one simulated shop (drift from day 2 when asked)."""
    # 150 new items (half the catalog): with the drift's own random streams (the days before it equal the no-drift
    # world's), the default 100 moved the logged scores too little in this small shop for the prediction test
    log = simulate_log(SimulatorConfig(users=600, items=300, days=4, seed=seed,
                                       drift={"day": drift_day, "preference_shift": 1.0, "new_items": 150}))
    day = (log.events["timestamp"] - log.events["timestamp"].min()).dt.days
    return (log.events[day < 2].reset_index(drop=True), log.events[day >= 2].reset_index(drop=True),
            log.items(), log.users())


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift")
    ref, cur, items, users = _split(None)
    write_dataset(root / "reference", events=ref, items=items, users=users)
    write_dataset(root / "same", events=cur, items=items, users=users)
    _, drifted, items_d, _ = _split(2)
    write_dataset(root / "drifted", events=drifted, items=items_d, users=users)
    return root


def test_drift_in_a_drifted_shop(windows: Path, tmp_path: Path) -> None:
    summary = run_drift_job(windows / "reference", windows / "drifted", tmp_path, DriftConfig())
    assert summary.verdict == "drift" and summary.exit_code == 1
    assert summary.target_drift and summary.prediction_drift
    ctr = next(t for t in summary.target if t.name == "ctr")
    # the shift moves the click rate (its direction depends on the drift's draw: here the new items raise it)
    assert abs(ctr.current - ctr.reference) / ctr.reference > 0.05
    assert {"item_known", "price"} <= set(summary.drifted_features)  # new items, repriced items
    for name in ("report.html", "summary.json", "metrics.prom", "feature_drift.png", "target_rates.png",
                 "shown_mix.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "feature_drift.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["verdict"] == "drift" and saved["reasons"]
    prom = (tmp_path / "metrics.prom").read_text()
    assert "recflow_drift_detected 1.0" in prom
    assert 'recflow_drift_verdict{verdict="drift"} 1.0' in prom
    assert 'recflow_drift_column_drifted{column="item_known",group="item"} 1.0' in prom


def test_no_drift_in_a_stationary_shop(windows: Path, tmp_path: Path) -> None:
    summary = run_drift_job(windows / "reference", windows / "same", tmp_path, DriftConfig())
    assert summary.verdict == "no_drift", summary.format()
    assert summary.exit_code == 0
    assert not (summary.feature_drift or summary.prediction_drift or summary.target_drift)
    weekday = next(c for c in summary.columns if c.column == "weekday")
    assert weekday.drifted and not weekday.counted  # other days of the week: reported, never a verdict
    assert "recflow_drift_detected 0.0" in (tmp_path / "metrics.prom").read_text()


def test_identical_windows_never_drift(windows: Path) -> None:
    events = load_events(windows / "reference")
    items = pd.read_parquet(windows / "reference" / "items.parquet")
    summary = compare_windows(events, events.copy(), DriftConfig(), items=items)
    assert summary.verdict == "no_drift"
    assert all(c.score == pytest.approx(0.0, abs=1e-9) for c in summary.columns)
    assert all(t.p_value == pytest.approx(1.0) for t in summary.target if t.statistic is None)
    assert not any(t.drifted for t in summary.target)  # the sequential CTR test included


def test_too_few_events_give_no_verdict(windows: Path, tmp_path: Path) -> None:
    summary = run_drift_job(windows / "reference", windows / "drifted", tmp_path, DriftConfig(min_events=2000),
                            current_last=1999)
    assert summary.verdict == "insufficient_data" and summary.exit_code == 4
    assert "current window has 1999 events (< 2000)" in summary.reasons[0]
    assert not summary.columns and not (tmp_path / "feature_drift.png").exists()
    assert 'recflow_drift_verdict{verdict="insufficient_data"} 1.0' in (tmp_path / "metrics.prom").read_text()


def test_two_proportion_test_needs_significance_and_effect() -> None:
    config = DriftConfig(target_alpha=0.01, min_relative_change=0.1)
    assert two_proportion_test("ctr", (500, 400), (10_000, 10_000), config).drifted  # -20%, p ~ 4e-4
    assert not two_proportion_test("ctr", (500, 480), (10_000, 10_000), config).drifted  # -4%: noise
    big = two_proportion_test("ctr", (50_000, 49_000), (1_000_000, 1_000_000), config)
    assert big.p_value < 0.01 and not big.drifted  # significant but only -2%: not worth an alarm


def test_cli_exit_codes(windows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["monitor", "drift", "--reference", str(windows / "reference"), "--out", str(tmp_path / "o")]
    assert main([*args, "--current", str(windows / "drifted"), "--expected-ctr", "0.04"]) == 1
    assert "drift verdict: DRIFT" in capsys.readouterr().out
    assert "recflow_champion_expected_ctr 0.04" in (tmp_path / "o" / "metrics.prom").read_text()
    assert main([*args, "--current", str(windows / "same"), "--current-last", "100"]) == 4
    assert "INSUFFICIENT_DATA" in capsys.readouterr().out


def test_unreadable_inputs_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "feedback.jsonl"
    bad.write_text('{"event_type": "impression", "user_id": "u1"}\n')
    with pytest.raises(DataError, match=r"feedback.jsonl: missing required field\(s\) \['item_id'\]"):
        load_events(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_events(tmp_path / "nope")
    code = main(["monitor", "drift", "--reference", str(bad), "--current", str(bad), "--out", str(tmp_path)])
    assert code == 2 and "missing required field" in capsys.readouterr().err


def test_jsonl_feedback_log_directory(windows: Path, tmp_path: Path) -> None:
    events = load_events(windows / "same")
    log_dir = tmp_path / "feedback"
    log_dir.mkdir()
    half = len(events) // 2
    for i, part in enumerate((events.iloc[:half], events.iloc[half:])):
        part.to_json(log_dir / f"part-{i}.jsonl", orient="records", lines=True, date_format="iso")
    loaded = load_events(log_dir)
    assert len(loaded) == len(events)
    assert loaded["timestamp"].is_monotonic_increasing


def test_feedback_segments_with_a_torn_last_line(tmp_path: Path) -> None:
    """The service's segments are read with its own reader; a line torn by a crash at the end is skipped."""
    from serving.feedback_log import FeedbackLog, segment_paths

    log = FeedbackLog(tmp_path / "fb", segment_bytes=1024)
    rows = [{"event_type": "impression", "user_id": f"u{i}", "item_id": f"i{i % 7}", "score": i / 10,
             "timestamp": f"2026-01-05T00:00:{i:02d}.{i:03d}Z"} for i in range(40)]
    for i in range(0, 40, 5):
        log.append(rows[i:i + 5])
    log.close()
    segments = segment_paths(tmp_path / "fb")
    assert len(segments) > 1
    with open(segments[-1], "ab") as fh:  # a crash in the middle of an append
        fh.write(b'{"event_type": "click", "user_id": "u1", "ite')
    loaded = load_events(tmp_path / "fb")
    assert len(loaded) == 40 and loaded["timestamp"].notna().all()
    assert loaded["score"].tolist() == [i / 10 for i in range(40)]  # fields beyond the schema are kept
    with open(segments[0], "ab") as fh:  # a bad line that is not the last one is an error, named
        fh.write(b'garbage\n{"event_type": "impression", "user_id": "u1", "item_id": "i1"}\n')
    with pytest.raises(DataError, match=r"feedback-.*\.jsonl: line \d+ is not valid JSON"):
        load_events(tmp_path / "fb")
    plain = tmp_path / "plain.jsonl"  # the generic reader follows the same rule
    plain.write_text('{"event_type": "impression", "user_id": "u1", "item_id": "i1"}\n{"event_type": "cl')
    assert len(load_events(plain)) == 1


def test_cusum_path_is_pages_recursion() -> None:
    import numpy as np

    from monitoring.drift_stats import cusum_path

    x = np.random.default_rng(0).normal(-0.1, 1.0, 500)
    expected, s = [], 0.0
    for v in x:
        s = max(0.0, s + v)
        expected.append(s)
    assert np.allclose(cusum_path(x), expected)


def test_ctr_cusum_detects_a_drop_and_not_a_steady_rate() -> None:
    """Synthetic Bernoulli streams of 4,000 impressions: CTR 5% (steady) vs 3.5% (a 30% drop) against p0 = 5%."""
    import numpy as np

    from monitoring.drift import ctr_cusum_test

    config = DriftConfig()
    rng = np.random.default_rng(1)

    def stream(rate: float) -> pd.DataFrame:
        kinds = []
        for clicked in rng.random(4000) < rate:
            kinds += ["impression", "click"] if clicked else ["impression"]
        return pd.DataFrame({"event_type": kinds})

    steady = ctr_cusum_test(stream(0.05), 0.05, config)
    dropped = ctr_cusum_test(stream(0.035), 0.05, config)
    assert not steady.drifted and steady.statistic < config.ctr_cusum_threshold
    assert dropped.drifted and dropped.statistic > config.ctr_cusum_threshold, dropped.detail
    off = ctr_cusum_test(stream(0.05), 0.0, config)
    assert off.statistic is None and "not tested" in off.detail


def _impressions_with_clicks(n_requests: int, mobile_share: float, ctr: dict[str, float], seed: int
                             ) -> pd.DataFrame:
    """Slates of 5 impressions with a device context; each impression is clicked with ctr[device] / (1 + pos/4)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_requests):
        device = "mobile" if rng.random() < mobile_share else "desktop"
        for pos, item_idx in enumerate(rng.choice(50, size=5, replace=False)):
            item = f"i{item_idx}"
            base = {"request_id": f"r{seed}-{r}", "item_id": item, "user_id": f"u{rng.integers(400)}",
                    "device": device, "position": pos}
            rows.append({**base, "event_type": "impression"})
            if rng.random() < ctr[device] / (1 + pos / 4):
                rows.append({**base, "event_type": "click"})
    return pd.DataFrame(rows)


def test_click_model_risk_adjusts_the_ctr_for_the_traffic_mix() -> None:
    """A shift of the device mix moves the raw CTR, not the clicks the reference's click model expects."""
    from monitoring.click_model import fit_click_model, labelled_impressions
    from monitoring.drift import expected_ctr_test

    config = DriftConfig()
    rates = {"mobile": 0.02, "desktop": 0.12}
    reference = _impressions_with_clicks(3000, 0.5, rates, seed=1)
    labelled = labelled_impressions(reference)
    assert labelled is not None and labelled["clicked"].sum() == (reference["event_type"] == "click").sum()
    model = fit_click_model(reference, config)
    assert model is not None and {"device", "log_position"} <= set(model.columns)

    mostly_mobile = _impressions_with_clicks(1500, 0.9, rates, seed=2)  # same behaviour, other mix
    summary = compare_windows(reference, mostly_mobile, config.model_copy(update={"min_events": 100}))
    tests = {t.name: t for t in summary.target}
    assert tests["ctr"].drifted  # the raw CTR falls by more than half
    assert not tests["ctr_vs_expected"].drifted and not tests["ctr_cusum"].drifted, tests

    dropped = _impressions_with_clicks(1500, 0.5, {k: 0.6 * v for k, v in rates.items()}, seed=3)
    adjusted = {t.name: t for t in expected_ctr_test(dropped, model, config)}
    assert adjusted["ctr_vs_expected"].drifted and adjusted["ctr_vs_expected"].relative_change < -0.25
    assert adjusted["ctr_cusum"].drifted and "risk-adjusted" in adjusted["ctr_cusum"].detail


def test_without_request_ids_the_cusum_uses_the_overall_ctr() -> None:
    from monitoring.click_model import fit_click_model
    from monitoring.drift import target_tests

    reference = _impressions_with_clicks(2000, 0.5, {"mobile": 0.05, "desktop": 0.05}, seed=4).drop(
        columns=["request_id"])
    assert fit_click_model(reference, DriftConfig()) is None
    names = [t.name for t in target_tests(reference, reference, DriftConfig())]
    assert "ctr_cusum" in names and "ctr_vs_expected" not in names


def test_click_model_treats_unseen_levels_as_the_reference_mode() -> None:
    """A weekday-only reference then a weekend: the unseen level must not shift the expected clicks."""
    import numpy as np

    from monitoring.click_model import fit_click_model, labelled_impressions

    rates = {"mobile": 0.03, "desktop": 0.09}
    reference = _impressions_with_clicks(2000, 0.5, rates, seed=5).assign(weekday=2, region="north")
    reference.loc[reference.index % 3 == 0, "region"] = "south"
    model = fit_click_model(reference, DriftConfig())
    assert model is not None and "weekend" not in model.columns  # constant in the reference: dropped
    current = labelled_impressions(_impressions_with_clicks(500, 0.5, rates, seed=6).assign(weekday=6,
                                                                                            region="east"))
    assert current is not None
    as_mode = current.assign(region="north", weekday=2)
    assert np.allclose(model.predict(current), model.predict(as_mode))


def test_clustered_tests_account_for_users_clicking_alike() -> None:
    """Few users, each clicking mostly one category: naive tests see drift between two samples of one shop."""
    import numpy as np

    from monitoring.drift import click_mix_test, two_proportion_test
    from monitoring.drift_stats import design_effect

    rng = np.random.default_rng(0)
    favourite = rng.integers(0, 6, size=400)

    def clicks(n: int, active: int = 15) -> tuple[pd.Series, pd.Series]:
        """``n`` clicks of ``active`` users drawn from 400 (a window holds the sessions of a few users)."""
        users = rng.choice(rng.choice(400, size=active, replace=False), size=n)
        cats = np.where(rng.random(n) < 0.9, favourite[users], rng.integers(0, 6, size=n))
        return pd.Series(cats.astype(str)), pd.Series(users.astype(str))

    naive_alarms = robust_alarms = 0
    config = DriftConfig()
    for _ in range(20):
        (c1, u1), (c2, u2) = clicks(600), clicks(600)
        naive_alarms += click_mix_test(c1, c2, config).drifted
        robust_alarms += click_mix_test(c1, c2, config, (u1, u2)).drifted
    assert naive_alarms >= 10 and robust_alarms <= 1, (naive_alarms, robust_alarms)
    # independent clicks (every click its own user): no design effect
    cats, _ = clicks(2000, active=400)
    assert design_effect(cats, pd.Series(np.arange(2000).astype(str))) == pytest.approx(1.0, abs=0.1)
    # the clustered rate test: one heavy user with many purchases makes a CVR "change" that is not significant
    ref = pd.DataFrame({"successes": [1, 0, 1, 0, 0], "trials": [10, 10, 10, 10, 10]})
    cur = pd.DataFrame({"successes": [30, 0, 0, 0, 0], "trials": [40, 10, 10, 10, 10]})
    naive = two_proportion_test("cvr", (2, 30), (50, 80), config)
    robust = two_proportion_test("cvr", (2, 30), (50, 80), config, (ref, cur))
    assert naive.drifted and not robust.drifted and "clusters" in robust.detail
