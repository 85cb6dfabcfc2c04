"""relevant_by_user (train-item sets built a chunk of held-out users at a time) gives exactly the ground truth
of the whole-split computation, and sampled_exclusions the sampled users' sets of it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recflow.evaluation.metrics import ground_truth, interacted_items, relevant_by_user, sampled_exclusions

KINDS = ["view", "click", "add_to_cart", "purchase", "impression", "remove_from_cart"]


def _events(seed: int, n: int, users: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": np.array([f"u{u}" for u in rng.integers(0, users, n)], dtype=object),
        "item_id": np.array([f"i{i}" for i in rng.integers(0, 40, n)], dtype=object),
        "event_type": rng.choice(KINDS, n, p=[0.4, 0.15, 0.05, 0.05, 0.3, 0.05]),
    })


@pytest.mark.parametrize("chunk", [1, 7, 50, 10_000])
@pytest.mark.parametrize("exclude_train_items", [True, False])
def test_chunked_relevant_items_equal_the_whole_computation(chunk: int, exclude_train_items: bool) -> None:
    train, held_out = _events(0, 4000, 120), _events(1, 600, 150)  # some held-out users are new
    whole_exclude = interacted_items(train, users=held_out["user_id"].unique())
    whole = ground_truth(held_out, whole_exclude if exclude_train_items else None)
    got = relevant_by_user(train, held_out, exclude_train_items, users_per_chunk=chunk)
    assert got == whole and list(got) == sorted(whole)
    assert whole  # the case is not trivial: some users have relevant items
    users = sorted(whole)[::3]
    assert sampled_exclusions(train, users) == {u: whole_exclude[u] for u in users if u in whole_exclude}
    assert list(sampled_exclusions(train, users)) == [u for u in users if u in whole_exclude]


def test_chunk_size_must_be_positive() -> None:
    train = _events(0, 10, 3)
    with pytest.raises(ValueError, match="users_per_chunk"):
        relevant_by_user(train, train, True, users_per_chunk=0)
