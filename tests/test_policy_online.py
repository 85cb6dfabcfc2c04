"""recflow's one online learner (recflow.policy.online.OnlineLinUCB): the residual LinUCB correction serving and
the policy benchmark apply to an exported policy. Its equality with batch ridge regression and its learner
thread are tested with serving (tests/test_serving.py); here: the exponential window of ``forgetting``."""

from __future__ import annotations

import numpy as np
import pytest

from recflow.policy.online import OnlineLinUCB


def test_forgetting_equals_exponentially_weighted_ridge() -> None:
    """Closed form: with forgetting g, A = ridge I + sum g^(T-t) x_t x_t^T and b = sum g^(T-t) (r_t - s_t) x_t,
    t counting impressions (a reward counts with its impression's weight)."""
    rng = np.random.default_rng(3)
    dim, n, g, ridge = 4, 300, 0.97, 2.0
    model = OnlineLinUCB(dim, ridge=ridge, alpha=0.0, publish_every=10_000, forgetting=g)
    xs = rng.normal(size=(n, dim))
    base = rng.normal(size=n)
    clicked = rng.random(n) < 0.3
    a, b = ridge * np.eye(dim), np.zeros(dim)
    for x, s, c in zip(xs, base, clicked, strict=True):
        model.learn("impression", x, float(s))
        a = ridge * np.eye(dim) + g * (a - ridge * np.eye(dim)) + np.outer(x, x)
        b = g * b - s * x
        if c:
            model.learn("click", x, float(s))
            b = b + x
    model.publish()
    np.testing.assert_allclose(model.snapshot.theta, np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="forgetting"):
        OnlineLinUCB(dim, forgetting=0.0)


def test_forgetting_follows_a_drift_that_full_memory_follows_late() -> None:
    """Two arms; arm 0 pays before the drift, arm 1 after. With a window the corrected scores prefer arm 1 soon
    after the drift; with full memory the old evidence still outweighs the new."""
    arms = np.eye(2)
    rng = np.random.default_rng(0)

    def run(forgetting: float) -> np.ndarray:
        model = OnlineLinUCB(2, alpha=0.0, publish_every=1, forgetting=forgetting)
        for step in range(1200):
            arm = int(rng.integers(2))
            best = 0 if step < 1000 else 1
            model.learn("impression", arms[arm], 0.0)
            if rng.random() < (0.6 if arm == best else 0.1):
                model.learn("click", arms[arm], 0.0)
        return model.adjust(arms, np.zeros(2))

    windowed, full = run(0.99), run(1.0)
    assert windowed[1] > windowed[0]
    assert full[0] > full[1]
