"""Logged feedback -> per-arm bandit decisions.

Each impression slot is one bandit decision (see docs/policy.md): the logging policy put item ``a`` at position
``p`` of request ``r`` with propensity ``P(a at p | context)``; the reward is the weighted sum of the click,
add-to-cart and purchase that followed. The arms of a decision are the shown item plus ``num_arms - 1`` catalog
items sampled uniformly (they only fill the fixed-size arm tensor TF-Agents needs: reward regression learns from
the chosen arm alone, so they bias nothing).

Features:

* global (context): the user's embedding from the retrieval model (unknown users: the mean user or zeros), plus
  one-hot hour (24), weekday (7) and device (known devices + "other") when the log has those columns;
* per arm: ``[item embedding, user embedding * item embedding, user . item]`` -- the element-wise product and the
  retrieval score let even a linear per-arm agent weigh the user-item affinity, not only item popularity.

No TensorFlow here: plain numpy/pandas, so serving and evaluation can build the same features cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.examplegen import read_split_path
from recflow.io import epoch_seconds
from recflow.policy.config import PolicyConfig
from recflow.schema import DEVICES

#: Point-in-time user states of logged impressions (user_id, seconds, embedding), written by the TFRS trainer
#: beside a sequence model (recflow.training.history_ranking.write_decision_states); when present a decision's
#: user features are the state of the user's history strictly before it, not the user's final state.
DECISION_STATES_FILE = "decision_states.parquet"

#: The context columns that become one-hot global features when a log has them, with their categories.
CONTEXT_CATEGORIES: dict[str, tuple[Any, ...]] = {
    "hour": tuple(range(24)),
    "weekday": tuple(range(7)),
    "device": (*DEVICES, "other"),
}


@dataclass(frozen=True)
class FeatureLayout:
    """How the global and per-arm feature vectors are laid out; saved with the policy so serving rebuilds them."""

    embedding_dim: int
    context_columns: tuple[str, ...]
    unknown_user_embedding: tuple[float, ...]

    @property
    def global_dim(self) -> int:
        return self.embedding_dim + sum(len(CONTEXT_CATEGORIES[c]) for c in self.context_columns)

    @property
    def arm_dim(self) -> int:
        return 2 * self.embedding_dim + 1

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (policy_meta.json)."""
        return {
            "embedding_dim": self.embedding_dim,
            "context_columns": list(self.context_columns),
            "context_categories": {c: list(CONTEXT_CATEGORIES[c]) for c in self.context_columns},
            "global": ["user_embedding"] + [f"{c}_onehot" for c in self.context_columns],
            "global_dim": self.global_dim,
            "per_arm": ["item_embedding", "user_embedding*item_embedding", "user_embedding.item_embedding"],
            "arm_dim": self.arm_dim,
            "unknown_user_embedding": list(self.unknown_user_embedding),
        }

    @classmethod
    def from_description(cls, desc: Mapping[str, Any]) -> FeatureLayout:
        return cls(
            embedding_dim=int(desc["embedding_dim"]),
            context_columns=tuple(desc["context_columns"]),
            unknown_user_embedding=tuple(float(x) for x in desc["unknown_user_embedding"]),
        )


@dataclass
class BanditData:
    """Logged per-slot bandit decisions, aligned arrays of length ``n`` (one entry per shown slot)."""

    request_ids: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray  #: the logged (shown) item of each decision
    positions: np.ndarray  #: slot position, 0 when the log has none
    propensities: np.ndarray  #: logging probability of the shown item at that position
    rewards: np.ndarray  #: weighted feedback (reward_weights)
    clicks: np.ndarray  #: 1.0 when the slot was clicked
    add_to_carts: np.ndarray
    purchases: np.ndarray  #: 1.0 when the shown item was bought (the conversion outcome)
    global_features: np.ndarray  #: [n, global_dim] float32
    arm_rows: np.ndarray  #: [n, num_arms] int64 rows of the arms' items in the catalog
    chosen_arms: np.ndarray  #: [n] index of the logged item among the arms
    user_embeddings: np.ndarray  #: [n, embedding_dim] (fallback embedding for unknown users)
    context: pd.DataFrame  #: the context columns in layout.context_columns, one row per decision
    layout: FeatureLayout
    propensity_source: str  #: "logged", "estimated" (empirical logging frequencies) or "mixed"
    catalog_ids: np.ndarray  #: [n_items] the candidate catalog's item ids (str)
    catalog_embeddings: np.ndarray  #: [n_items, embedding_dim] the catalog's item embeddings
    notes: list[str] = field(default_factory=list)  #: what was assumed or dropped, for the user

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def candidate_item_ids(self) -> np.ndarray:
        """[n, num_arms] item ids of the arms."""
        return self.catalog_ids[self.arm_rows]

    @property
    def arm_features(self) -> np.ndarray:
        """[n, num_arms, arm_dim] float32 per-arm features of every decision (:func:`arm_features`), built on
        demand: ``num_arms`` x ``arm_dim`` floats a decision (2.6 KB at 10 arms of 32-dim embeddings), so they are
        not kept; training reads only :attr:`chosen_arm_features`."""
        return arm_features(self.user_embeddings, self.catalog_embeddings[self.arm_rows])

    @property
    def chosen_arm_features(self) -> np.ndarray:
        """[n, arm_dim] features of the logged item of each decision (the same values as
        ``arm_features[range(n), chosen_arms]``, without building the other arms')."""
        chosen = self.arm_rows[np.arange(len(self)), self.chosen_arms]
        return arm_features(self.user_embeddings, self.catalog_embeddings[chosen][:, None, :])[:, 0]

    def subset(self, index: np.ndarray) -> BanditData:
        """The decisions at ``index`` (same layout, catalog and notes)."""
        arrays = {
            name: getattr(self, name)[index]
            for name in (
                "request_ids", "user_ids", "item_ids", "positions", "propensities", "rewards", "clicks",
                "add_to_carts", "purchases", "global_features", "arm_rows", "chosen_arms", "user_embeddings",
            )
        }
        return BanditData(
            **arrays,
            context=self.context.iloc[index].reset_index(drop=True),
            layout=self.layout,
            propensity_source=self.propensity_source,
            catalog_ids=self.catalog_ids,
            catalog_embeddings=self.catalog_embeddings,
            notes=list(self.notes),
        )


# --------------------------------------------------------------------------------------------------- embeddings


def read_embeddings(path: Path, id_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(ids, matrix)`` from an embeddings Parquet file with columns ``id_column`` and ``embedding``."""
    if not path.is_file():
        raise DataError(f"{path}: embeddings file not found (expected the retrieval model's output)")
    try:
        df = pd.read_parquet(path, columns=[id_column, "embedding"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read columns {id_column!r} and 'embedding': {exc}") from None
    if df.empty:
        raise DataError(f"{path}: no embeddings")
    lengths = df["embedding"].map(lambda v: 0 if v is None else len(v))
    bad = np.flatnonzero(lengths.to_numpy() != lengths.iloc[0])
    if lengths.iloc[0] == 0 or bad.size:
        row = int(bad[0]) if bad.size else 0
        raise DataError(
            f"{path}: row {row}, field 'embedding': every embedding must have the same non-zero length "
            f"(row 0 has {int(lengths.iloc[0])}, row {row} has {int(lengths.iloc[row])})"
        )
    matrix = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    if not np.isfinite(matrix).all():
        row = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise DataError(f"{path}: row {row}, field 'embedding': contains NaN or infinity")
    ids = df[id_column].astype(str).to_numpy()
    dup = pd.Index(ids).duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DataError(f"{path}: row {row}, field {id_column!r}: duplicate id {ids[row]!r}")
    return ids, matrix


# ------------------------------------------------------------------------------------------------------ features


def context_onehots(context: pd.DataFrame | Mapping[str, Any] | None, columns: Sequence[str], n: int) -> np.ndarray:
    """One-hot encode the context ``columns`` (hour, weekday, device) for ``n`` decisions; missing -> all zeros."""
    blocks = []
    for col in columns:
        cats = CONTEXT_CATEGORIES[col]
        block = np.zeros((n, len(cats)), dtype=np.float32)
        values = None if context is None else context.get(col)
        if values is not None:
            series = pd.Series(np.asarray(values, dtype=object).reshape(-1) if np.ndim(values) else [values] * n)
            if len(series) != n:
                raise DataError(f"context column {col!r} has {len(series)} values for {n} decisions")
            if col == "device":
                known = series.notna()
                idx = series.map({d: i for i, d in enumerate(cats)}).fillna(len(cats) - 1)
            else:
                num = pd.to_numeric(series, errors="coerce")
                known = num.between(0, len(cats) - 1)
                idx = num.where(known, 0)
            rows = np.flatnonzero(known.to_numpy())
            block[rows, idx.to_numpy()[rows].astype(int)] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), dtype=np.float32)


def global_features(user_embeddings: np.ndarray, context_block: np.ndarray) -> np.ndarray:
    """[n, global_dim]: user embedding followed by the context one-hots."""
    return np.concatenate([user_embeddings.astype(np.float32), context_block], axis=1).astype(np.float32)


def arm_features(user_embeddings: np.ndarray, item_embeddings: np.ndarray) -> np.ndarray:
    """[n, arms, arm_dim] from user embeddings [n, d] and the arms' item embeddings [n, arms, d]."""
    user = user_embeddings[:, None, :].astype(np.float32)
    prod = user * item_embeddings
    dot = prod.sum(axis=-1, keepdims=True)
    return np.concatenate([item_embeddings.astype(np.float32), prod, dot], axis=-1).astype(np.float32)


def lookup_user_embeddings(
    user_ids: Sequence[str], known_ids: np.ndarray, known: np.ndarray, fallback: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [n, d], is_unknown [n])``: the known users' rows, ``fallback`` for the others."""
    pos = pd.Index(known_ids).get_indexer(pd.Index(np.asarray(user_ids, dtype=object).astype(str)))
    unknown = pos < 0
    out = known[np.where(unknown, 0, pos)].copy()
    out[unknown] = fallback
    return out, unknown


# ----------------------------------------------------------------------------------------------- logged events


def _attribute_feedback(impressions: pd.DataFrame, events: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Flag on each impression whether a click / add_to_cart / purchase of the same slot followed."""
    imp = impressions
    for kind in ("click", "add_to_cart", "purchase"):
        fb = events[events["event_type"] == kind]
        hit = np.zeros(len(imp), dtype=bool)
        if not fb.empty:
            with_req = fb["request_id"].notna() if "request_id" in fb else pd.Series(False, index=fb.index)
            if with_req.any():
                keys = set(zip(fb.loc[with_req, "request_id"], fb.loc[with_req, "user_id"],
                               fb.loc[with_req, "item_id"], strict=True))
                hit |= np.fromiter(
                    ((r, u, i) in keys for r, u, i in zip(imp["request_id"], imp["user_id"], imp["item_id"],
                                                           strict=True)),
                    dtype=bool, count=len(imp),
                )
            rest = fb[~with_req]
            if not rest.empty:
                # No request id on the feedback: credit the latest earlier impression of the same user and item.
                left = rest[["timestamp", "user_id", "item_id"]].sort_values("timestamp")
                right = imp[["timestamp", "user_id", "item_id"]].assign(_row=np.arange(len(imp)))
                right = right.sort_values("timestamp")
                matched = pd.merge_asof(
                    left, right, on="timestamp", by=["user_id", "item_id"], direction="backward",
                    tolerance=pd.Timedelta(seconds=window_s),
                )
                rows = matched["_row"].dropna().astype(int).to_numpy()
                hit[rows] = True
        imp[kind] = hit.astype(np.float32)
    return imp


def _estimate_propensities(imp: pd.DataFrame) -> np.ndarray:
    """Empirical logging frequency of each shown item at its position (share of that position's impressions)."""
    counts = imp.groupby(["position", "item_id"], sort=False)["item_id"].transform("size")
    totals = imp.groupby("position", sort=False)["item_id"].transform("size")
    return (counts / totals).to_numpy(dtype=np.float64)


#: The event columns :func:`build_bandit_data` reads (those a log has): the rest of a split is not loaded.
EVENT_COLUMNS: tuple[str, ...] = ("event_type", "timestamp", "user_id", "item_id", "request_id", "position",
                                  "propensity", *CONTEXT_CATEGORIES)


def _present_columns(path: Path, wanted: Sequence[str]) -> list[str]:
    """The columns of ``wanted`` that the events Parquet file (or directory of shards) ``path`` has."""
    import pyarrow.parquet as pq

    shards = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not shards:
        raise DataError(f"{path}: no Parquet shards in the events directory")
    names = set(pq.read_schema(shards[0]).names)
    return [c for c in wanted if c in names]


def read_events(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read an events Parquet file (all columns, or those of ``columns`` it has) and check the columns this
    module needs."""
    if not (path.is_file() or path.is_dir()):  # a split may be a directory of shards (beam engine)
        raise DataError(f"{path}: events file not found")
    try:
        df = read_split_path(path, None if columns is None else _present_columns(path, columns))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from None
    missing = [c for c in ("event_type", "timestamp", "user_id", "item_id") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}")
    return df


def _impressions(events: pd.DataFrame, config: PolicyConfig, source: str, notes: list[str]) -> pd.DataFrame:
    """The log's impressions with typed ids and timestamps, a request id each, their feedback attributed."""
    df = events.copy(deep=False)  # whole columns are replaced below, never written into: no need to copy the data
    df["user_id"] = df["user_id"].astype(str)
    df["item_id"] = df["item_id"].astype(str)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    for col in ("request_id", "position", "propensity"):
        if col not in df.columns:
            df[col] = None
    imp = df[df["event_type"] == "impression"].copy()
    if imp.empty:
        raise DataError(f"{source}: no impression events; the policy learns from logged impressions and feedback")
    imp = imp.reset_index(drop=True)
    no_req = imp["request_id"].isna()
    if no_req.any():
        # Without a request id an impression is its own request (one decision, its own context).
        imp.loc[no_req, "request_id"] = "imp-" + imp.index[no_req].astype(str)
        notes.append(f"{int(no_req.sum())} impressions without request_id treated as single-slot requests")
    imp["position"] = pd.to_numeric(imp["position"], errors="coerce").fillna(0).astype(np.int64)
    return _attribute_feedback(imp, df, config.attribution_window_s)


def _propensities(imp: pd.DataFrame, source: str, notes: list[str]) -> tuple[np.ndarray, str]:
    """Each impression's propensity, logged where present, else estimated from the whole log; and the source."""
    logged = pd.to_numeric(imp["propensity"], errors="coerce")
    valid = logged.gt(0) & logged.le(1)
    if (logged.notna() & ~valid).any():
        row = int(np.flatnonzero((logged.notna() & ~valid).to_numpy())[0])
        raise DataError(f"{source}: impression {row}, field 'propensity': {logged.iloc[row]} is not in (0, 1]")
    if valid.all():
        return logged.to_numpy(dtype=np.float64), "logged"
    estimated = _estimate_propensities(imp)
    props = np.where(valid.to_numpy(), logged.to_numpy(dtype=np.float64, na_value=np.nan), estimated)
    notes.append(
        f"{int((~valid).sum())} of {len(imp)} impressions had no propensity; estimated from the empirical "
        "logging frequency of the item at its position"
    )
    return props, "estimated" if not valid.any() else "mixed"


def _training_layout(imp: pd.DataFrame, item_embeddings: np.ndarray, user_embeddings: np.ndarray,
                     config: PolicyConfig) -> FeatureLayout:
    """The feature layout of training data: the embedding size, the context columns the log has, the
    unknown user's embedding (the mean user or zeros, ``policy.unknown_user``)."""
    if config.unknown_user == "mean":
        fallback = user_embeddings.mean(axis=0)
    else:
        fallback = np.zeros(user_embeddings.shape[1], dtype=np.float32)
    context_cols = tuple(c for c in CONTEXT_CATEGORIES if c in imp.columns and imp[c].notna().any())
    return FeatureLayout(
        embedding_dim=int(item_embeddings.shape[1]),
        context_columns=context_cols,
        unknown_user_embedding=tuple(float(x) for x in fallback),
    )


def _decision_user_embeddings(imp: pd.DataFrame, user_ids: np.ndarray, user_embeddings: np.ndarray,
                              layout: FeatureLayout, decision_states: pd.DataFrame | None, config: PolicyConfig,
                              notes: list[str]) -> np.ndarray:
    """Each decision's user embedding: the user's point-in-time state where ``decision_states`` has one, else
    the trained embedding, else the layout's unknown user."""
    fallback = np.asarray(layout.unknown_user_embedding, dtype=np.float32)
    user_emb, unknown = lookup_user_embeddings(imp["user_id"].to_numpy(), user_ids, user_embeddings, fallback)
    if decision_states is not None and len(decision_states):
        seconds = epoch_seconds(imp["timestamp"])
        keys = pd.MultiIndex.from_arrays([imp["user_id"].to_numpy(), seconds])
        known = pd.MultiIndex.from_arrays([decision_states["user_id"].astype(str).to_numpy(),
                                           decision_states["seconds"].to_numpy(np.float64)])
        pos = known.get_indexer(keys)
        hit = pos >= 0
        if hit.any():
            table = np.stack(decision_states["embedding"].to_numpy()).astype(np.float32)
            user_emb[hit] = table[pos[hit]]
            unknown = unknown & ~hit
            notes.append(f"{int(hit.sum())} of {len(imp)} decisions use the user's point-in-time state (history "
                         "strictly before the impression)")
    if unknown.any():
        notes.append(
            f"{int(unknown.sum())} decisions of {imp.loc[unknown, 'user_id'].nunique()} users without an "
            f"embedding use the {config.unknown_user} user embedding"
        )
    return user_emb


def _sample_arms(item_pos: np.ndarray, n_items: int, num_arms: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(arms, chosen)``: per decision the shown item in a random slot ``chosen``, the other slots distinct
    catalog items sampled uniformly."""
    n, k = len(item_pos), num_arms
    others = rng.integers(0, n_items - 1, size=(n, k - 1))
    others = others + (others >= item_pos[:, None])  # skip the shown item
    for row in np.flatnonzero([len(set(r)) < k - 1 for r in others]).tolist():
        pool = np.delete(np.arange(n_items), item_pos[row])
        others[row] = rng.choice(pool, size=k - 1, replace=False)
    chosen = rng.integers(0, k, size=n)
    arms = np.empty((n, k), dtype=np.int64)
    mask = np.ones((n, k), dtype=bool)
    mask[np.arange(n), chosen] = False
    arms[~mask] = item_pos
    arms[mask] = others.reshape(-1)
    return arms, chosen


def build_bandit_data(
    events: pd.DataFrame,
    item_ids: np.ndarray,
    item_embeddings: np.ndarray,
    user_ids: np.ndarray,
    user_embeddings: np.ndarray,
    config: PolicyConfig,
    *,
    source: str = "events",
    layout: FeatureLayout | None = None,
    decision_states: pd.DataFrame | None = None,
) -> BanditData:
    """Turn an event log into per-slot bandit decisions (see the module docstring).

    ``item_ids``/``item_embeddings`` are the candidate catalog (the retrieval model's item embeddings) and
    ``user_ids``/``user_embeddings`` the known users. Impressions of items without an embedding are dropped and
    counted in ``notes``. Missing propensities are estimated from the empirical logging frequencies of the log
    itself (noted, and ``propensity_source`` says so). Pass the training ``layout`` to build evaluation data
    with the same features. ``decision_states`` (:data:`DECISION_STATES_FILE`'s frame) replaces a decision's
    user embedding by the user's state at the impression's time where it has one.
    """
    n_items = len(item_ids)
    if n_items < config.num_arms:
        raise DataError(
            f"{source}: the catalog has {n_items} items with embeddings, fewer than policy.num_arms="
            f"{config.num_arms}; lower num_arms"
        )
    notes: list[str] = []
    imp = _impressions(events, config, source, notes)
    # Propensities: logged where present, else estimated from the whole log (before dropping anything).
    props, propensity_source = _propensities(imp, source, notes)
    item_index = pd.Index(np.asarray(item_ids).astype(str))
    item_pos = item_index.get_indexer(imp["item_id"])
    keep = item_pos >= 0
    if not keep.all():
        notes.append(f"{int((~keep).sum())} impressions of items without an embedding dropped")
        imp, item_pos, props = imp[keep].reset_index(drop=True), item_pos[keep], props[keep]
    if imp.empty:
        raise DataError(f"{source}: none of the shown items has an embedding in the retrieval model")
    if layout is None:
        layout = _training_layout(imp, item_embeddings, user_embeddings, config)
    return _decisions(imp, item_pos, props, propensity_source, item_index, item_embeddings, user_ids,
                      user_embeddings, config, source, layout, decision_states, notes)


def _decisions(imp: pd.DataFrame, item_pos: np.ndarray, props: np.ndarray, propensity_source: str,
               item_index: pd.Index, item_embeddings: np.ndarray, user_ids: np.ndarray, user_embeddings: np.ndarray,
               config: PolicyConfig, source: str, layout: FeatureLayout, decision_states: pd.DataFrame | None,
               notes: list[str]) -> BanditData:
    """The :class:`BanditData` of the impressions ``imp`` (feedback attributed, items in the catalog at
    ``item_pos``, propensities ``props``): user features, sampled arms and rewards."""
    rng = np.random.default_rng(config.seed)
    n = len(imp)
    if item_embeddings.shape[1] != layout.embedding_dim or user_embeddings.shape[1] != layout.embedding_dim:
        raise DataError(
            f"{source}: embedding sizes (items {item_embeddings.shape[1]}, users {user_embeddings.shape[1]}) "
            f"differ from the feature layout's {layout.embedding_dim}"
        )
    user_emb = _decision_user_embeddings(imp, user_ids, user_embeddings, layout, decision_states, config, notes)
    arms, chosen = _sample_arms(item_pos, len(item_index), config.num_arms, rng)
    context = pd.DataFrame({c: imp[c].to_numpy() for c in layout.context_columns})
    gfeat = global_features(user_emb, context_onehots(context, layout.context_columns, n))
    weights = config.reward_weights
    rewards = (weights.click * imp["click"] + weights.add_to_cart * imp["add_to_cart"]
               + weights.purchase * imp["purchase"]).to_numpy(dtype=np.float32)
    return BanditData(
        request_ids=imp["request_id"].astype(str).to_numpy(),
        user_ids=imp["user_id"].to_numpy(),
        item_ids=imp["item_id"].to_numpy(),
        positions=imp["position"].to_numpy(),
        propensities=props,
        rewards=rewards,
        clicks=imp["click"].to_numpy(dtype=np.float32),
        add_to_carts=imp["add_to_cart"].to_numpy(dtype=np.float32),
        purchases=imp["purchase"].to_numpy(dtype=np.float32),
        global_features=gfeat,
        arm_rows=arms,
        chosen_arms=chosen.astype(np.int64),
        user_embeddings=user_emb,
        context=context,
        layout=layout,
        propensity_source=propensity_source,
        catalog_ids=item_index.to_numpy(),
        catalog_embeddings=np.asarray(item_embeddings),
        notes=notes,
    )


#: Rows of the events split read at a time by :func:`load_capped_bandit_data` (one Arrow record batch).
READ_BATCH_ROWS = 262_144


def _split_shards(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    shards = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not shards:
        raise DataError(f"{path}: events file not found (no Parquet file or shards)")
    return shards


def _event_batches(path: Path, columns: Sequence[str], batch_rows: int) -> Any:
    """The events split at ``path`` (file or directory of shards) in file order, as pandas frames of at most
    ``batch_rows`` rows holding those of ``columns`` the split has."""
    import pyarrow.parquet as pq

    shards = _split_shards(path)
    present = [c for c in columns if c in set(pq.read_schema(shards[0]).names)]
    for shard in shards:
        try:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows, columns=present):
                yield batch.to_pandas()
        except (OSError, ValueError) as exc:
            raise DataError(f"{shard}: cannot read as Parquet: {exc}") from None


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids as strings and timestamps as UTC datetimes, as :func:`_impressions` types them."""
    frame = frame.copy(deep=False)
    frame["user_id"] = frame["user_id"].astype(str)
    frame["item_id"] = frame["item_id"].astype(str)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


@dataclass
class _LogScan:
    """What the first pass over a split learns: counts, propensity statistics, context columns, order."""

    impressions: int = 0
    kept: int = 0  #: impressions of items with an embedding
    no_request: int = 0
    propensity_missing: int = 0
    counts: pd.Series | None = None  #: impressions per (position, item_id) (only when a propensity is missing)
    context_columns: set[str] = field(default_factory=set)
    in_time_order: bool = True
    last_key: tuple[Any, ...] | None = None


def _scan_log(path: Path, item_index: pd.Index, batch_rows: int) -> _LogScan:
    """Pass 1 over the split: impression counts, the propensities' validity and per-(position, item) counts,
    which context columns the impressions have, and whether the rows are in (timestamp, event_id) order."""
    scan = _LogScan()
    cols = ("event_type", "timestamp", "event_id", "item_id", "request_id", "position", "propensity",
            *CONTEXT_CATEGORIES)
    counts: list[pd.Series] = []
    for chunk in _event_batches(path, cols, batch_rows):
        keys = [c for c in ("timestamp", "event_id") if c in chunk.columns]
        ordered = chunk.sort_values(keys, kind="stable").index
        first = tuple(chunk[k].iloc[0] for k in keys) if len(chunk) else None
        if not ordered.equals(chunk.index) or (scan.last_key is not None and first is not None
                                                and first < scan.last_key):
            scan.in_time_order = False
        if len(chunk):
            scan.last_key = tuple(chunk[k].iloc[-1] for k in keys)
        imp = chunk[chunk["event_type"] == "impression"]
        if imp.empty:
            continue
        logged = pd.to_numeric(imp["propensity"], errors="coerce") if "propensity" in imp else None
        if logged is not None:
            bad = logged.notna() & ~(logged.gt(0) & logged.le(1))
            if bad.any():
                row = scan.impressions + int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{path}: impression {row}, field 'propensity': "
                                f"{logged[bad].iloc[0]} is not in (0, 1]")
        missing = len(imp) if logged is None else int((~(logged.gt(0) & logged.le(1))).sum())
        scan.propensity_missing += missing
        position = pd.to_numeric(imp["position"], errors="coerce").fillna(0).astype(np.int64) \
            if "position" in imp else pd.Series(0, index=imp.index, dtype=np.int64)
        counts.append(pd.DataFrame({"position": position.to_numpy(), "item_id": imp["item_id"].astype(str)
                                    .to_numpy()}).groupby(["position", "item_id"], sort=False).size())
        if len(counts) > 8:  # keep the per-(position, item) counts bounded by the catalog, not the log
            counts = [pd.concat(counts).groupby(level=[0, 1], sort=False).sum()]
        if "request_id" in imp:
            scan.no_request += int(imp["request_id"].isna().sum())
        else:
            scan.no_request += len(imp)
        scan.kept += int((item_index.get_indexer(imp["item_id"].astype(str)) >= 0).sum())
        scan.impressions += len(imp)
        scan.context_columns |= {c for c in CONTEXT_CATEGORIES if c in imp.columns and imp[c].notna().any()}
    if scan.propensity_missing and counts:
        scan.counts = pd.concat(counts).groupby(level=[0, 1], sort=False).sum()
    return scan


def _select_impressions(path: Path, item_index: pd.Index, selected: np.ndarray, batch_rows: int) -> pd.DataFrame:
    """Pass 2: the impressions whose rank among the kept impressions (items with an embedding) is in the
    sorted array ``selected``, typed as :func:`_impressions` types them, with their log-wide impression index."""
    parts, seen_imp, seen_kept = [], 0, 0
    for chunk in _event_batches(path, EVENT_COLUMNS, batch_rows):
        imp = chunk[chunk["event_type"] == "impression"]
        if imp.empty:
            continue
        kept = np.flatnonzero(item_index.get_indexer(imp["item_id"].astype(str)) >= 0)
        ranks = seen_kept + np.arange(len(kept))
        take = kept[np.isin(ranks, selected, assume_unique=True)]
        if take.size:
            part = _typed(imp.iloc[take])
            part["_imp"] = seen_imp + take
            parts.append(part)
        seen_imp += len(imp)
        seen_kept += len(kept)
    frame = pd.concat(parts, ignore_index=True)
    for col in ("request_id", "position", "propensity"):
        if col not in frame.columns:
            frame[col] = None
    return frame


def _selected_feedback(path: Path, imp: pd.DataFrame, batch_rows: int) -> pd.DataFrame:
    """Pass 3: the click / add-to-cart / purchase events that can be attributed to the impressions ``imp``
    (same request id, or without a request id the same user and item)."""
    requests = set(imp["request_id"].dropna())
    pairs = pd.MultiIndex.from_arrays([imp["user_id"], imp["item_id"]]).unique()
    parts = []
    for chunk in _event_batches(path, ("event_type", "timestamp", "user_id", "item_id", "request_id"),
                                batch_rows):
        fb = chunk[chunk["event_type"].isin(["click", "add_to_cart", "purchase"])]
        if fb.empty:
            continue
        fb = _typed(fb)
        if "request_id" in fb:
            with_req = fb["request_id"].notna()
            mine = with_req & fb["request_id"].isin(requests)
        else:
            with_req = pd.Series(False, index=fb.index)
            mine = with_req.copy()
        rest = ~with_req
        if rest.any():
            keys = pd.MultiIndex.from_arrays([fb["user_id"], fb["item_id"]])
            mine |= rest & keys.isin(pairs)
        parts.append(fb[mine.to_numpy()])
    columns = ["event_type", "timestamp", "user_id", "item_id", "request_id"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def load_capped_bandit_data(
    events_path: Path, item_ids: np.ndarray, item_embeddings: np.ndarray, user_ids: np.ndarray,
    user_embeddings: np.ndarray, config: PolicyConfig, max_decisions: int, *,
    states_path: Path | None = None, batch_rows: int = READ_BATCH_ROWS,
) -> BanditData | None:
    """The bandit data of at most ``max_decisions`` logged decisions, read in chunks of ``batch_rows`` rows.

    The split is read three times, only the columns used, never whole: (1) counts and the propensity statistics
    of the whole log, (2) the decisions sampled with ``config.seed`` among the impressions of items with an
    embedding (in log order), (3) the feedback events of the sampled requests. Memory is bounded by the cap and
    the catalog, not the log. When the cap does not bind, the decisions are those of :func:`build_bandit_data`
    on the whole split (the same arrays). Returns None when the split is not in (timestamp, event_id) order
    (a directory of shards written out of order): the caller then loads it whole.
    """
    events_path = Path(events_path)
    source = str(events_path)
    item_index = pd.Index(np.asarray(item_ids).astype(str))
    if len(item_index) < config.num_arms:
        raise DataError(
            f"{source}: the catalog has {len(item_index)} items with embeddings, fewer than policy.num_arms="
            f"{config.num_arms}; lower num_arms"
        )
    scan = _scan_log(events_path, item_index, batch_rows)
    if not scan.in_time_order:
        return None
    if scan.impressions == 0:
        raise DataError(f"{source}: no impression events; the policy learns from logged impressions and feedback")
    if scan.kept == 0:
        raise DataError(f"{source}: none of the shown items has an embedding in the retrieval model")
    notes: list[str] = []
    if scan.kept > max_decisions:
        selected = np.sort(np.random.default_rng(config.seed).choice(scan.kept, max_decisions, replace=False))
    else:
        selected = np.arange(scan.kept)
    imp = _select_impressions(events_path, item_index, selected, batch_rows)
    no_req = imp["request_id"].isna().to_numpy()
    if scan.no_request:
        imp.loc[no_req, "request_id"] = "imp-" + imp.loc[no_req, "_imp"].astype(str)
        notes.append(f"{scan.no_request} impressions without request_id treated as single-slot requests")
    imp["position"] = pd.to_numeric(imp["position"], errors="coerce").fillna(0).astype(np.int64)
    imp = _attribute_feedback(imp, _selected_feedback(events_path, imp, batch_rows), config.attribution_window_s)
    logged = pd.to_numeric(imp["propensity"], errors="coerce")
    valid = (logged.gt(0) & logged.le(1)).to_numpy()
    if scan.propensity_missing == 0:
        props, propensity_source = logged.to_numpy(dtype=np.float64), "logged"
    else:
        assert scan.counts is not None
        totals = scan.counts.groupby(level=0).sum()
        keys = pd.MultiIndex.from_arrays([imp["position"].to_numpy(), imp["item_id"].to_numpy()])
        estimated = (scan.counts.reindex(keys).to_numpy(np.float64)
                     / totals.reindex(imp["position"].to_numpy()).to_numpy(np.float64))
        props = np.where(valid, logged.to_numpy(dtype=np.float64, na_value=np.nan), estimated)
        propensity_source = "estimated" if scan.propensity_missing == scan.impressions else "mixed"
        notes.append(
            f"{scan.propensity_missing} of {scan.impressions} impressions had no propensity; estimated from the "
            "empirical logging frequency of the item at its position"
        )
    if scan.kept < scan.impressions:
        notes.append(f"{scan.impressions - scan.kept} impressions of items without an embedding dropped")
    if scan.kept > max_decisions:
        notes.append(f"trained on {max_decisions} of {scan.kept} decisions (policy.max_decisions, sampled with "
                     f"seed {config.seed}; read in chunks of {batch_rows} rows)")
    item_pos = item_index.get_indexer(imp["item_id"])
    imp = imp.drop(columns="_imp")
    if config.unknown_user == "mean":
        fallback = user_embeddings.mean(axis=0)
    else:
        fallback = np.zeros(user_embeddings.shape[1], dtype=np.float32)
    layout = FeatureLayout(embedding_dim=int(item_embeddings.shape[1]),
                           context_columns=tuple(c for c in CONTEXT_CATEGORIES if c in scan.context_columns),
                           unknown_user_embedding=tuple(float(x) for x in fallback))
    states = _selected_states(states_path, imp, batch_rows) if states_path is not None else None
    return _decisions(imp, item_pos, props, propensity_source, item_index, item_embeddings, user_ids,
                      user_embeddings, config, source, layout, states, notes)


def _selected_states(path: Path, imp: pd.DataFrame, batch_rows: int) -> pd.DataFrame | None:
    """The rows of the decision states file at ``path`` whose (user_id, seconds) is one of ``imp``'s decisions,
    read in chunks (the file has a row per logged impression)."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    wanted = pd.MultiIndex.from_arrays([imp["user_id"].to_numpy(), epoch_seconds(imp["timestamp"])])
    parts = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        keys = pd.MultiIndex.from_arrays([frame["user_id"].astype(str).to_numpy(),
                                          frame["seconds"].to_numpy(np.float64)])
        parts.append(frame[keys.isin(wanted)])
    return pd.concat(parts, ignore_index=True) if parts else None


def load_bandit_data(
    events_path: Path, model_dir: Path, config: PolicyConfig, layout: FeatureLayout | None = None,
    max_decisions: int | None = None,
) -> BanditData:
    """:func:`build_bandit_data` from an events Parquet file and a retrieval model directory.

    With ``max_decisions`` (training data only, no ``layout``) the split is streamed and at most that many
    decisions are built (:func:`load_capped_bandit_data`); a split out of time order is loaded whole and the
    decisions sampled after, as before.
    """
    item_ids, item_emb = read_embeddings(model_dir / bundle_layout.ITEM_EMBEDDINGS_FILE, "item_id")
    user_ids, user_emb = read_embeddings(model_dir / bundle_layout.USER_EMBEDDINGS_FILE, "user_id")
    states_path = Path(model_dir) / DECISION_STATES_FILE
    if max_decisions is not None and layout is None:
        capped = load_capped_bandit_data(events_path, item_ids, item_emb, user_ids, user_emb, config,
                                         max_decisions, states_path=states_path)
        if capped is not None:
            return capped
    states = pd.read_parquet(states_path) if states_path.is_file() else None
    return build_bandit_data(
        read_events(events_path, EVENT_COLUMNS), item_ids, item_emb, user_ids, user_emb, config,
        source=str(events_path), layout=layout, decision_states=states,
    )
