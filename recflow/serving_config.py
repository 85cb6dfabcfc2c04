"""Configuration of the online service (the ``serving`` section of the config; see docs/serving.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ServingConfig(BaseModel):
    """How the service recommends, logs feedback, swaps models, runs A/B tests and protects itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to (0.0.0.0 in a container).")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    workers: int = Field(
        1,
        ge=1,
        description="Worker processes behind the port (recflow serve): each has its own event loop and models, "
        "the bundle's arrays are shared memory-mapped, and new champions are rolled in by starting new workers "
        "(docs/serving.md: about one per core; 1 keeps the in-process hot swap).",
    )
    worker_start_timeout_s: float = Field(
        600.0, gt=0.0, description="How long a new worker may take to load its bundle and answer (workers > 1)."
    )
    drain_s: float = Field(
        2.0,
        ge=0.0,
        le=60.0,
        description="When a model swap retires a worker (workers > 1): seconds it answers with `Connection: close` "
        "first, so clients leave its keep-alive connections between requests rather than have one closed under "
        "a request they are sending (0: retire it at once).",
    )
    feedback_dir: Path | None = Field(
        None, description="Directory of the feedback log segments (default: DATA_DIR/feedback)."
    )
    feedback_segment_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Start a new feedback log segment once the current one is this big.",
    )
    feedback_segment_seconds: float = Field(
        3600.0, gt=0.0, description="Start a new feedback log segment once the current one is this old."
    )
    retrieval_candidates: int = Field(
        100, ge=1, description="Items retrieval hands to the ranking model (exact top-M by inner product)."
    )
    ann_index: bool = Field(
        True,
        description="Retrieve through the bundle's approximate index (model/index/, faiss IVF or HNSW, written by "
        "the trainer with trainer.index.kind) when it has one; an exact (brute_force) index is never used: numpy "
        "over the embedding matrix is exact and as fast.",
    )
    min_index_recall: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Refuse a bundle whose approximate index finds less than this share of the exact top-10: both "
        "the recall@10 recorded in its index.json and the recall re-measured at load must reach it.",
    )
    index_check_queries: int = Field(
        200, ge=1, description="Known users' query vectors (seeded sample) the index recall is re-measured on at load."
    )
    ann_overfetch: int = Field(
        4,
        ge=1,
        description="With the approximate index, a cold start (whose score adds a popularity prior to the inner "
        "product) fetches this many times retrieval_candidates and re-scores them exactly.",
    )
    ranked_candidates: int = Field(
        30, ge=1, description="Best-ranked items the policy chooses the slate from."
    )
    max_k: int = Field(100, ge=1, description="Largest slate a request may ask for.")
    default_k: int = Field(10, ge=1, description="Slate size when a request does not say.")
    epsilon: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Exploration probability per slot (default: the policy's own epsilon).",
    )
    cold_start_epsilon: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Exploration probability per slot for a cold start: a user the model has never seen who "
        "brings no history at all (neither in the request nor from earlier feedback). A user with a history "
        "is not a cold start.",
    )
    new_user_epsilon: float | None = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Exploration probability per slot for a user the model has never seen who brings a "
        "history (null: the same as known users). Default 0: such a user is served from the history in the "
        "request alone, without an exploration penalty (measured in the organic world, where every online "
        "user is new: the known users' epsilon 0.1 cost 5-6% of the served click rate, docs/serving.md). "
        "Their logged propensities are then 1, so off-policy estimates from those requests cover only the "
        "served policy; set a value to explore them too.",
    )
    history_length: int = Field(
        50, ge=1, description="Events of feedback remembered per user to extend their history in memory."
    )
    history_users: int = Field(
        100_000, ge=1, description="Users whose feedback history is kept in memory (least recent forgotten)."
    )
    popularity_weight: float = Field(
        0.5, ge=0.0, description="Weight of the log-popularity prior in the cold-start retrieval score."
    )
    policy_rerank: bool = Field(
        False,
        description="Order the slate by the TF-Agents policy's scores over the ranked pool (true) or by the ranking "
        "model's click probability (false; the policy's scores are still computed and logged). Off by default: "
        "measured, the policy's re-ranking lowers the served pipeline's expected reward on the simulator's default "
        "world (0.969x over 20 traffic seeds, t-test p 0.009, Wilcoxon p 0.005; CTR 0.949x, p 0.06: "
        "benchmarks/results/policy.json, policy_lift); on the organic world it lowers the click rate or leaves it "
        "unchanged on six world seeds (on/off 0.80x-1.00x, benchmarks/results/quality.json, organic_world).",
    )
    online_learning: bool = Field(
        False,
        description="Update a LinUCB correction of the policy's scores from feedback in a background thread. Off "
        "by default: measured harmful or volatile (organic world, benchmarks/quality/organic_world.py seed 0, 100 "
        "new users with feedback posted: expected CTR 0.0160 with it vs 0.0252 without, benchmarks/results/"
        "organic_stages.json; the monitoring replay: "
        "+9% / -17% on two shop seeds, docs/serving.md).",
    )
    online_alpha: float = Field(
        0.05, ge=0.0, description="Width of the online LinUCB confidence bonus added to the policy's score."
    )
    online_ridge: float = Field(1.0, gt=0.0, description="Ridge (lambda) of the online LinUCB model.")
    online_weight: float = Field(
        1.0, ge=0.0, description="Weight of the online model's learned correction in the policy's score."
    )
    online_publish_every: int = Field(
        50, ge=1, description="Publish a new online model snapshot after this many learned decisions."
    )
    request_cache_size: int = Field(
        100_000, ge=100, description="Served slates remembered for feedback attribution and explanations."
    )
    watch_interval_s: float = Field(5.0, gt=0.0, description="How often the model store's alias is polled.")
    warmup_requests: int = Field(
        20, ge=1, description="Requests a new bundle must answer before it is swapped in."
    )
    challenger: str | None = Field(
        None, description="Model store version served to the challenger share of users (None: no A/B test)."
    )
    challenger_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of users (stable hash of the user id) served the challenger."
    )
    ab_salt: str = Field("recflow-ab", description="Salt of the user-id hash that assigns A/B variants.")
    require_key_for_reads: bool = Field(
        False, description="Also require the RECFLOW_API_KEY header on read endpoints."
    )
    max_body_bytes: int = Field(65_536, ge=256, description="Largest accepted request body.")
    max_feedback_events: int = Field(500, ge=1, description="Most events one feedback request may carry.")
    explanation_background: int = Field(
        20, ge=2, description="Background samples of the SHAP explainer (permutation over raw features)."
    )
    batch_max_size: int = Field(
        32, ge=1, description="Most recommendation requests computed in one batch: the requests that queued while "
        "the previous batch was computing (serving/batching.py; 1: one at a time, still off the event loop)."
    )
    batch_max_wait_ms: float = Field(
        0.0, ge=0.0, le=100.0, description="How long a batch waits for more requests before it is computed "
        "(0: it takes only what has queued already, adding no latency)."
    )
    blas_threads: int | None = Field(
        1, ge=1, description="BLAS threads of the serving process (1: a single request's matvec is fastest "
        "that way, and threads fight under load); None leaves the default."
    )
    tf_intra_op_threads: int | None = Field(
        1, ge=1, description="TensorFlow intra-op threads of the serving process (None: TF's default)."
    )
    tf_inter_op_threads: int | None = Field(
        2, ge=1, description="TensorFlow inter-op threads of the serving process (None: TF's default)."
    )
    switch_interval_ms: float | None = Field(
        0.5,
        gt=0.0,
        le=100.0,
        description="The interpreter's thread switch interval in a serving process (sys.setswitchinterval; Python's "
        "default is 5 ms). A worker's event loop and its request thread share the interpreter lock: every system "
        "call one of them makes (a socket write, a log write, a NumPy operation that releases the lock) hands the "
        "lock over, and with the default interval the other holds it up to 5 ms before it comes back. None leaves "
        "the default.",
    )
    loader_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU niceness added (up to 19 in all) to the thread that loads and warms up a worker's bundle "
        "(recflow serve --workers: a new worker for a new champion loads while the old ones serve on the same "
        "cores; Linux gives a thread its own nice value, and the loader is the only thread of its process "
        "while it runs). 0: no change.",
    )
    warm_explanations: bool = Field(
        True,
        description="Explain one slate in the background after a bundle is loaded (and before a new one is swapped "
        "in), so the first explanation request does not pay for importing SHAP and building the explainer.",
    )
    log_level: str = Field(
        "INFO",
        pattern=r"^(?i:DEBUG|INFO|WARNING|ERROR|OFF)$",
        description="Level of the service's JSON log lines on stderr (`recflow serve`): swaps, rollbacks, "
        "rejections, shutdown, warnings.",
    )
    access_log_level: str = Field(
        "INFO",
        pattern=r"^(?i:DEBUG|INFO|WARNING|ERROR|OFF)$",
        description="Level of the one JSON line per request (id, user, variant, model version, latency, status): "
        "logged when at or above log_level (DEBUG with log_level INFO hides them; OFF never logs them).",
    )
    seed: int = Field(0, description="Seed of exploration and of the SHAP background sample.")


def policy_layer_summary(config: ServingConfig) -> str:
    """One line for a run's report: whether serving re-ranks the pushed bundle's slates with its TF-Agents policy
    (``serving.policy_rerank``, default false), and why the default is off."""
    why = ("the default is off because its re-ranking lowered the served pipeline's reward when measured online: "
           "benchmarks/policy/policy_lift.py and the organic world, docs/serving.md 'Policy'")
    if config.policy_rerank:
        return f"serving: the TF-Agents policy re-ranks the pushed bundle's slates (serving.policy_rerank=true; {why})"
    return ("serving: slates follow the ranking model's click probability; the TF-Agents policy's scores are only "
            f"logged (serving.policy_rerank=false; {why})")
