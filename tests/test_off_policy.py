"""Closed-form and coverage checks of the off-policy estimators."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from recflow.evaluation.off_policy import (
    Estimate,
    direct_method,
    doubly_robust,
    evaluate_policy_offline,
    ips,
    snips,
)


def _uniform_log(n: int, n_arms: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contexts x in {0, 1}, uniform logging, Bernoulli rewards with known means q[x, a]."""
    rng = np.random.default_rng(seed)
    q = np.linspace(0.05, 0.6, 2 * n_arms).reshape(2, n_arms)
    x = rng.integers(0, 2, n)
    a = rng.integers(0, n_arms, n)
    r = (rng.random(n) < q[x, a]).astype(float)
    return q, x, a, r


def test_ips_equals_mean_reward_when_target_is_logging():
    rng = np.random.default_rng(0)
    r = rng.random(500)
    mu = rng.uniform(0.05, 1.0, 500)
    est = ips(r, mu, mu, replicates=200)
    assert est.value == pytest.approx(r.mean())
    assert est.ci_low <= est.value <= est.ci_high
    assert est.effective_sample_size == pytest.approx(500)


def test_deterministic_target_on_uniform_log():
    n_arms = 4
    _, x, a, r = _uniform_log(4000, n_arms, seed=1)
    target_action = np.where(x == 0, 1, 3)
    pi = (a == target_action).astype(float)
    est = ips(r, pi, np.full(r.size, 1 / n_arms), replicates=200)
    assert est.value == pytest.approx(n_arms * np.mean(r * (a == target_action)))
    # SNIPS on the same data is the mean reward of the matching decisions.
    assert snips(r, pi, np.full(r.size, 1 / n_arms), replicates=200).value == pytest.approx(r[pi == 1].mean())


def test_snips_invariant_to_scaling_target_probs():
    rng = np.random.default_rng(2)
    r, pi, mu = rng.random(300), rng.uniform(0, 0.5, 300), rng.uniform(0.1, 1, 300)
    a, b = snips(r, pi, mu, replicates=100), snips(r, 2 * pi, mu, replicates=100)
    assert a.value == pytest.approx(b.value)
    assert a.ci_low == pytest.approx(b.ci_low) and a.ci_high == pytest.approx(b.ci_high)
    assert ips(r, 2 * pi, mu, replicates=100).value == pytest.approx(2 * ips(r, pi, mu, replicates=100).value)


def test_doubly_robust_with_zero_model_is_ips_and_with_perfect_model_is_truth():
    n_arms = 3
    q, x, a, r = _uniform_log(3000, n_arms, seed=3)
    pi_dist = np.tile([0.7, 0.2, 0.1], (r.size, 1))
    pi = pi_dist[np.arange(r.size), a]
    mu = np.full(r.size, 1 / n_arms)
    zero = np.zeros(r.size)
    assert doubly_robust(r, pi, mu, zero, zero, replicates=100).value == pytest.approx(
        ips(r, pi, mu, replicates=100).value
    )
    # Noise-free rewards equal to the model: DR has no variance left beyond the model's.
    q_chosen = q[x, a]
    q_pi = (pi_dist * q[x]).sum(axis=1)
    exact = doubly_robust(q_chosen, pi, mu, q_chosen, q_pi, replicates=200)
    assert exact.value == pytest.approx(direct_method(q_pi, replicates=200).value)
    truth = float(np.mean(q_pi))
    assert exact.value == pytest.approx(truth)
    # With real Bernoulli noise, DR with the true model is closer to the truth than IPS on average.
    dr = doubly_robust(r, pi, mu, q_chosen, q_pi, replicates=200)
    ip = ips(r, pi, mu, replicates=200)
    assert dr.ci_high - dr.ci_low < ip.ci_high - ip.ci_low


def test_bootstrap_ci_covers_known_truth():
    n_arms, covered, reps = 3, 0, 100
    pi_dist = np.array([0.6, 0.3, 0.1])
    for rep in range(reps):
        q, x, a, r = _uniform_log(400, n_arms, seed=100 + rep)
        truth = float(np.mean([(pi_dist * q[c]).sum() for c in (0, 1)]))  # contexts equally likely
        est = ips(r, pi_dist[a], np.full(r.size, 1 / n_arms), replicates=300, seed=rep)
        covered += est.ci_low <= truth <= est.ci_high
    assert covered >= 90


def test_clipping_and_errors():
    r, pi, mu = np.ones(4), np.ones(4), np.full(4, 0.01)
    assert ips(r, pi, mu, clip=10, replicates=10).value == pytest.approx(10)
    with pytest.raises(ValueError, match="logging probabilities"):
        ips(r, pi, np.zeros(4), replicates=10)
    with pytest.raises(ValueError, match="length"):
        ips(r, pi[:3], mu, replicates=10)


def test_seeded_and_evaluate_policy_offline():
    rng = np.random.default_rng(4)
    data = SimpleNamespace(clicks=(rng.random(200) < 0.3).astype(float),
                           purchases=(rng.random(200) < 0.05).astype(float), propensities=np.full(200, 0.5))
    pi = np.full(200, 0.5)
    model = {"click_rate": (np.full(200, 0.3), np.full(200, 0.3))}
    out = evaluate_policy_offline(data, pi, model, replicates=100, seed=7)
    again = evaluate_policy_offline(data, pi, model, replicates=100, seed=7)
    assert out == again
    assert set(out) == {"click_rate/logged", "click_rate/ips", "click_rate/snips", "click_rate/dm",
                        "click_rate/dr", "conversion_rate/logged", "conversion_rate/ips", "conversion_rate/snips"}
    assert all(isinstance(e, Estimate) for e in out.values())
    assert out["click_rate/ips"].value == pytest.approx(data.clicks.mean())
