"""The Open Bandit Dataset sample (ZOZOTOWN fashion e-commerce, logged bandit feedback with propensities).

The small sample ships inside the ``obp`` 0.5.7 sdist on PyPI (obp itself is not installed: it needs
Python < 3.11). Each log has 10,000 rounds; in each round the logging policy ("random" or "bts", Bernoulli
Thompson sampling) showed one item at one of three positions and the user clicked or not. See
docs/data-sources.md for the mapping to the recflow schema.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from recflow.datasets.registry import CachedFiles, RegistryArchive, fetch_archive_files
from recflow.errors import DataError

BehaviorPolicy = Literal["random", "bts"]
Campaign = Literal["all", "men", "women"]
BEHAVIOR_POLICIES: tuple[str, ...] = ("random", "bts")
CAMPAIGNS: tuple[str, ...] = ("all", "men", "women")
#: ZOZOTOWN is a Japanese shop; ``hour`` and ``weekday`` are local to it.
LOCAL_TZ = "Asia/Tokyo"

OBP_ARCHIVE = RegistryArchive(
    package="obp",
    version="0.5.7",
    filename="obp-0.5.7.tar.gz",
    sha256="3060d67fedfcfadf1e7a6f2608987f74412b5eb74d2c567edeb147595c68f2a0",
    members=("obp-0.5.7/obp/dataset/obd/",),
    strip_prefix="obp-0.5.7/obp/dataset/",
    pip_args=("--no-binary=:all:", "--ignore-requires-python"),
)


@dataclass(frozen=True)
class ObdData:
    """One logged-bandit-feedback file, sorted by time, with the arrays off-policy evaluation needs.

    ``actions``: item index per round (0..n_actions-1); ``positions``: 0-based slot; ``rewards``: click (0/1);
    ``propensities``: probability the logging policy chose this item for this slot; ``context``: one-hot user
    features (as obp's default pre-processing: ``get_dummies(..., drop_first=True)``); ``action_context``:
    item features (label-encoded categoricals, then the numeric ``item_feature_0``); ``user_item_affinity``:
    the per-round affinity of the user to every item.
    """

    behavior_policy: str
    campaign: str
    frame: pd.DataFrame
    item_context: pd.DataFrame
    timestamps: pd.Series
    actions: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    context: np.ndarray
    action_context: np.ndarray
    user_item_affinity: np.ndarray

    @property
    def n_rounds(self) -> int:
        return len(self.actions)

    @property
    def n_actions(self) -> int:
        return len(self.item_context)

    @property
    def len_list(self) -> int:
        return int(self.positions.max()) + 1

    @property
    def click_rate(self) -> float:
        """The logging policy's on-policy CTR (the ground truth that OPE estimates are compared against)."""
        return float(self.rewards.mean())


def obd_files(cache_dir: Path) -> CachedFiles:
    """The OBD sample files in the cache (downloading the obp sdist once if needed)."""
    return fetch_archive_files(OBP_ARCHIVE, cache_dir)


def load_obd(
    cache_dir: Path,
    behavior_policy: BehaviorPolicy = "random",
    campaign: Campaign = "all",
    *,
    files: CachedFiles | None = None,
) -> ObdData:
    """Load one OBD log (``behavior_policy`` x ``campaign``) from the cache, fetching it first if needed."""
    if behavior_policy not in BEHAVIOR_POLICIES:
        raise DataError(f"unknown OBD behavior policy {behavior_policy!r}; expected one of {BEHAVIOR_POLICIES}")
    if campaign not in CAMPAIGNS:
        raise DataError(f"unknown OBD campaign {campaign!r}; expected one of {CAMPAIGNS}")
    files = files or obd_files(cache_dir)
    base = files.path(f"obd/{behavior_policy}/{campaign}")
    log_path, item_path = base / f"{campaign}.csv", base / "item_context.csv"
    try:
        data = pd.read_csv(log_path, index_col=0)
        items = pd.read_csv(item_path, index_col=0)
    except (OSError, ValueError) as exc:
        raise DataError(f"{log_path}: cannot read the OBD file: {exc}") from None
    data["timestamp"] = pd.to_datetime(data["timestamp"], utc=True, format="ISO8601")
    data = data.sort_values("timestamp", kind="stable").reset_index(drop=True)
    items = items.sort_values("item_id").reset_index(drop=True)

    user_cols = [c for c in data.columns if c.startswith("user_feature")]
    affinity_cols = sorted((c for c in data.columns if c.startswith("user-item_affinity_")),
                           key=lambda c: int(c.rsplit("_", 1)[1]))
    context = pd.get_dummies(data[user_cols], drop_first=True).to_numpy(dtype=np.float64)
    categorical = items.drop(columns=["item_id", "item_feature_0"])
    # Sorted codes, like sklearn's LabelEncoder in obp's default pre-processing.
    encoded = categorical.apply(lambda col: pd.Series(pd.factorize(col, sort=True)[0], index=col.index))
    action_context = pd.concat([encoded, items[["item_feature_0"]]], axis=1).to_numpy(dtype=np.float64)
    positions = data["position"].to_numpy()
    return ObdData(
        behavior_policy=behavior_policy,
        campaign=campaign,
        frame=data,
        item_context=items,
        timestamps=data["timestamp"],
        actions=data["item_id"].to_numpy(dtype=np.int64),
        positions=(pd.Series(positions).rank(method="dense").to_numpy(dtype=np.int64) - 1),
        rewards=data["click"].to_numpy(dtype=np.int64),
        propensities=data["propensity_score"].to_numpy(dtype=np.float64),
        context=context,
        action_context=action_context,
        user_item_affinity=data[affinity_cols].to_numpy(dtype=np.float64),
    )


def _item_id(campaign: str, ids: pd.Series) -> pd.Series:
    # The men/women campaigns number their items from 0 again; keep them apart from the "all" catalog.
    text = ids.astype(str)
    return text if campaign == "all" else campaign + "-" + text


def _user_id(frame: pd.DataFrame) -> pd.Series:
    """OBD has no user ids; rounds with identical (hashed) user features are one pseudo-user."""
    cols = sorted(c for c in frame.columns if c.startswith("user_feature"))
    key = frame[cols].astype(str).agg("|".join, axis=1)
    return key.map(lambda k: "obd-u-" + hashlib.sha1(k.encode()).hexdigest()[:12])


def obd_tables(logs: list[ObdData]) -> dict[str, pd.DataFrame]:
    """Convert OBD logs to recflow ``events``, ``items`` and ``users`` tables.

    Every round becomes an ``impression`` event (position 0-based, the logging policy's propensity and id, the
    round as request); a round with a click also gets a ``click`` event with the same keys.
    """
    events, items, users = [], [], []
    for log in logs:
        f = log.frame
        prefix = f"obd-{log.behavior_policy}-{log.campaign}-"
        rounds = prefix + pd.Series(np.arange(len(f)), dtype=str)
        local = f["timestamp"].dt.tz_convert(LOCAL_TZ)
        base = pd.DataFrame({
            "event_type": "impression",
            "timestamp": f["timestamp"].dt.floor("ms").astype("datetime64[ms, UTC]"),
            "user_id": _user_id(f),
            "item_id": _item_id(log.campaign, f["item_id"]),
            "request_id": rounds,
            "position": log.positions.astype(np.int32),
            "hour": local.dt.hour.astype(np.int8),
            "weekday": local.dt.weekday.astype(np.int8),
            "policy_id": log.behavior_policy,
            "propensity": log.propensities,
        })
        for c in sorted(c for c in f.columns if c.startswith("user_feature")):
            base[c] = f[c].astype(str)
        impressions = base.assign(event_id=rounds + "-impression")
        clicks = base[log.rewards == 1].assign(event_type="click", event_id=rounds[log.rewards == 1] + "-click")
        events += [impressions, clicks]
        it = log.item_context
        feature_cols = [c for c in it.columns if c.startswith("item_feature")]
        items.append(pd.DataFrame({
            "item_id": _item_id(log.campaign, it["item_id"]),
            "category": it["item_feature_1"].astype(str),
            "attributes": it[feature_cols].astype(str).apply(
                lambda row: ";".join(f"{k}={v}" for k, v in row.items()), axis=1),
            **{c: it[c] for c in feature_cols},
        }))
        users.append(pd.DataFrame({"user_id": base["user_id"], "segment": f["user_feature_0"].astype(str)}))
    ev = pd.concat(events, ignore_index=True).sort_values(["timestamp", "event_id"], kind="stable",
                                                          ignore_index=True)
    first = ["event_id", "event_type", "timestamp", "user_id", "item_id", "request_id", "position", "hour",
             "weekday", "policy_id", "propensity"]
    ev = ev[first + [c for c in ev.columns if c not in first]]
    return {
        "events": ev,
        "items": pd.concat(items, ignore_index=True).drop_duplicates("item_id", ignore_index=True),
        "users": pd.concat(users, ignore_index=True).drop_duplicates("user_id", ignore_index=True),
    }
