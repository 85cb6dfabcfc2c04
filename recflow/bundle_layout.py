"""The layout of a model bundle: the names Transform and the trainers write and serving reads.

A bundle (one version in the model store, see :mod:`recflow.model_store`) holds the output directories of three
pipeline steps, under the names :data:`MODEL_DIR`, :data:`TRANSFORM_DIR` and :data:`POLICY_DIR`::

    model/                       the TFRS trainer (recflow.training.tfrs_trainer)
        retrieval/               SavedModel: raw request features in, top-K item ids and scores out
        ranking/                 SavedModel, only when the log had clicked impressions
        index/                   the candidate index (recflow.index)
        item_embeddings.parquet  item_id, embedding
        user_embeddings.parquet  user_id, embedding (the users of the train split)
        user_context.parquet     each user's latest logged context
        default_context.json     the context of a request that brings none
        user_history.parquet     each user's recent events (sequence retrieval only)
        hybrid.json              the sequence + EASE blend: weight, l2, validation NDCG, or why it is off
        item_item.npy            EASE's item-item weights [items, items] (only with a blend weight > 0)
        training.json            what the trainer measured
    transform/                   Transform (recflow.features.transform)
        transform_graph/         the tf.Transform graph (vocabularies under transform_fn/assets/)
        feature_spec.json        the raw and transformed features
        candidates.parquet       the catalog's candidate items and their raw features
        user_state.parquet       each user's behaviour features
        transformed/             the transformed splits (training only; not pushed)
    policy/                      the TF-Agents trainer (recflow.policy)
        policy/                  the policy's SavedModel
        policy_meta.json         the policy's configuration and item ids
        item_embeddings.npy      the item embeddings the policy scores with

Every writer and reader of these names imports them from here; a name used only inside the module that both
writes and reads it (e.g. the sequence encoder's weights) stays in that module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The bundle's parts (each a pipeline step's output directory).
MODEL_DIR = "model"
TRANSFORM_DIR = "transform"
POLICY_DIR = "policy"
#: The parts a push copies into a model-store version, in this order.
PARTS: tuple[str, ...] = (MODEL_DIR, POLICY_DIR, TRANSFORM_DIR)

# model/
RETRIEVAL_DIR = "retrieval"
RANKING_DIR = "ranking"
INDEX_DIR = "index"
ITEM_EMBEDDINGS_FILE = "item_embeddings.parquet"
USER_EMBEDDINGS_FILE = "user_embeddings.parquet"
USER_CONTEXT_FILE = "user_context.parquet"
DEFAULT_CONTEXT_FILE = "default_context.json"
USER_HISTORY_FILE = "user_history.parquet"
HYBRID_FILE = "hybrid.json"
ITEM_ITEM_FILE = "item_item.npy"
TRAINING_REPORT_FILE = "training.json"
LOGS_DIR = "logs"
#: The file that makes a directory a TensorFlow SavedModel.
SAVED_MODEL_FILE = "saved_model.pb"

# transform/
TRANSFORM_GRAPH_DIR = "transform_graph"
FEATURE_SPEC_FILE = "feature_spec.json"
CANDIDATES_FILE = "candidates.parquet"
USER_STATE_FILE = "user_state.parquet"
TRANSFORMED_DIR = "transformed"

# policy/
POLICY_SAVED_MODEL_DIR = "policy"
POLICY_META_FILE = "policy_meta.json"
POLICY_ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"


@dataclass(frozen=True)
class BundlePaths:
    """The paths of a bundle's parts and files below its root directory."""

    root: Path

    @property
    def model(self) -> Path:
        return Path(self.root) / MODEL_DIR

    @property
    def transform(self) -> Path:
        return Path(self.root) / TRANSFORM_DIR

    @property
    def policy(self) -> Path:
        return Path(self.root) / POLICY_DIR

    @property
    def feature_spec(self) -> Path:
        return self.transform / FEATURE_SPEC_FILE

    @property
    def candidates(self) -> Path:
        return self.transform / CANDIDATES_FILE

    @property
    def transform_graph(self) -> Path:
        return self.transform / TRANSFORM_GRAPH_DIR

    @property
    def item_embeddings(self) -> Path:
        return self.model / ITEM_EMBEDDINGS_FILE

    @property
    def user_embeddings(self) -> Path:
        return self.model / USER_EMBEDDINGS_FILE
