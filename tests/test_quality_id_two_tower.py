"""The id two-tower used by the quality benchmarks: point-in-time histories, latest items, attributes for cold
users, and a small training run that beats popularity."""

from __future__ import annotations

import numpy as np
import pytest

from recflow.errors import DataError
from recflow.training.id_two_tower import (
    IdTwoTowerConfig,
    fit_id_two_tower,
    last_items,
    recent_item_histories,
)


def test_histories_hold_only_earlier_items_of_the_same_user():
    users = np.array([0, 1, 0, 0, 1])
    items = np.array([10, 20, 11, 12, 21])
    times = np.array([1, 1, 2, 3, 5])
    order = np.lexsort((times, users))
    hist = recent_item_histories(users, items, order, 2)
    assert hist.tolist() == [[-1, -1], [-1, -1], [10, -1], [11, 10], [20, -1]]
    assert last_items(users, items, times, 3, 2).tolist() == [[12, 11], [21, 20], [-1, -1]]


def _grouped_log(seed: int = 0, n_users: int = 120, n_items: int = 40, groups: int = 4):
    """Users of group g interact with items of block g, plus a globally popular item 0."""
    rng = np.random.default_rng(seed)
    block = n_items // groups
    users, items = [], []
    for u in range(n_users):
        g = u % groups
        for i in rng.choice(np.arange(g * block, (g + 1) * block), size=6, replace=False):
            users.append(u)
            items.append(int(i))
        users.append(u)
        items.append(0)
    users_a, items_a = np.array(users), np.array(items)
    return users_a, items_a, np.arange(len(users_a)), n_users, n_items, block, groups


@pytest.mark.slow
def test_small_training_run_beats_popularity_and_attributes_serve_cold_users():
    users, items, times, n_users, n_items, block, groups = _grouped_log()
    group_of_user = np.arange(n_users + groups) % groups  # the last `groups` users never interact
    config = IdTwoTowerConfig(embedding_dim=16, history=4, epochs=15, batch_size=64, learning_rate=0.2,
                              temperature=0.2)
    model = fit_id_two_tower(users, items, times, n_users + groups, n_items, config,
                             user_attributes={"segment_idx": group_of_user})
    assert model.item_vectors.shape == (n_items, 17)  # 16 + the item-bias dimension
    hist = last_items(users, items, times, n_users + groups, 4)
    scores = model.scores(np.arange(n_users + groups), hist)
    top = np.argsort(-scores, axis=1)[:, :5]
    in_block = (top // block) == group_of_user[:, None]
    popular = np.argsort(-np.bincount(items, minlength=n_items), kind="stable")[:5]
    popularity_share = np.mean((popular[None, :] // block) == group_of_user[:n_users, None])
    assert in_block[:n_users].mean() > popularity_share + 0.3
    # cold users (no interactions, only a segment) still get their group's items
    assert in_block[n_users:].mean() > 0.6
    assert model.stats["examples_per_second"] > 0 and len(model.stats["loss"]) == 15


def test_bad_rows_raise_data_errors():
    with pytest.raises(DataError, match="must lie in"):
        fit_id_two_tower(np.array([0, 5]), np.array([0, 1]), np.array([0, 1]), 2, 2, IdTwoTowerConfig(epochs=1))
    with pytest.raises(DataError, match="no training interactions"):
        fit_id_two_tower(np.array([], int), np.array([], int), np.array([]), 2, 2, IdTwoTowerConfig(epochs=1))
