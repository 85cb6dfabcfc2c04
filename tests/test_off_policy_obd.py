"""OPE on the Open Bandit Dataset: closed forms on the real logs and the OBP-style validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CACHE = Path(__file__).resolve().parents[1] / "data" / "cache"


@pytest.fixture(scope="module")
def logs():
    from recflow.datasets.obd import obd_files
    from recflow.errors import RecflowError
    from recflow.policy.obd_ope import load_logs

    try:
        obd_files(CACHE)
    except (RecflowError, OSError) as exc:  # no cache and no network
        pytest.skip(f"Open Bandit Dataset not available: {exc}")
    return load_logs(CACHE)


def test_bts_action_distribution_and_on_policy_closed_forms(logs):
    from recflow.evaluation.off_policy import ips, snips
    from recflow.policy.obd_ope import bts_action_distribution

    dist = bts_action_distribution(logs.bts)
    assert dist.shape == (logs.len_list, logs.n_items)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    # the random log's own policy as the target: every weight is 1, IPS = SNIPS = the logged click rate
    rnd = logs.random
    uniform = np.full(rnd.n_rounds, 1.0 / logs.n_items)
    assert ips(rnd.rewards, uniform, rnd.propensities, replicates=50).value == pytest.approx(rnd.click_rate)
    assert snips(rnd.rewards, uniform, rnd.propensities, replicates=50).value == pytest.approx(rnd.click_rate)
    assert logs.context_random.shape[1] == logs.context_bts.shape[1]


@pytest.mark.slow
def test_validation_both_directions_is_in_obps_range(logs):
    from recflow.policy.obd_ope import validate_estimators

    out = validate_estimators(logs, replicates=100)
    for direction in ("bts_from_random", "random_from_bts"):
        for est in ("ips", "snips", "dm", "dr"):
            r = out[direction][est]
            assert np.isfinite(r["value"]) and r["ci_low"] <= r["value"] <= r["ci_high"]
            assert r["relative_error"] < 0.6  # OBP publishes 0.16-0.31 on this sample size
    assert out["bts_from_random"]["truth"] == pytest.approx(logs.bts.click_rate)
