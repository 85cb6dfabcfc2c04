"""The incremental update path serving calls: OnlineUpdater on exported per-arm bandits."""

from __future__ import annotations

import numpy as np
import pytest

from recflow.policy.config import OnlineConfig, PolicyConfig
from tests.test_policy import _data, _events, _world


def _export(world, config, events, out):
    from recflow.policy.trainer import export_policy, train_agent

    data = _data(world, events, config)
    agent, epsilon, _, _ = train_agent(data, config)
    meta = {"agent": config.agent, "exploration": config.exploration, "epsilon": float(epsilon.numpy()),
            "alpha": config.alpha, "tikhonov_weight": 1.0, "num_arms": config.num_arms,
            "feature_layout": data.layout.describe(), "item_ids": list(world["item_ids"]),
            "config": config.model_dump(mode="json")}
    export_policy(agent, out, meta, world["items"])


def test_linear_update_equals_training_on_all_the_data(tmp_path):
    """Closed form: LinUCB's ridge statistics add up, so export(train on A) + update(B) == train on A and B."""
    import pandas as pd

    from recflow.policy.online import OnlineUpdater
    from recflow.policy.scorer import load_policy

    world = _world()
    config = PolicyConfig(agent="lin_ucb", num_arms=6, alpha=0.1)
    first, second = _events(world, 80, seed=4), _events(world, 60, seed=8)
    second["request_id"] = "b" + second["request_id"]
    _export(world, config, first, tmp_path / "a")
    updater = OnlineUpdater(tmp_path / "a", user_ids=world["user_ids"], user_embeddings=world["users"],
                            config=OnlineConfig(forgetting=1.0))
    ids = list(world["item_ids"])
    before = updater.scorer().scores(world["users"][:3], None, ids, 3)["mean"]
    np.testing.assert_allclose(before, load_policy(tmp_path / "a").scores(world["users"][:3], None, ids, 3)["mean"],
                               atol=1e-5)
    stats = updater.update(second)
    assert stats.decisions == 180 and stats.updates == 1
    after = updater.scorer().scores(world["users"][:3], None, ids, 3)["mean"]
    assert np.abs(after - before).max() > 1e-3

    # the same statistics from one training pass over both logs (sampled arms differ; chosen arms do not)
    both = _data(world, first, config), _data(world, second, config.model_copy(update={"seed": config.seed + 1}))
    _export(world, config, pd.concat([first, second], ignore_index=True), tmp_path / "ab")
    full = load_policy(tmp_path / "ab").scores(world["users"][:3], None, ids, 3)["mean"]
    assert sum(len(d) for d in both) == 420
    np.testing.assert_allclose(after, full, rtol=1e-3, atol=1e-3)

    updater.export(tmp_path / "updated")
    reloaded = load_policy(tmp_path / "updated")
    np.testing.assert_allclose(reloaded.scores(world["users"][:3], None, ids, 3)["mean"], after, atol=1e-5)
    assert reloaded.meta["online_updates"] == 1 and reloaded.meta["online_decisions"] == 180


@pytest.mark.parametrize("agent", ["neural_epsilon_greedy", "linear_thompson_sampling"])
def test_update_moves_other_agents_toward_new_feedback(tmp_path, agent):
    from recflow.policy.online import OnlineUpdater

    world = _world()
    config = PolicyConfig(agent=agent, exploration="thompson" if agent.startswith("linear_t") else "epsilon_greedy",
                          num_arms=6, epochs=2, hidden_units=(8,), learning_rate=0.01)
    _export(world, config, _events(world, 60, seed=4), tmp_path)
    updater = OnlineUpdater(tmp_path, config=OnlineConfig(forgetting=0.5, gradient_steps=3))
    ids = list(world["item_ids"])
    before = updater.scorer().scores(None, None, ids, 1)
    # new feedback: every shown item is clicked -> predicted rewards go up
    events = _events(world, 40, seed=9)
    imp = events[events["event_type"] == "impression"]
    clicks = imp.assign(event_type="click", position=None, propensity=None)
    stats = updater.update(pd_concat(imp, clicks))
    assert stats.decisions == 120 and stats.mean_reward == pytest.approx(1.0)
    after = updater.scorer().scores(None, None, ids, 1)
    if agent == "neural_epsilon_greedy":
        assert after["mean"].mean() > before["mean"].mean()
    else:  # 0.5 x 180 old + 120 new decisions: a tighter posterior (the linear model has no intercept to raise)
        assert after["std"].mean() < before["std"].mean()
        assert np.abs(after["mean"] - before["mean"]).max() > 1e-3
    assert updater.update(events.iloc[:0]).decisions == 0


def pd_concat(*frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)
