"""One model bundle loaded for serving: the arrays and models the request path needs, nothing more.

A pushed bundle (see :mod:`recflow.model_store`) holds ``model/`` (TFRS retrieval and ranking SavedModels with
their embeddings), ``policy/`` (the TF-Agents policy) and ``transform/`` (catalog, vocabularies). Calling a
SavedModel costs milliseconds, so the request path here is numpy wherever that is exact:

* retrieval: a user vector against the item embedding matrix, exact top-M by ``np.argpartition`` -- or, when the
  bundle carries an approximate index (``model/index/``, faiss IVF or HNSW; a million-item catalog), top-M from
  the index, whose recall@10 against exact search is recorded in its ``index.json`` and re-measured at load
  (:func:`load_ann_index`); a bundle below ``serving.min_index_recall`` is refused. With a
  sequence model (``sequence_encoder.npz`` in ``model/``) the user vector is the sequence encoder's state of the
  user's history, computed in numpy per request (:func:`recflow.models.sequence.numpy_user_state`) from the
  request's history or the stored one (``user_history.parquet``) plus feedback; with the two-tower model it is
  the query tower's output for a known user (``user_embeddings.parquet``). Users without either get the query
  tower's output for their context (one SavedModel call per distinct context, cached) plus a log-popularity
  prior. A sequence bundle with a blend (``model/hybrid.json`` + ``item_item.npy``, memory-mapped) scores every
  item by :meth:`recflow.models.hybrid.HybridBlend.scores` instead: the encoder's scores blended with EASE's
  scores of the same history (:meth:`ServingBundle.hybrid_scores`), exact over the catalog;
* ranking: the DCN ranking SavedModel re-implemented in numpy (:mod:`serving.ranking`: item tower outputs
  computed once at load, the query tower and the deep & cross layers per request), checked against the
  SavedModel at load time on a fixed sample (the SavedModel serves when they differ); requests with a sequence
  state are ranked by the history-aware model (numpy) instead;
* policy: the neural epsilon-greedy policy's reward network re-implemented in numpy from the exported
  variables, checked against the SavedModel at load time (other agents are called through the SavedModel).

New catalog items (not in the trained model) get content-based embeddings: the mean embedding of the trained
items of their category (:meth:`ServingBundle.add_items`).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import recflow  # noqa: F401  (selects legacy Keras before TensorFlow is imported)
from recflow import bundle_layout
from recflow.errors import DataError
from recflow.models.hybrid import HybridBlend, load_hybrid
from recflow.policy.logged_data import CONTEXT_CATEGORIES
from recflow.training.sequence_retrieval import ENCODER_FILE, ITEMS_FILE
from serving.history import HistoryEntry

if TYPE_CHECKING:  # the scorer module imports TensorFlow; the bundle imports it only when loading
    from recflow.policy.scorer import PolicyScorer

CONTEXT_FIELDS: tuple[str, ...] = ("hour", "weekday", "device", "region")
log = logging.getLogger(__name__)


def _matrix(path: Path, id_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids and the ``[n, D]`` float32 matrix of an embeddings parquet file (``id``, ``embedding`` list column).

    The list column is flattened by Arrow in one step (a million rows in well under a second), not row by row.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[id_column, "embedding"])
    ids = np.asarray(table.column(id_column).to_pylist(), dtype=object).astype(str).astype(object)
    n = table.num_rows
    if n == 0:
        return ids, np.zeros((0, 0), np.float32)
    column = table.column("embedding").combine_chunks()
    values = column.flatten() if isinstance(column, pa.ListArray | pa.LargeListArray | pa.FixedSizeListArray) \
        else column.values
    flat = values.to_numpy(zero_copy_only=False)
    if flat.size % n:
        raise DataError(f"{path}: embeddings of different lengths")
    return ids, np.ascontiguousarray(flat.reshape(n, flat.size // n), dtype=np.float32)


SHARED_ARRAYS = ("item_matrix", "user_matrix", "policy_item_matrix", "item_log_popularity", "item_price")


def shared_arrays(root: Path, version: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` memory-mapped read-only from ``.npy`` files, so that every worker process serving this bundle
    shares one copy of them in the page cache.

    The files live in ``<tmp>/recflow-arrays/<key>/`` where the key is a hash of the bundle's path, version and
    embedding files' size and time; the first process writes them (atomically, into a fresh directory renamed
    into place), the others map what is there.
    """
    import hashlib
    import os
    import shutil
    import tempfile

    stamp = [str(Path(root).resolve()), version]
    for name in (bundle_layout.ITEM_EMBEDDINGS_FILE, bundle_layout.USER_EMBEDDINGS_FILE):
        st = (Path(root) / bundle_layout.MODEL_DIR / name).stat()
        stamp += [str(st.st_size), str(st.st_mtime_ns)]
    key = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:20]
    cache = Path(tempfile.gettempdir()) / "recflow-arrays"
    final = cache / key
    if not all((final / f"{n}.npy").is_file() for n in arrays):
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
        for name, arr in arrays.items():
            np.save(staging / f"{name}.npy", np.ascontiguousarray(arr))
        try:
            os.rename(staging, final)
        except OSError:  # another worker got there first: use its files
            shutil.rmtree(staging, ignore_errors=True)
    return {n: np.load(final / f"{n}.npy", mmap_mode="r") for n in arrays}


def load_ann_index(
    model_dir: Path,
    item_ids: np.ndarray,
    item_matrix: np.ndarray,
    queries: np.ndarray,
    min_recall: float,
    check_queries: int,
) -> tuple[Any, dict[str, Any]]:
    """The bundle's approximate candidate index (None for none or an exact one) and its recall report.

    Refuses (:class:`DataError`) an index whose rows are not the bundle's items, whose recorded recall@10
    against exact search (``index.json``, written by the trainer) is below ``min_recall``, or whose recall
    re-measured here on ``check_queries`` of ``queries`` (known users' vectors, seeded sample) is below it.
    """
    from recflow.index import load_index, read_index_report, recall_against_exact

    report = read_index_report(model_dir)
    if not report or report.get("kind", "brute_force") == "brute_force":
        return None, report
    where = model_dir / bundle_layout.INDEX_DIR
    recorded = report.get("index_recall@10")
    if recorded is None or not recorded >= min_recall:
        raise DataError(
            f"{where}: the {report['kind']} index records recall@10 {recorded} against exact search, below "
            f"serving.min_index_recall {min_recall}",
            hint="rebuild it with a wider search (trainer.index.ef_search / ivf_nprobe) or serve exact search "
            "(serving.ann_index=false)",
        )
    index = load_index(where)
    if len(index.item_ids) != len(item_ids) or any(a != b for a, b in zip(index.item_ids, item_ids, strict=True)):
        raise DataError(f"{where}: the index's items are not the rows of item_embeddings.parquet")
    q = np.asarray(queries, np.float32)
    if len(q) == 0:  # no known users: probe with items' own vectors
        q = item_matrix
    if len(q) > check_queries:
        q = q[np.sort(np.random.default_rng(0).choice(len(q), check_queries, replace=False))]
    measured = recall_against_exact(index, q, item_matrix, 10)
    if not measured >= min_recall:
        raise DataError(
            f"{where}: recall@10 re-measured at load is {measured:.3f} (recorded {recorded:.3f}), below "
            f"serving.min_index_recall {min_recall}"
        )
    return index, {**report, "load_recall@10": measured, "load_check_queries": int(len(q))}


class NumpyRewardNetwork:
    """TF-Agents' global-and-arm common-tower reward network (dense + ReLU layers) evaluated in numpy."""

    def __init__(self, variables: Sequence[Any], global_dim: int, arm_dim: int) -> None:
        dense: dict[int, dict[str, np.ndarray]] = {}
        for var in variables:
            name = var.name.split(":")[0]
            leaf = name.rsplit("/", 2)
            if len(leaf) < 3 or not leaf[-2].startswith("dense"):
                continue
            index = int(leaf[-2].split("_")[1]) if "_" in leaf[-2] else 0
            dense.setdefault(index, {})[leaf[-1]] = var.numpy()
        layers = [dense[i] for i in sorted(dense)]
        self.global_layers: list[tuple[np.ndarray, np.ndarray]] = []
        self.arm_layers: list[tuple[np.ndarray, np.ndarray]] = []
        self.common_layers: list[tuple[np.ndarray, np.ndarray]] = []
        # Layers are numbered in creation order: the global tower, then the arm tower, then the common tower.
        width = {"global": global_dim, "arm": arm_dim}
        stage = "global"
        for layer in layers:
            kernel, bias = layer["kernel"], layer["bias"]
            if (
                stage == "global"
                and kernel.shape[0] != width["global"]
                and self.global_layers
                and (kernel.shape[0] == arm_dim)
            ):
                stage = "arm"
            elif (
                stage == "arm"
                and self.arm_layers
                and kernel.shape[0] == (self.global_layers[-1][0].shape[1] + self.arm_layers[-1][0].shape[1])
            ):
                stage = "common"
            {"global": self.global_layers, "arm": self.arm_layers, "common": self.common_layers}[
                stage
            ].append((kernel.astype(np.float32), bias.astype(np.float32)))
        if not (self.global_layers and self.arm_layers and self.common_layers):
            raise DataError("the policy's reward network does not have the common-tower layout")

    @staticmethod
    def _mlp(x: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]], last_linear: bool) -> np.ndarray:
        for i, (kernel, bias) in enumerate(layers):
            x = x @ kernel + bias
            if not (last_linear and i == len(layers) - 1):
                x = np.maximum(x, 0.0)
        return x

    def __call__(self, global_feats: np.ndarray, arm_feats: np.ndarray) -> np.ndarray:
        """Predicted rewards ``[n, arms]`` from ``[n, global_dim]`` and ``[n, arms, arm_dim]``."""
        g = self._mlp(global_feats, self.global_layers, False)
        a = self._mlp(arm_feats, self.arm_layers, False)
        common = np.concatenate([np.broadcast_to(g[:, None, :], a.shape[:2] + g.shape[1:]), a], axis=-1)
        return self._mlp(common, self.common_layers, True)[..., 0]


class SequenceState:
    """A sequence bundle's numpy encoder, its item rows and each known user's stored history."""

    def __init__(self, model_dir: Path) -> None:
        from recflow.models.sequence import EVENT_TYPE_CODES, load_encoder_weights

        self.weights, self.meta = load_encoder_weights(model_dir)
        self.max_len = int(self.weights["meta_max_len"])
        self.type_codes = dict(EVENT_TYPE_CODES)
        rows = pd.read_parquet(model_dir / ITEMS_FILE)
        self.item_rows: dict[str, int] = dict(zip(rows["item_id"].astype(str), rows["row"].astype(int),
                                                  strict=True))
        from recflow.models.history_ranking import HistoryRanker

        #: The history-aware ranking model (recflow.models.history_ranking), when the trainer made one.
        self.ranker = HistoryRanker.load(model_dir)
        hist = pd.read_parquet(model_dir / bundle_layout.USER_HISTORY_FILE)
        self.stored: dict[str, list[HistoryEntry]] = {
            str(r.user_id): [HistoryEntry(str(i), str(t), float(ts))
                             for i, t, ts in zip(r.item_ids, r.event_types, r.timestamps, strict=True)]
            for r in hist.itertuples(index=False)}

    def history_for(self, user_id: str, request: Sequence[HistoryEntry] | None,
                    feedback: Sequence[HistoryEntry]) -> list[HistoryEntry]:
        """The request's history when given, else the stored history followed by the feedback events."""
        if request:
            return list(request)
        return [*self.stored.get(user_id, []), *feedback]

    def known(self, entries: Sequence[HistoryEntry]) -> list[HistoryEntry]:
        """The last ``max_len`` entries whose item the encoder knows (what it reads)."""
        return [e for e in entries if e.item_id in self.item_rows][-self.max_len:]

    def rows(self, entries: Sequence[HistoryEntry]) -> np.ndarray:
        """Encoder rows of :meth:`known` entries (oldest first)."""
        return np.array([self.item_rows[e.item_id] for e in self.known(entries)], np.int64)

    def encode(self, entries: Sequence[HistoryEntry]) -> np.ndarray | None:
        """The encoder's user state for ``entries`` (oldest first), or None when no entry's item is known.

        Only the last ``max_len`` known items count. Gaps are measured from the newest timestamped event
        (what the trainer did for the stored histories); entries without a timestamp have an unknown gap, and
        an entry without an event type has the unknown type (an id-only history).
        """
        from recflow.models.sequence import numpy_user_state

        known = self.known(entries)
        if not known:
            return None
        times = [e.timestamp for e in known if e.timestamp is not None]
        now = max(times) if times else 0.0
        items = np.array([self.item_rows[e.item_id] for e in known], np.int64)
        types = np.array([self.type_codes.get(e.event_type or "unknown", 0) for e in known], np.int64)
        gaps = np.array([-1.0 if e.timestamp is None else max(now - e.timestamp, 0.0) for e in known],
                        np.float32)
        return numpy_user_state(self.weights, items[None], types[None], gaps[None])[0]


@dataclass(eq=False)
class ServingBundle:
    """Everything one model version needs at request time (see the module docstring)."""

    version: str
    path: Path
    item_ids: np.ndarray  # [N] object
    item_matrix: np.ndarray  # [N, D] retrieval item embeddings
    item_log_popularity: np.ndarray  # [N], 0 for the most popular, negative below
    item_category: np.ndarray  # [N] object
    item_price: np.ndarray  # [N] float
    trained_items: int  # the first trained_items items are the model's; the rest were added from content
    user_index: dict[str, int]
    user_matrix: np.ndarray  # [U, D] query tower output of each known user (latest context)
    user_context: dict[str, dict[str, Any]]
    default_context: dict[str, Any]
    policy_item_matrix: np.ndarray  # [N, d] the policy's item embeddings, aligned with item_ids
    policy_meta: dict[str, Any]
    ranking_fn: Any
    retrieval: Any
    policy_scorer: Any
    reward_network: NumpyRewardNetwork | None
    feature_spec: dict[str, Any]
    sequence: SequenceState | None = None
    hybrid: HybridBlend | None = None  # the sequence + EASE blend of a sequence bundle that has one
    ann_index: Any = None  # recflow.index.CandidateIndex (approximate) or None: exact numpy retrieval
    index_report: dict[str, Any] | None = None  # index.json plus the recall measured at load
    numpy_ranker: Any = None  # serving.ranking.NumpyRanker, or None: rank with the SavedModel

    def __post_init__(self) -> None:
        self.item_index = {str(i): n for n, i in enumerate(self.item_ids)}
        self._cold_lock = threading.Lock()
        self._cold_queries: dict[tuple[int, int, str, str], np.ndarray] = {}  # precompute_cold_queries

    # ------------------------------------------------------------------ loading
    # Each part of a bundle is read by its own helper (module level, below the class): the files
    # (:func:`_read_bundle_files`), the approximate index (:func:`load_ann_index`), the catalog columns, the
    # policy's item matrix and reward network; then the numpy engines are checked against their SavedModels
    # (:meth:`_check_numpy_engines`).
    @classmethod
    def load(
        cls,
        path: str | Path,
        version: str = "local",
        *,
        verify_numpy_policy: bool = True,
        verify_numpy_ranking: bool = True,
        ann_index: bool = False,
        min_index_recall: float = 0.95,
        index_check_queries: int = 200,
        share_arrays: bool = False,
    ) -> ServingBundle:
        """Load the bundle directory ``path``; a missing or broken part raises :class:`DataError`.

        ``share_arrays``: memory-map the large arrays from files shared by every process serving this bundle
        (:func:`shared_arrays`; the worker processes of ``recflow serve --workers``).

        ``ann_index``: retrieve through the bundle's approximate index when it has one (checked by
        :func:`load_ann_index` against ``min_index_recall`` on ``index_check_queries`` queries).
        """
        root = Path(path)
        files = _read_bundle_files(root)
        item_ids = files.item_ids.astype(str).astype(object)
        index, index_report = (
            load_ann_index(root / bundle_layout.MODEL_DIR, item_ids, files.item_matrix, files.user_matrix,
                           min_index_recall, index_check_queries)
            if ann_index
            else (None, None)
        )
        category, price = _catalog_columns(files.candidates, item_ids)
        arrays = {
            "item_matrix": files.item_matrix,
            "user_matrix": files.user_matrix,
            "policy_item_matrix": _policy_item_matrix(files.scorer, item_ids),
            "item_log_popularity": _log_popularity(
                root / bundle_layout.TRANSFORM_DIR / bundle_layout.TRANSFORM_GRAPH_DIR, item_ids),
            "item_price": price,
        }
        network = _reward_network(files.scorer)
        if share_arrays:
            arrays = shared_arrays(root, version, arrays)
        bundle = cls(
            version=version,
            path=root,
            item_ids=item_ids,
            item_matrix=arrays["item_matrix"],
            item_log_popularity=arrays["item_log_popularity"],
            item_category=category,
            item_price=arrays["item_price"],
            trained_items=len(item_ids),
            user_index={str(u): i for i, u in enumerate(files.user_ids)},
            user_matrix=arrays["user_matrix"],
            user_context=_user_contexts(files.contexts),
            default_context=files.default_context,
            policy_item_matrix=arrays["policy_item_matrix"],
            policy_meta=files.scorer.meta,
            ranking_fn=files.ranking_fn,
            retrieval=files.retrieval,
            policy_scorer=files.scorer,
            reward_network=network,
            feature_spec=files.feature_spec,
            sequence=files.sequence,
            hybrid=files.hybrid,
            ann_index=index,
            index_report=index_report,
        )
        bundle._check_numpy_engines(files.ranking_model, verify_numpy_policy, verify_numpy_ranking)
        return bundle

    def _check_numpy_engines(self, ranking_model: Any, verify_policy: bool, verify_ranking: bool) -> None:
        """Build the numpy ranking engine of ``ranking_model`` (the ranking SavedModel, or None) and, as asked,
        check both numpy engines against their SavedModels on a fixed sample: one that differs is dropped (the
        SavedModel serves rather than a wrong re-implementation)."""
        if self.reward_network is not None and verify_policy and not self.numpy_policy_matches():
            self.reward_network = None
        if ranking_model is None:
            return
        self.numpy_ranker = _numpy_ranker(ranking_model, self.path, self.feature_spec, self.item_ids)
        if self.numpy_ranker is not None and verify_ranking and not self.numpy_ranking_matches():
            log.warning("%s: the numpy ranking engine differs from the ranking SavedModel on the check "
                        "sample; ranking with the SavedModel", self.path)
            self.numpy_ranker = None

    # ------------------------------------------------------------------ catalog
    def add_items(self, items: pd.DataFrame) -> int:
        """Make catalog items the model was not trained on recommendable from their content (category, price).

        Each new item's retrieval and policy embeddings are the mean over trained items of its category (all
        trained items when the category is unknown); its popularity prior is the catalog's lowest. Returns the
        number of items added.
        """
        new = items[~items["item_id"].astype(str).isin(self.item_index)]
        if new.empty:
            return 0
        trained_cat = self.item_category[: self.trained_items]
        emb, pemb = [], []
        for cat in new.get("category", pd.Series([""] * len(new))).fillna("").astype(str):
            mask = trained_cat == cat
            mask = mask if mask.any() else np.ones(self.trained_items, bool)
            emb.append(self.item_matrix[: self.trained_items][mask].mean(axis=0))
            pemb.append(self.policy_item_matrix[: self.trained_items][mask].mean(axis=0))
        new_ids = new["item_id"].astype(str).to_numpy(object)
        if self.ann_index is not None:  # the index's rows stay the bundle's rows
            self.ann_index.faiss_index.add(np.ascontiguousarray(np.stack(emb), np.float32))
            self.ann_index.item_ids.extend(str(i) for i in new_ids)
        self.item_ids = np.concatenate([self.item_ids, new_ids])
        self.item_matrix = np.ascontiguousarray(np.vstack([self.item_matrix, np.stack(emb)]), np.float32)
        self.policy_item_matrix = np.vstack([self.policy_item_matrix, np.stack(pemb)]).astype(np.float32)
        self.item_log_popularity = np.concatenate(
            [self.item_log_popularity, np.full(len(new), self.item_log_popularity.min(initial=0.0))]
        )
        self.item_category = np.concatenate(
            [
                self.item_category,
                new.get("category", pd.Series([""] * len(new))).fillna("").astype(str).to_numpy(object),
            ]
        )
        self.item_price = np.concatenate(
            [self.item_price, new.get("price", pd.Series([0.0] * len(new))).fillna(0.0).to_numpy(float)]
        )
        self.item_index = {str(i): n for n, i in enumerate(self.item_ids)}
        if self.numpy_ranker is not None:
            self.numpy_ranker.add_items(new_ids)
        return len(new)

    # ------------------------------------------------------------------ model calls
    @property
    def is_sequence(self) -> bool:
        """Whether retrieval is the sequence model (every user is served from their history)."""
        return self.sequence is not None

    def sequence_query(self, user_id: str, request: Sequence[HistoryEntry] | None,
                       feedback: Sequence[HistoryEntry]) -> np.ndarray | None:
        """The sequence model's user vector from the user's history (see :meth:`SequenceState.history_for`),
        or None without a sequence model or without any known item in the history."""
        if self.sequence is None:
            return None
        return self.sequence.encode(self.sequence.history_for(user_id, request, feedback))

    def hybrid_scores(self, state: np.ndarray, entries: Sequence[HistoryEntry]) -> np.ndarray | None:
        """Every item's blended retrieval score for the user state ``state`` of the history ``entries`` (what
        :meth:`SequenceState.history_for` returned), or None without a blend. EASE reads the items the encoder
        read (:meth:`SequenceState.known`)."""
        if self.hybrid is None or self.sequence is None:
            return None
        rows = self.hybrid.history_rows([e.item_id for e in self.sequence.known(entries)], self.item_index)
        return self.hybrid.scores(np.asarray(self.item_matrix @ state)[None, :], [rows])[0]

    @property
    def has_history_ranker(self) -> bool:
        """Whether the bundle ranks requests with a sequence state by the history-aware model."""
        return self.sequence is not None and self.sequence.ranker is not None

    def rank_with_history(self, state: np.ndarray, entries: Sequence[HistoryEntry], rows: np.ndarray,
                          context: Mapping[str, Any]) -> np.ndarray:
        """Click probabilities of the items at ``rows`` by the history-aware ranking model (numpy), for the
        user state ``state`` of the history ``entries`` (see :meth:`SequenceState.history_for`)."""
        seq = self.sequence
        assert seq is not None and seq.ranker is not None
        ids = self.item_ids[rows]
        cand = np.array([seq.item_rows.get(str(i), -1) for i in ids], np.int64)
        scores = self.item_matrix[rows] @ state
        return seq.ranker.click_probabilities(state, seq.rows(entries), ids, cand, scores, context)

    def context_for(self, user_id: str, context: Mapping[str, Any] | None) -> dict[str, Any]:
        """The request's context: its own values over the user's latest logged context over the default."""
        out = dict(self.default_context)
        out.update(self.user_context.get(user_id, {}))
        out.update({k: v for k, v in (context or {}).items() if v is not None})
        return out

    def cold_query(self, hour: int, weekday: int, device: str, region: str) -> np.ndarray:
        """The query tower's output for a user it has never seen, in this context: precomputed for the contexts
        the bundle knows (:meth:`precompute_cold_queries`), else one SavedModel call (cached per context)."""
        found = self._cold_queries.get((hour, weekday, device, region))
        return found if found is not None else self._cold_query_call(hour, weekday, device, region)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one bundle per model version, freed with it
    def _cold_query_call(self, hour: int, weekday: int, device: str, region: str) -> np.ndarray:
        with self._cold_lock:
            return self._query_tower([(hour, weekday, device, region)])[0]

    def _query_tower(self, contexts: Sequence[tuple[int, int, str, str]]) -> np.ndarray:
        """The query tower's outputs ``[len(contexts), D]`` for an unknown user in each (hour, weekday, device,
        region) context, in one call of the retrieval SavedModel's ``query_embedding`` signature."""
        import tensorflow as tf

        fn = self.retrieval.signatures["query_embedding"]
        inputs = {"user_id": tf.constant([""] * len(contexts))}
        for name, spec in fn.structured_input_signature[1].items():
            if name != "user_id":
                column = CONTEXT_FIELDS.index(name) if name in CONTEXT_FIELDS else None
                inputs[name] = tf.constant(
                    [self._fill(name, None if column is None else c[column], spec.dtype) for c in contexts],
                    spec.dtype,
                )
        return fn(**inputs)["embedding"].numpy().astype(np.float32)

    def precompute_cold_queries(self, limit: int = 20_000) -> int:
        """Compute the cold-start query of every context the bundle knows -- each hour and weekday with each
        device and region seen in the users' logged contexts or the default context -- in batched SavedModel
        calls, at load, so that no request of a new user calls TensorFlow (milliseconds per call, holding the
        request thread) while the service serves. At most ``limit`` contexts; returns how many."""
        if self.retrieval is None or "query_embedding" not in getattr(self.retrieval, "signatures", {}):
            return 0
        seen = [self.default_context, *self.user_context.values()]
        devices = sorted({str(c.get("device") or "") for c in seen})
        regions = sorted({str(c.get("region") or "") for c in seen})
        contexts = [(h, w, d, r) for d in devices for r in regions for h in range(24) for w in range(7)][:limit]
        for start in range(0, len(contexts), 4096):
            chunk = contexts[start : start + 4096]
            for key, query in zip(chunk, self._query_tower(chunk), strict=True):
                self._cold_queries[key] = query
        return len(contexts)

    @property
    def ranking_engine(self) -> str:
        """What ranks requests without a sequence state: ``numpy``, ``savedmodel`` or ``none`` (no ranking
        model: the retrieval inner product)."""
        return "none" if self.ranking_fn is None else "numpy" if self.numpy_ranker is not None else "savedmodel"

    def rank_candidates(self, user_id: str, rows: np.ndarray, context: Mapping[str, Any]) -> np.ndarray:
        """Click probabilities of the items at ``rows`` for the user in ``context``: the numpy engine when the
        bundle has one (no TensorFlow call), else one batched SavedModel call."""
        if self.numpy_ranker is not None:
            query = self.numpy_ranker.query_vector(user_id, context, self.default_context)
            return self.numpy_ranker.click_probabilities(query, rows)
        return self._rank_savedmodel(user_id, self.item_ids[rows].tolist(), context)

    def rank(self, user_id: str, item_ids: Sequence[str], context: Mapping[str, Any]) -> np.ndarray:
        """Click probabilities of ``item_ids`` for the user in ``context`` (see :meth:`rank_candidates`; ids
        outside the bundle's catalog are ranked by the SavedModel)."""
        rows = [self.item_index.get(str(i)) for i in item_ids]
        if self.numpy_ranker is not None and None not in rows:
            return self.rank_candidates(user_id, np.array(rows, np.int64), context)
        return self._rank_savedmodel(user_id, item_ids, context)

    def _rank_savedmodel(self, user_id: str, item_ids: Sequence[str], context: Mapping[str, Any]) -> np.ndarray:
        """:meth:`rank` by one batched call of the ranking SavedModel."""
        import tensorflow as tf

        n = len(item_ids)
        if self.ranking_fn is None:  # the log had no impressions: fall back to the retrieval inner product
            rows = np.array([self.item_index[i] for i in item_ids])
            q = (
                self.user_matrix[self.user_index[user_id]]
                if user_id in self.user_index
                else np.zeros(self.item_matrix.shape[1], np.float32)
            )
            return 1.0 / (1.0 + np.exp(-(self.item_matrix[rows] @ q)))
        inputs: dict[str, Any] = {
            "user_id": tf.constant([user_id] * n),
            "item_id": tf.constant(list(item_ids)),
        }
        for name, spec in self.ranking_fn.structured_input_signature[1].items():
            if name in ("user_id", "item_id"):
                continue
            value = context.get(name, self.default_context.get(name))
            inputs[name] = tf.constant([self._fill(name, value, spec.dtype)] * n, spec.dtype)
        return self.ranking_fn(**inputs)["probability"].numpy().astype(np.float64)

    def rank_rows(
        self, user_ids: Sequence[str], item_ids: Sequence[str], contexts: Mapping[str, Sequence[Any]]
    ) -> np.ndarray:
        """Click probabilities of (user, item, context) rows in one ranking-model call."""
        import tensorflow as tf

        inputs: dict[str, Any] = {
            "user_id": tf.constant(list(user_ids)),
            "item_id": tf.constant(list(item_ids)),
        }
        for name, spec in self.ranking_fn.structured_input_signature[1].items():
            if name not in ("user_id", "item_id"):
                column = contexts.get(name) or [None] * len(user_ids)
                inputs[name] = tf.constant([self._fill(name, v, spec.dtype) for v in column], spec.dtype)
        return self.ranking_fn(**inputs)["probability"].numpy().astype(np.float64)

    def _fill(self, name: str, value: Any, dtype: Any) -> Any:
        """``value``, or the Transform step's fill value for a raw input the request does not carry."""
        if value is not None and value != "":
            return value
        fill = self.feature_spec.get("fill_values", {}).get(name)
        if fill is not None:
            return fill
        return "" if dtype.name == "string" else 0

    def policy_features(
        self, user_embedding: np.ndarray | None, context: Mapping[str, Any], rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The policy's ``[1, global_dim]`` and ``[1, len(rows), arm_dim]`` features for candidate rows."""
        from recflow.policy.logged_data import arm_features, global_features

        layout = self.policy_scorer.layout
        user = (
            np.asarray(layout.unknown_user_embedding, np.float32)
            if user_embedding is None
            else np.asarray(user_embedding, np.float32)
        )[None, :]
        onehots = self.context_onehot(tuple(context.get(c) for c in layout.context_columns))
        g = global_features(user, onehots[None, :])
        a = arm_features(user, self.policy_item_matrix[rows][None, :, :])
        return g, a

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def context_onehot(self, values: tuple[Any, ...]) -> np.ndarray:
        """The policy's context one-hot block for one request (the rule of ``logged_data.context_onehots``).

        The pandas original costs milliseconds per call; this is the same encoding for one row, cached.
        """
        layout = self.policy_scorer.layout
        blocks = []
        for col, value in zip(layout.context_columns, values, strict=True):
            cats = list(CONTEXT_CATEGORIES[col])
            block = np.zeros(len(cats), np.float32)
            if value is not None:
                if col == "device":
                    block[cats.index(value) if value in cats else len(cats) - 1] = 1.0
                else:
                    try:
                        num = float(value)
                    except (TypeError, ValueError):
                        num = float("nan")
                    if 0 <= num <= len(cats) - 1:
                        block[int(num)] = 1.0
            blocks.append(block)
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

    def policy_scores(self, global_feats: np.ndarray, arm_feats: np.ndarray) -> np.ndarray:
        """The exported policy's ranking score per candidate, ``[n_candidates]``."""
        if self.reward_network is not None:
            return self.reward_network(global_feats, arm_feats)[0].astype(np.float64)
        return self._policy_scores_tf(global_feats, arm_feats)

    def _policy_scores_tf(self, global_feats: np.ndarray, arm_feats: np.ndarray) -> np.ndarray:
        scorer = self.policy_scorer
        k, n = scorer.num_arms, arm_feats.shape[1]
        blocks = -(-n // k)
        pad = np.concatenate([arm_feats[0], np.repeat(arm_feats[0, -1:], blocks * k - n, axis=0)])
        info = scorer.policy_step(np.repeat(global_feats, blocks, axis=0), pad.reshape(blocks, k, -1)).info
        key = "predicted_rewards_optimistic" if scorer.agent == "lin_ucb" else "predicted_rewards_mean"
        return getattr(info, key).numpy().reshape(-1)[:n].astype(np.float64)

    def numpy_ranking_matches(self, tol: float = 1e-5) -> bool:
        """Whether the numpy ranking engine reproduces the SavedModel's click probabilities on the fixed sample
        of :func:`serving.ranking.ranking_sample` (known and unknown users and contexts)."""
        from serving.ranking import ranking_sample

        if self.numpy_ranker is None:
            return False
        users = list(self.numpy_ranker.user_row)
        for user, rows, ctx in ranking_sample(users, len(self.item_ids), self.default_context):
            ids = self.item_ids[rows].tolist()
            if not np.allclose(self.rank_candidates(user, rows, ctx), self._rank_savedmodel(user, ids, ctx),
                               atol=tol, rtol=0.0):
                return False
        return True

    def numpy_policy_matches(self, trials: int = 3, tol: float = 1e-4) -> bool:
        """Whether the numpy reward network reproduces the SavedModel's scores on random inputs."""
        if self.reward_network is None:
            return False
        rng = np.random.default_rng(0)
        layout = self.policy_scorer.layout
        for _ in range(trials):
            rows = rng.choice(len(self.item_ids), size=min(len(self.item_ids), 15), replace=False)
            user = rng.normal(size=layout.embedding_dim).astype(np.float32) * 0.3
            ctx = {"hour": int(rng.integers(24)), "weekday": int(rng.integers(7)), "device": "mobile"}
            g, a = self.policy_features(user, ctx, rows)
            if not np.allclose(
                self.reward_network(g, a)[0], self._policy_scores_tf(g, a), atol=tol, rtol=tol
            ):
                return False
        return True


@dataclass
class _BundleFiles:
    """What one bundle's files hold, as read (:func:`_read_bundle_files`); nothing derived from them yet."""

    item_ids: np.ndarray  # [N], the rows of item_embeddings.parquet
    item_matrix: np.ndarray  # [N, D]
    user_ids: np.ndarray  # [U], the rows of user_embeddings.parquet
    user_matrix: np.ndarray  # [U, D]
    contexts: pd.DataFrame  # each known user's latest context
    default_context: dict[str, Any]
    feature_spec: dict[str, Any]
    candidates: pd.DataFrame  # the catalog (item_id, category, price, ...)
    retrieval: Any  # the retrieval SavedModel
    ranking_model: Any  # the ranking SavedModel, or None when the bundle has none
    ranking_fn: Any  # its serving signature, or None
    scorer: PolicyScorer
    sequence: SequenceState | None  # a sequence bundle's encoder and histories
    hybrid: HybridBlend | None  # a sequence bundle's blend with EASE, when it has one


def _check_parts(root: Path) -> None:
    for part in bundle_layout.PARTS:
        if not (root / part).is_dir():
            raise DataError(f"{root}: bundle part {part}/ is missing (expected model/, policy/, transform/)")


def _load_ranking_model(model_dir: Path) -> Any:
    """The ranking SavedModel of ``model_dir``, or None when the bundle has none."""
    import tensorflow as tf

    ranking_dir = model_dir / bundle_layout.RANKING_DIR
    if not (ranking_dir / bundle_layout.SAVED_MODEL_FILE).is_file():
        return None
    return tf.saved_model.load(str(ranking_dir))


def _read_bundle_files(root: Path) -> _BundleFiles:
    """Read every part of the bundle ``root`` (model, transform, policy, sequence state); a missing part or an
    unreadable file raises :class:`DataError` naming the bundle."""
    import tensorflow as tf

    from recflow.policy.scorer import load_policy

    _check_parts(root)
    model = root / bundle_layout.MODEL_DIR
    transform = root / bundle_layout.TRANSFORM_DIR
    try:
        item_ids, item_matrix = _matrix(model / bundle_layout.ITEM_EMBEDDINGS_FILE, "item_id")
        user_ids, user_matrix = _matrix(model / bundle_layout.USER_EMBEDDINGS_FILE, "user_id")
        contexts = pd.read_parquet(model / bundle_layout.USER_CONTEXT_FILE)
        default_context = json.loads((model / bundle_layout.DEFAULT_CONTEXT_FILE).read_text(encoding="utf-8"))
        feature_spec = json.loads((transform / bundle_layout.FEATURE_SPEC_FILE).read_text(encoding="utf-8"))
        candidates = pd.read_parquet(transform / bundle_layout.CANDIDATES_FILE)
        retrieval = tf.saved_model.load(str(model / bundle_layout.RETRIEVAL_DIR))
        ranking_model = _load_ranking_model(model)
        ranking_fn = None if ranking_model is None else ranking_model.signatures["serving_default"]
        scorer = load_policy(root / bundle_layout.POLICY_DIR)
        sequence = SequenceState(model) if (model / ENCODER_FILE).is_file() else None
        hybrid = load_hybrid(model, len(item_ids)) if sequence is not None else None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable part makes the bundle unusable
        raise DataError(f"{root}: cannot load the bundle: {type(exc).__name__}: {exc}") from None
    return _BundleFiles(item_ids=item_ids, item_matrix=item_matrix, user_ids=user_ids, user_matrix=user_matrix,
                        contexts=contexts, default_context=default_context, feature_spec=feature_spec,
                        candidates=candidates, retrieval=retrieval, ranking_model=ranking_model,
                        ranking_fn=ranking_fn, scorer=scorer, sequence=sequence, hybrid=hybrid)


def _catalog_columns(candidates: pd.DataFrame, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each item's category (``""`` when unknown) and price (0 when unknown), aligned with ``item_ids``."""
    cand = candidates.assign(item_id=candidates["item_id"].astype(str)).set_index("item_id").reindex(item_ids)
    category = (
        cand["category"].fillna("").astype(str).to_numpy(object)
        if "category" in cand
        else np.full(len(item_ids), "", object)
    )
    price = cand["price"].fillna(0.0).to_numpy(float) if "price" in cand else np.zeros(len(item_ids))
    return category, price


def _policy_item_matrix(scorer: PolicyScorer, item_ids: np.ndarray) -> np.ndarray:
    """The policy's item embeddings aligned with ``item_ids``; items the policy does not know get its mean."""
    policy_pos = pd.Index(scorer.item_ids.astype(str)).get_indexer(pd.Index(item_ids))
    policy_items = np.zeros((len(item_ids), scorer.item_embeddings.shape[1]), np.float32)
    policy_items[policy_pos >= 0] = scorer.item_embeddings[policy_pos[policy_pos >= 0]]
    if (policy_pos < 0).any():
        policy_items[policy_pos < 0] = scorer.item_embeddings.mean(axis=0)
    return policy_items


def _reward_network(scorer: PolicyScorer) -> NumpyRewardNetwork | None:
    """The numpy reward network of a neural epsilon-greedy policy; None for other agents (the SavedModel
    scores)."""
    if scorer.agent != "neural_epsilon_greedy":
        return None
    return NumpyRewardNetwork(scorer.policy.model_variables, scorer.layout.global_dim, scorer.layout.arm_dim)


def _user_contexts(contexts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Each known user's latest context (the :data:`CONTEXT_FIELDS` the file has), as plain Python values."""
    ctx_cols = [c for c in CONTEXT_FIELDS if c in contexts.columns]
    return {str(r["user_id"]): {c: _plain(r[c]) for c in ctx_cols} for r in contexts.to_dict("records")}


def _numpy_ranker(loaded: Any, root: Path, spec: Mapping[str, Any], item_ids: np.ndarray) -> Any:
    """The numpy engine of the ranking SavedModel ``loaded`` (:class:`serving.ranking.NumpyRanker`), or None
    (with a warning) when it cannot be built from this bundle; the SavedModel then ranks."""
    from serving.ranking import NumpyRanker

    try:
        return NumpyRanker(loaded, root / bundle_layout.MODEL_DIR,
                           root / bundle_layout.TRANSFORM_DIR / bundle_layout.TRANSFORM_GRAPH_DIR, spec, item_ids)
    except Exception as exc:  # noqa: BLE001 - an older or unusual bundle is still served, by the SavedModel
        log.warning("%s: no numpy ranking engine (%s: %s); ranking with the SavedModel", root,
                    type(exc).__name__, exc)
        return None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _log_popularity(transform_graph: Path, item_ids: np.ndarray) -> np.ndarray:
    """A log-popularity prior from the tf.Transform item vocabulary, which lists items most frequent first.

    The vocabulary keeps ranks, not counts, so the prior is Zipf-like: ``-log(rank + 1)``; items outside it
    get the lowest value.
    """
    vocab_file = transform_graph / "transform_fn" / "assets" / "item_id"
    if not vocab_file.is_file():
        return np.zeros(len(item_ids))
    vocab = [line.strip() for line in vocab_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rank = {v: i for i, v in enumerate(vocab)}
    worst = len(vocab)
    return -np.log1p(np.array([rank.get(str(i), worst) for i in item_ids], dtype=float))
