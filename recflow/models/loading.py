"""Loading the trainer's exported models as a :class:`recflow.recommender.Recommender`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recflow import bundle_layout
from recflow.errors import DataError
from recflow.index import load_index, read_index_report
from recflow.models.hybrid import HybridBlend, load_hybrid, top_items

#: Users per call of the SavedModel.
BATCH_SIZE = 1024


class TFRSRecommender:
    """Recommends with the exported retrieval SavedModel; scores (user, item) pairs with the ranking model.

    Requests carry no context, so each user's latest logged context (``user_context.parquet``) is used, and the
    most common context for users the model has never seen (who also get the no-history behaviour values and
    the OOV user embedding).

    A sequence model with a blend (``hybrid.json`` + ``item_item.npy``, :mod:`recflow.models.hybrid`) retrieves
    by :meth:`recflow.models.hybrid.HybridBlend.scores`: the SavedModel's user state of the history (stored or
    given) against ``item_embeddings.parquet``, blended with EASE's scores of the same history -- the scores
    serving computes (:mod:`serving.slates`).
    """

    name = "tfrs_two_tower"

    def __init__(self, model_dir: Path) -> None:
        import tensorflow as tf

        self.model_dir = Path(model_dir)
        retrieval_dir = self.model_dir / bundle_layout.RETRIEVAL_DIR
        if not (retrieval_dir / bundle_layout.SAVED_MODEL_FILE).is_file():
            raise DataError(f"{self.model_dir}: no retrieval SavedModel (expected the output of train_tfrs)")
        self._retrieval = tf.saved_model.load(str(retrieval_dir))
        self._top = self._retrieval.signatures["serving_default"]
        self._all = self._retrieval.signatures["rank_all"]
        self._embed = self._retrieval.signatures["query_embedding"]
        self.top_k = int(self._retrieval.top_k_value.numpy())
        self.num_items = int(self._retrieval.num_items_value.numpy())
        self._input_specs = self._top.structured_input_signature[1]
        contexts = pd.read_parquet(self.model_dir / bundle_layout.USER_CONTEXT_FILE)
        self._context = contexts.set_index("user_id")
        self._default_context: dict[str, Any] = json.loads(
            (self.model_dir / bundle_layout.DEFAULT_CONTEXT_FILE).read_text(encoding="utf-8"))
        # An approximate candidate index (trainer.index.kind != brute_force) serves the top-K instead of the
        # SavedModel's exact BruteForce layer; its recall vs exact search is in index/index.json.
        self._index = None
        report = read_index_report(self.model_dir)
        if report.get("kind", "brute_force") != "brute_force":
            self._index = load_index(self.model_dir / bundle_layout.INDEX_DIR)
        self._hybrid: HybridBlend | None = None
        if self.is_sequence and self._index is None:
            self._load_hybrid()
        ranking_dir = self.model_dir / bundle_layout.RANKING_DIR
        self._ranking = None
        if (ranking_dir / bundle_layout.SAVED_MODEL_FILE).is_file():
            self._ranking = tf.saved_model.load(str(ranking_dir)).signatures["serving_default"]

    def _load_hybrid(self) -> None:
        """The blend (None without one), with the item matrix and stored histories it scores."""
        path = self.model_dir / bundle_layout.ITEM_EMBEDDINGS_FILE
        items = pd.read_parquet(path)
        self._hybrid = load_hybrid(self.model_dir, len(items))
        if self._hybrid is None:
            return
        self._item_ids = items["item_id"].astype(str).to_numpy(object)
        self._item_index = {i: n for n, i in enumerate(self._item_ids)}
        self._item_matrix = np.stack(items["embedding"].to_numpy()).astype(np.float32)
        stored = pd.read_parquet(self.model_dir / bundle_layout.USER_HISTORY_FILE, columns=["user_id", "item_ids"])
        self._stored = {str(u): [str(i) for i in ids] for u, ids in zip(stored["user_id"], stored["item_ids"],
                                                                         strict=True)}

    @property
    def hybrid(self) -> HybridBlend | None:
        """The sequence + EASE blend retrieval uses, or None (retrieval is the SavedModel's alone)."""
        return self._hybrid

    def _hybrid_top(self, states: np.ndarray, histories: Sequence[Sequence[str]], k: int,
                    banned: Sequence[set[str]]) -> list[list[tuple[str, float]]]:
        """Top-``k`` (item, blended score) per user state and its history, without ``banned`` items."""
        assert self._hybrid is not None
        rows = [self._hybrid.history_rows(h, self._item_index) for h in histories]
        scores = self._hybrid.scores(np.asarray(states, np.float32) @ self._item_matrix.T, rows)
        out = []
        for row, ban in zip(scores, banned, strict=True):
            picked = top_items(row, k, [self._item_index[i] for i in ban if i in self._item_index])
            out.append([(str(self._item_ids[j]), float(row[j])) for j in picked])
        return out

    @property
    def has_ranking(self) -> bool:
        return self._ranking is not None

    @property
    def is_sequence(self) -> bool:
        """Whether retrieval is the sequence model (its SavedModel takes a history)."""
        return "history_top_k" in self._retrieval.signatures

    def recommend_from_history(self, items: Sequence[str], k: int, exclude: set[str] | None = None,
                               event_types: Sequence[str] | None = None,
                               timestamps: Sequence[float] | None = None) -> list[str]:
        """Top-``k`` items for a user known only by a history (sequence model only), the count baselines' API.

        ``items`` oldest first (``timestamps``, seconds, reorder them when given); ``event_types`` default to
        unknown (an id-only history); gaps are measured from the newest event. Items outside the catalog are
        ignored. Raises DataError for a two-tower model or mismatched lengths.
        """
        import tensorflow as tf

        from recflow.models.sequence import EVENT_TYPE_CODES

        if not self.is_sequence:
            raise DataError(f"{self.model_dir}: recommend_from_history needs the sequence retrieval model "
                            "(trainer.retrieval_model: sequence)")
        items = [str(i) for i in items]
        types = list(event_types) if event_types is not None else ["unknown"] * len(items)
        times = [float(t) for t in timestamps] if timestamps is not None else None
        if len(types) != len(items) or (times is not None and len(times) != len(items)):
            raise DataError("recommend_from_history: items, event_types and timestamps differ in length")
        unknown = sorted({t for t in types if t not in EVENT_TYPE_CODES})
        if unknown:
            raise DataError(f"recommend_from_history: unknown event types {unknown}")
        order = np.argsort(times, kind="stable") if times is not None else np.arange(len(items))
        now = max(times) if times else 0.0
        gaps = [now - times[i] if times is not None else -1.0 for i in order]
        inputs = {"hist_item_ids": tf.constant([[items[i] for i in order] or [""]]),
                  "hist_types": tf.constant([[EVENT_TYPE_CODES[types[i]] for i in order] or [0]], tf.int64),
                  "hist_gaps": tf.constant([gaps or [-1.0]], tf.float32)}
        banned = exclude or set()
        if self._hybrid is not None:
            state = self._retrieval.signatures["history_embedding"](**inputs)["embedding"].numpy()
            return [i for i, _ in self._hybrid_top(state, [[items[i] for i in order]], k, [banned])[0]]
        result = self._retrieval.signatures["history_top_k"](**inputs)
        picked = [i.decode("utf-8") for i in result["item_ids"].numpy()[0]]
        return [i for i in picked if i and i not in banned][:k]

    def _inputs(self, user_ids: Sequence[str], context: Mapping[str, Sequence[Any]] | None = None,
                specs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        import tensorflow as tf

        specs = specs if specs is not None else self._input_specs
        users = [str(u) for u in user_ids]
        inputs: dict[str, Any] = {"user_id": tf.constant(users, tf.string)}
        known = self._context.reindex(users)
        for name, spec in specs.items():
            if name in ("user_id", "item_id"):
                continue
            if context is not None and name in context:
                values = list(context[name])
            else:
                values = known[name].where(known[name].notna(), self._default_context[name]).tolist()
            if spec.dtype == tf.string:
                inputs[name] = tf.constant([str(v) for v in values], tf.string)
            else:
                inputs[name] = tf.constant(np.asarray(values, dtype=np.int64), spec.dtype)
        return inputs

    def recommend(self, user_ids: Sequence[str], k: int, exclude: Mapping[str, set[str]] | None = None,
                  ) -> list[list[str]]:
        """Top-``k`` items per user, best first, without the user's ``exclude`` items (over-fetching as needed)."""
        return [[item for item, _ in row] for row in self.recommend_with_scores(user_ids, k, exclude)]

    def recommend_with_scores(self, user_ids: Sequence[str], k: int,
                              exclude: Mapping[str, set[str]] | None = None) -> list[list[tuple[str, float]]]:
        """Like :meth:`recommend`, with the retrieval score of each item."""
        exclude = exclude or {}
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(user_ids), BATCH_SIZE):
            batch = [str(u) for u in user_ids[start:start + BATCH_SIZE]]
            most_excluded = max((len(exclude.get(u, ())) for u in batch), default=0)
            if self._hybrid is not None:
                states = self._embed(**self._inputs(batch))["embedding"].numpy()
                out.extend(self._hybrid_top(states, [self._stored.get(u, []) for u in batch], k,
                                            [exclude.get(u, set()) for u in batch]))
                continue
            if self._index is not None:
                queries = self._embed(**self._inputs(batch))["embedding"].numpy()
                scores, rows = self._index.search(queries, k + most_excluded)
                ids = np.array([[self._index.item_ids[r].encode("utf-8") if r >= 0 else b"" for r in row]
                                for row in rows], dtype=object)
            else:
                fn = self._top if k + most_excluded <= self.top_k else self._all
                result = fn(**self._inputs(batch))
                ids, scores = result["item_ids"].numpy(), result["scores"].numpy()
            for row, user in enumerate(batch):
                banned = exclude.get(user, set())
                picked = []
                for item, score in zip(ids[row], scores[row], strict=True):
                    name = item.decode("utf-8")
                    if name and name not in banned:
                        picked.append((name, float(score)))
                        if len(picked) == k:
                            break
                out.append(picked)
        return out

    def user_embeddings(self, user_ids: Sequence[str]) -> np.ndarray:
        """Query-tower embeddings of ``user_ids`` (with their latest context), shape [len(user_ids), D]."""
        parts = [self._embed(**self._inputs(user_ids[s:s + BATCH_SIZE]))["embedding"].numpy()
                 for s in range(0, len(user_ids), BATCH_SIZE)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str],
              context: Mapping[str, Sequence[Any]] | None = None) -> np.ndarray:
        """Click probability of each (user, item) pair with the ranking model.

        Without a ranking model (the log had no impressions) the retrieval score (query . item embedding) is
        returned instead. ``context`` gives per-pair context values; absent features use the user's latest.
        """
        import tensorflow as tf

        if len(user_ids) != len(item_ids):
            raise ValueError("user_ids and item_ids must have the same length")
        if self._ranking is not None:
            specs = self._ranking.structured_input_signature[1]
            inputs = self._inputs(user_ids, context, specs)
            inputs["item_id"] = tf.constant([str(i) for i in item_ids], tf.string)
            return self._ranking(**inputs)["probability"].numpy()
        items = pd.read_parquet(self.model_dir / bundle_layout.ITEM_EMBEDDINGS_FILE).set_index("item_id")["embedding"]
        users = self.user_embeddings(list(user_ids))
        dim = users.shape[1]
        item_vecs = np.stack([np.asarray(items.get(str(i), np.zeros(dim)), np.float32) for i in item_ids])
        return np.sum(users * item_vecs, axis=1)


def load_recommender(model_dir: Path) -> TFRSRecommender:
    """Load the models written by :func:`recflow.training.tfrs_trainer.train_tfrs` from ``model_dir``."""
    return TFRSRecommender(Path(model_dir))
