"""Synthetic example sets that several test modules share (tests/ is on sys.path: ``from example_data import ...``).

Each writes what ExampleGen writes: ``train.parquet``, ``test.parquet``, ``eval.parquet`` (events) and
``items.parquet`` (the catalog), through :func:`recflow.io.write_table`, so the files pass the same schema checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recflow.io import write_table

#: The first day of every synthetic event log here.
T0 = pd.Timestamp("2026-01-05", tz="UTC")


def write_taste_group_examples(
    root: Path,
    *,
    seed: int = 0,
    n_users: int = 160,
    groups: int = 4,
    per_group: int = 20,
    event_p: tuple[float, float, float] = (0.5, 0.4, 0.1),
    new_users: int = 12,
    prices: bool = True,
    impressions: bool = True,
) -> Path:
    """A shop where each user sticks to one taste group's block of items; returns ``root``.

    User ``u`` belongs to group ``u % groups`` and has ten events on distinct items of that group's block of
    ``per_group`` items (``cat<g>``), of type view/click/purchase with probabilities ``event_p``, in the first
    week; the last three of them are a week later and held out (test and eval, from day 8). The last
    ``new_users`` users appear only in test (no training history). ``prices``: the catalog has a ``price``
    column (drawn first from the seeded generator); ``impressions``: every user also has an impression of
    ``i000`` on day 9 (an event that is not an interaction).
    """
    rng = np.random.default_rng(seed)
    n_items = groups * per_group
    catalog: dict[str, object] = {
        "item_id": [f"i{j:03d}" for j in range(n_items)],
        "category": [f"cat{j // per_group}" for j in range(n_items)],
    }
    if prices:
        catalog["price"] = rng.uniform(1, 100, n_items).round(2)
    items = pd.DataFrame(catalog)
    rows = []
    for u in range(n_users):
        block = np.arange((u % groups) * per_group, (u % groups + 1) * per_group)
        new_user = u >= n_users - new_users
        for n, j in enumerate(rng.choice(block, size=10, replace=False)):
            in_test = n >= 7  # the last three interactions of each user are held out
            if new_user and not in_test:
                continue  # new users have no training history
            when = T0 + pd.Timedelta(hours=int(rng.integers(0, 24 * 7)) + (24 * 8 if in_test else 0))
            kind = str(rng.choice(["view", "click", "purchase"], p=list(event_p)))
            rows.append((f"e{len(rows)}", kind, when, f"u{u:03d}", f"i{j:03d}"))
        if impressions:
            rows.append((f"e{len(rows)}", "impression", T0 + pd.Timedelta(days=9), f"u{u:03d}", "i000"))
    events = pd.DataFrame(rows, columns=["event_id", "event_type", "timestamp", "user_id", "item_id"])
    cut = T0 + pd.Timedelta(days=8)
    root.mkdir(parents=True, exist_ok=True)
    write_table(events[events["timestamp"] < cut], root / "train.parquet", "events")
    write_table(events[events["timestamp"] >= cut], root / "test.parquet", "events")
    write_table(events[events["timestamp"] >= cut], root / "eval.parquet", "events")
    write_table(items, root / "items.parquet", "items")
    return root
