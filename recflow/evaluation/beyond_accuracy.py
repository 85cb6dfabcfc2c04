"""Beyond-accuracy metrics of recommendation lists: diversity, novelty and how exposure is spread over the catalog.

Accuracy alone rewards recommending the same few best-sellers to everybody. These list-level metrics show what a
method does to the catalog (all computed on the top-k lists of the evaluated users; ``k`` slots per list):

* ``diversity@k`` -- intra-list diversity: mean pairwise distance of the items in a list, averaged over lists
  with at least two items. Distance is 1 between items of different categories and 0 within one category
  (items without a category count as their own group ``"(none)"``); ``embedding_diversity@k`` uses the cosine
  distance ``1 - cos(e_i, e_j)`` of item embeddings instead.
* ``novelty@k`` -- mean self-information ``-log2 p(i)`` of the recommended items, where ``p(i) = (n_i + 1) /
  (N + |catalog|)`` is item i's add-one smoothed share of the N training interactions (an item nobody touched
  is the most novel, and never infinite).
* ``long_tail_share@k`` -- share of recommended slots that go to long-tail items: items outside the *head*, the
  smallest set of most-interacted items that together hold ``head_share`` (default 80%) of the training
  interactions (ties in count broken by item id, so the head is deterministic).
* ``exposure_gini@k`` -- Gini coefficient of the number of slots each catalog item received (0 = every item
  shown equally often, -> 1 = all exposure on one item); items never shown count with zero exposure.
* exposure by item group -- share of slots per category, next to the category's share of training
  interactions and of the catalog (:func:`exposure_by_group`).

"Training interactions" are the train split's events other than impressions (what the user did, not what they
were shown), the same events the evaluator excludes from a user's lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Group of an item whose category is unknown.
NO_GROUP = "(none)"
#: Names of the float metrics :func:`beyond_accuracy_metrics` returns (before the ``@k`` suffix).
BEYOND_ACCURACY_METRICS: tuple[str, ...] = (
    "diversity",
    "embedding_diversity",
    "novelty",
    "long_tail_share",
    "exposure_gini",
)


def interaction_counts(train_events: pd.DataFrame, catalog: Iterable[str] | None = None) -> pd.Series:
    """Training interactions (events other than impressions) per item, indexed by item id (sorted).

    Items of ``catalog`` without any interaction are included with 0; items outside the catalog are kept too
    (the catalog may lag the log).
    """
    if "item_id" not in train_events.columns:
        raise KeyError("train events lack column 'item_id'")
    ev = train_events
    if "event_type" in ev.columns:
        ev = ev[ev["event_type"] != "impression"]
    if isinstance(ev["item_id"].dtype, pd.CategoricalDtype):  # counted per code, no string per row
        counts = ev["item_id"].value_counts()
        counts = counts[counts > 0]
        counts.index = pd.Index(counts.index.astype(str), dtype=object)
    else:
        counts = ev["item_id"].astype(str).value_counts()
    universe = set(counts.index) | ({str(i) for i in catalog} if catalog is not None else set())
    return counts.reindex(sorted(universe), fill_value=0).astype(np.int64).rename("interactions")


def head_items(counts: pd.Series, head_share: float = 0.8) -> frozenset[str]:
    """The head: the fewest most-interacted items whose interactions reach ``head_share`` of all of them.

    Items are taken by count (descending), ties by item id; items with zero interactions are never in the head.
    With no interactions at all the head is empty (every item is long tail).
    """
    if not 0.0 < head_share <= 1.0:
        raise ValueError(f"head_share must be in (0, 1], got {head_share}")
    positive = counts[counts > 0]
    total = float(positive.sum())
    if total <= 0:
        return frozenset()
    order = sorted(positive.items(), key=lambda kv: (-kv[1], str(kv[0])))
    head: list[str] = []
    running = 0.0
    for item, count in order:
        head.append(str(item))
        running += float(count)
        if running >= head_share * total - 1e-12:
            break
    return frozenset(head)


def self_information(counts: pd.Series) -> pd.Series:
    """``-log2 p(i)`` with ``p(i) = (n_i + 1) / (N + len(counts))`` for every item of ``counts``."""
    total = float(counts.sum())
    p = (counts.astype(np.float64) + 1.0) / (total + len(counts))
    return -np.log2(p)


def _top(recs: Iterable[Sequence[str]], k: int | None) -> list[list[str]]:
    return [[str(i) for i in (items if k is None else items[:k])] for items in recs]


def intra_list_diversity(
    recs: Iterable[Sequence[str]],
    categories: Mapping[str, str] | None = None,
    embeddings: Mapping[str, np.ndarray] | None = None,
    k: int | None = None,
) -> float:
    """Mean pairwise distance within each list, averaged over lists with at least two items (NaN when none).

    Exactly one of ``categories`` (distance 1 across categories, 0 within; unknown items form their own group)
    or ``embeddings`` (cosine distance; items without an embedding are skipped) must be given.
    """
    if (categories is None) == (embeddings is None):
        raise ValueError("give exactly one of categories or embeddings")
    per_list: list[float] = []
    for items in _top(recs, k):
        if categories is not None:
            labels = [categories.get(i, NO_GROUP) for i in items]
            n = len(labels)
            if n < 2:
                continue
            same = sum(c * (c - 1) / 2 for c in pd.Series(labels).value_counts().to_numpy())
            per_list.append(1.0 - same / (n * (n - 1) / 2))
        else:
            assert embeddings is not None
            vecs = [np.asarray(embeddings[i], dtype=np.float64) for i in items if i in embeddings]
            if len(vecs) < 2:
                continue
            mat = np.stack(vecs)
            norms = np.linalg.norm(mat, axis=1, keepdims=True)
            unit = mat / np.where(norms > 0, norms, 1.0)
            sims = unit @ unit.T
            upper = np.triu_indices(len(vecs), k=1)
            per_list.append(float(np.mean(1.0 - sims[upper])))
    return float(np.mean(per_list)) if per_list else float("nan")


def novelty(recs: Iterable[Sequence[str]], counts: pd.Series, k: int | None = None) -> float:
    """Mean self-information (bits) of the recommended slots; items missing from ``counts`` count as unseen."""
    info = self_information(counts)
    unseen = float(-math.log2(1.0 / (float(counts.sum()) + len(counts)))) if len(counts) else float("nan")
    values = [float(info.get(i, unseen)) for items in _top(recs, k) for i in items]
    return float(np.mean(values)) if values else float("nan")


def long_tail_share(recs: Iterable[Sequence[str]], head: Iterable[str], k: int | None = None) -> float:
    """Share of recommended slots that hold items outside ``head`` (NaN when no slot was filled)."""
    head_set = set(head)
    slots = [i for items in _top(recs, k) for i in items]
    if not slots:
        return float("nan")
    return sum(1 for i in slots if i not in head_set) / len(slots)


def gini(values: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative ``values`` (0 = all equal; NaN for no values or an all-zero sum)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return float("nan")
    if np.any(x < 0):
        raise ValueError("gini needs non-negative values")
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.sum(ranks * x) / (n * x.sum()) - (n + 1.0) / n)


def exposure_counts(recs: Iterable[Sequence[str]], catalog: Iterable[str], k: int | None = None) -> pd.Series:
    """Slots each catalog item received (0 for items never shown); items outside the catalog are ignored."""
    catalog_ids = sorted({str(i) for i in catalog})
    shown = pd.Series([i for items in _top(recs, k) for i in items], dtype=object)
    return shown.value_counts().reindex(catalog_ids, fill_value=0).astype(np.int64)


def exposure_gini(recs: Iterable[Sequence[str]], catalog: Iterable[str], k: int | None = None) -> float:
    """Gini coefficient of exposure over the whole catalog (see :func:`exposure_counts`)."""
    return gini(exposure_counts(recs, catalog, k).to_numpy())


def exposure_by_group(
    recs: Iterable[Sequence[str]], groups: Mapping[str, str], k: int | None = None
) -> dict[str, float]:
    """Share of recommended slots per item group (unknown items in ``"(none)"``); sums to 1 (empty: {})."""
    labels = pd.Series([groups.get(i, NO_GROUP) for items in _top(recs, k) for i in items], dtype=object)
    if labels.empty:
        return {}
    shares = labels.value_counts(normalize=True)
    return {str(g): float(s) for g, s in sorted(shares.items(), key=lambda kv: str(kv[0]))}


@dataclass(frozen=True)
class CatalogContext:
    """What the beyond-accuracy metrics need to know about the catalog and the training log.

    Build it with :meth:`from_train`; ``categories`` is empty for an ids-only log (category diversity and
    group exposure are then not reported) and ``embeddings`` empty unless item embeddings were given.
    """

    catalog: frozenset[str]
    counts: pd.Series
    head: frozenset[str]
    head_share: float
    categories: Mapping[str, str] = field(default_factory=dict)
    embeddings: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_train(
        cls,
        train_events: pd.DataFrame,
        items: pd.DataFrame | None,
        catalog: Iterable[str],
        head_share: float = 0.8,
        item_embeddings: pd.DataFrame | None = None,
    ) -> CatalogContext:
        """Interaction counts and the head from ``train_events``; categories from ``items`` (column
        ``category``); embeddings from ``item_embeddings`` (columns ``item_id``, ``embedding``)."""
        catalog_set = frozenset(str(i) for i in catalog)
        counts = interaction_counts(train_events, catalog_set)
        categories: dict[str, str] = {}
        if items is not None and "category" in items.columns:
            known = items.dropna(subset=["category"])
            categories = dict(zip(known["item_id"].astype(str), known["category"].astype(str), strict=True))
        embeddings: dict[str, np.ndarray] = {}
        if item_embeddings is not None and len(item_embeddings):
            embeddings = {
                str(i): np.asarray(e, dtype=np.float64)
                for i, e in zip(item_embeddings["item_id"], item_embeddings["embedding"], strict=True)
            }
        return cls(catalog_set, counts, head_items(counts, head_share), head_share, categories, embeddings)

    def group_reference(self) -> dict[str, dict[str, float]]:
        """Each category's share of the training interactions (``train``) and of the catalog (``catalog``)."""
        if not self.categories:
            return {}
        groups = pd.Series({i: self.categories.get(i, NO_GROUP) for i in self.counts.index})
        train = self.counts.groupby(groups).sum()
        train_share = train / train.sum() if train.sum() > 0 else train * 0.0
        in_catalog = pd.Series([self.categories.get(i, NO_GROUP) for i in sorted(self.catalog)], dtype=object)
        catalog_share = in_catalog.value_counts(normalize=True)
        return {
            "train": {str(g): float(v) for g, v in sorted(train_share.items())},
            "catalog": {str(g): float(v) for g, v in sorted(catalog_share.items())},
        }


def beyond_accuracy_metrics(recs: Sequence[Sequence[str]], context: CatalogContext, k: int) -> dict[str, float]:
    """All float beyond-accuracy metrics of one method's top-``k`` lists, keyed ``name@k``.

    Category diversity needs categories and embedding diversity needs embeddings; a metric that cannot be
    computed is left out (not reported as a misleading number).
    """
    out: dict[str, float] = {}
    if context.categories:
        out[f"diversity@{k}"] = intra_list_diversity(recs, categories=context.categories, k=k)
    if context.embeddings:
        out[f"embedding_diversity@{k}"] = intra_list_diversity(recs, embeddings=context.embeddings, k=k)
    out[f"novelty@{k}"] = novelty(recs, context.counts, k)
    out[f"long_tail_share@{k}"] = long_tail_share(recs, context.head, k)
    out[f"exposure_gini@{k}"] = exposure_gini(recs, context.catalog, k)
    return out


#: Bootstrap replicates behind the intervals of the list-level metrics (:func:`list_metric_intervals`).
BOOTSTRAP_REPLICATES = 200


def list_metric_intervals(
    recs: Sequence[Sequence[str]],
    catalog: Iterable[str],
    context: CatalogContext | None,
    k: int,
    seed: int,
    level: float = 0.95,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> dict[str, tuple[float, float]]:
    """A ``level`` interval of ``coverage@k`` and of every metric of :func:`beyond_accuracy_metrics`: a seeded
    bootstrap over the evaluated users (``replicates`` resamples of the lists with replacement, ``seed``).

    These metrics are not means of per-user values the t interval of the ranking metrics applies to (coverage
    and the exposure Gini are properties of the whole set of lists), so the users are resampled and each metric
    recomputed, vectorised over the slots. The interval is the resamples' percentile interval shifted by
    ``t - mean(resamples)``, i.e. centred on the point estimate ``t`` with the resamples' spread: a resample
    repeats users, which biases coverage down and the Gini up (an unshifted percentile interval of coverage lies
    below the point estimate); for the means (novelty, long-tail share, diversity) the shift is about 0. Shares
    are clipped to [0, 1], novelty to >= 0. Fewer than two lists give (nan, nan).
    """
    lists = [list(items) for items in recs]
    n = len(lists)
    top = _top(lists, k)
    catalog_ids = sorted({str(i) for i in catalog})
    names = [f"coverage@{k}"]
    if context is not None:
        names += list(beyond_accuracy_metrics(top[:1] or [[]], context, k))
    if n < 2:
        return {name: (float("nan"), float("nan")) for name in names}
    index = {item: pos for pos, item in enumerate(catalog_ids)}
    outside = len(catalog_ids)  # items outside the catalog share one extra slot, ignored by the metrics

    def slots(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        users = np.repeat(np.arange(n), [len(r) for r in rows])
        items = np.fromiter((index.get(str(i), outside) for r in rows for i in r), dtype=np.int64,
                            count=len(users))
        return users, items

    cover_users, cover_items = slots(lists)
    top_users, top_items = slots(top)
    point: dict[str, float] = {f"coverage@{k}": len(set(cover_items[cover_items < outside].tolist()))
                               / len(catalog_ids) if catalog_ids else float("nan")}
    per_list: dict[str, np.ndarray] = {}
    slot_values: dict[str, np.ndarray] = {}
    if context is not None:
        point.update(beyond_accuracy_metrics(top, context, k))
        info = self_information(context.counts)
        unseen = float(-math.log2(1.0 / (float(context.counts.sum()) + len(context.counts)))) \
            if len(context.counts) else float("nan")
        slot_values[f"novelty@{k}"] = np.array([float(info.get(i, unseen)) for r in top for i in r], dtype=float)
        slot_values[f"long_tail_share@{k}"] = np.array([i not in context.head for r in top for i in r], dtype=float)
        for name, kwargs in ((f"diversity@{k}", {"categories": context.categories}),
                             (f"embedding_diversity@{k}", {"embeddings": context.embeddings})):
            if name in point:
                per_list[name] = np.array([intra_list_diversity([r], **kwargs) for r in top], dtype=float)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(replicates):
        weight = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        shown = np.bincount(cover_items, weights=weight[cover_users], minlength=outside + 1)[:outside]
        draws[f"coverage@{k}"].append(float((shown > 0).mean()) if catalog_ids else float("nan"))
        if context is None:
            continue
        top_weight = weight[top_users]
        if f"exposure_gini@{k}" in point:
            exposure = np.bincount(top_items, weights=top_weight, minlength=outside + 1)[:outside]
            draws[f"exposure_gini@{k}"].append(gini(exposure))
        for name, values in slot_values.items():
            total = top_weight.sum()
            draws[name].append(float((top_weight * values).sum() / total) if total > 0 else float("nan"))
        for name, values in per_list.items():
            ok = ~np.isnan(values)
            total = weight[ok].sum()
            draws[name].append(float((weight[ok] * values[ok]).sum() / total) if total > 0 else float("nan"))
    return shifted_percentile_intervals(point, draws, level)


def shifted_percentile_intervals(point: Mapping[str, float], draws: Mapping[str, Sequence[float]], level: float
                                 ) -> dict[str, tuple[float, float]]:
    """Each metric's ``level`` percentile interval of its bootstrap ``draws`` shifted to centre on its ``point``
    estimate (see :func:`list_metric_intervals`); shares clipped to [0, 1], novelty to >= 0; (nan, nan) when the
    point is nan or fewer than two draws are finite."""
    out: dict[str, tuple[float, float]] = {}
    for name, theta in point.items():
        values = np.asarray(draws[name], dtype=float)
        values = values[~np.isnan(values)]
        if np.isnan(theta) or len(values) < 2:
            out[name] = (float("nan"), float("nan"))
            continue
        q_low, q_high = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
        shift = theta - float(values.mean())
        low, high = q_low + shift, q_high + shift
        upper = math.inf if name.startswith("novelty@") else 1.0
        out[name] = (float(min(max(low, 0.0), upper)), float(min(max(high, 0.0), upper)))
    return out
