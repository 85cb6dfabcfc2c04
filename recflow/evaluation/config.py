"""Configuration of the Evaluator (the ``evaluator`` section of the recflow config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recflow.baselines import COUNT_EVENT_WEIGHTS
from recflow.reranking import RerankingConfig

#: Metric names :func:`recflow.evaluation.metrics.per_user_metrics` computes (each reported as ``name@k``).
RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "mrr", "hit")
#: Baselines :func:`recflow.baselines.make_baseline` can build.
BASELINE_NAMES: tuple[str, ...] = (
    "popularity", "als", "item_knn", "content", "bpr", "ease", "most_viewed", "most_recent", "coview"
)
"""Baselines the Evaluator can run; ``ease`` builds an items x items matrix, so leave it off for large catalogs."""
#: Baselines :func:`recflow.baseline_tuning.tune_baselines` can tune (see its SEARCH_SPACES).
TUNABLE_BASELINES: tuple[str, ...] = ("als", "ease", "item_knn", "bpr", "coview")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlessingThresholds(_Section):
    """The rules that decide whether a candidate is blessed (every rule that fails is reported as a
    reason)."""

    min_ndcg: float = Field(0.0, ge=0.0, le=1.0, description="Absolute floor on the candidate's NDCG@k.")
    min_recall: float = Field(0.0, ge=0.0, le=1.0, description="Absolute floor on the candidate's Recall@k.")
    min_lift_over_popularity: float | None = Field(
        0.0,
        description="The candidate's primary metric must be at least popularity's times (1 + this) "
        "(0.05 = beat popularity by 5%; 0 = at least tie; null = rule off).",
    )
    min_lift_over_best_baseline: float | None = Field(
        0.0,
        description="The candidate's primary metric must be at least the best baseline's of the same run "
        "(highest primary metric among evaluator.baselines) times (1 + this) (0 = at least equal; "
        "null = rule off, and the blessing says so).",
    )
    alpha: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Level of the one-sided non-inferiority tests against the champion (and of the "
        "confidence intervals of the report's paired tests).",
    )
    require_not_worse_than_champion: bool = Field(
        True,
        description="When a champion exists, the candidate must be shown non-inferior to it on every metric "
        "of non_inferiority_margins (one-sided test at alpha), by a comparison powered to tell a difference of "
        "the margin (power >= min_power) or showing the candidate better; false = rule off (reported).",
    )
    non_inferiority_margins: dict[str, float] = Field(
        {"ndcg": 0.02, "recall": 0.02},
        description="Non-inferiority margin per ranking metric, relative to the champion's value (0.02: the "
        "candidate may be at most 2% worse than the champion, and must show it). Every metric named here must "
        "be among evaluator.metrics.",
    )
    min_power: float = Field(
        0.8,
        gt=0.0,
        lt=1.0,
        description="Power the comparison with the champion must have to tell a difference of the margin "
        "(when the models are equal); below it the candidate is not blessed unless it is shown better, and the "
        "report says how many users would be needed.",
    )
    significance_test: Literal["ttest", "wilcoxon", "either"] = Field(
        "ttest",
        description="Which paired test decides non-inferiority: the paired t-test, the Wilcoxon signed-rank "
        "test, or either of them (both must show it: strictest).",
    )
    min_index_recall: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Floor on the approximate retrieval index's recall vs exact search (metric "
        "'index_recall@k'; null = rule off). When set and the metric is missing, the candidate is refused.",
    )


class ALSConfig(_Section):
    """Hyper-parameters of the ALS baseline (implicit.cpu.als.AlternatingLeastSquares).

    Defaults were picked on the eval split of the default simulated shop (2,000 users, 1,000 items, 14 days):
    strong regularization matters most there (NDCG@10 0.14 at 0.05, 0.46 at 30).
    """

    factors: int = Field(32, gt=0, description="Latent factors.")
    iterations: int = Field(15, gt=0, description="ALS sweeps.")
    regularization: float = Field(30.0, ge=0.0, description="L2 regularization.")
    alpha: float = Field(1.0, gt=0.0, description="Confidence scaling of the weighted interactions.")


class CountBaselinesConfig(_Section):
    """Hyper-parameters of the count and co-occurrence baselines (most_viewed, most_recent, coview; see
    recflow/baselines.py)."""

    event_weights: dict[str, float] = Field(
        dict(COUNT_EVENT_WEIGHTS),
        description="What each event type counts for most_viewed (and which events make a history): "
        "every interaction once by default; impressions and removals never count.",
    )
    coview_session_gap_minutes: float = Field(
        30.0, gt=0.0, description="coview: without a session_id, a user's events split into baskets at gaps "
        "longer than this."
    )
    coview_neighbors: int = Field(100, gt=0, description="coview: most similar items kept per item.")
    coview_decay: float = Field(
        0.8, gt=0.0, le=1.0, description="coview: weight of the r-th most recent history item is decay**r."
    )
    coview_max_history: int = Field(20, gt=0, description="coview: most recent distinct items scored from.")

    @field_validator("event_weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not v >= 0}
        if bad:
            raise ValueError(f"event weights must be >= 0, got {bad}")
        return value


class BeyondAccuracyConfig(_Section):
    """Beyond-accuracy metrics (diversity, novelty, long-tail and group exposure; see
    recflow/evaluation/beyond_accuracy.py)."""

    enabled: bool = Field(True, description="Compute and report the beyond-accuracy metrics for every method.")
    head_share: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="The head is the fewest most-interacted items holding this share of the training "
        "interactions; every other item is long tail (also used by the xquad re-ranking).",
    )


class EvaluatorConfig(_Section):
    """How candidates are evaluated against baselines and the champion, and when they are blessed."""

    k: int = Field(10, gt=0, description="Cut-off of the ranking metrics (Precision@k, NDCG@k, ...).")
    metrics: tuple[str, ...] = Field(
        RANKING_METRICS,
        description="Ranking metrics reported (subset of " + ", ".join(RANKING_METRICS) + ").",
    )
    primary_metric: str = Field(
        "ndcg",
        description="Metric used for the lift over popularity, the best baseline and the significance tests.",
    )
    split: Literal["test", "eval"] = Field(
        "test", description="Held-out split evaluated (test.parquet or eval.parquet)."
    )
    exclude_train_items: bool = Field(
        True,
        description="Never recommend items a user interacted with in train, and drop them from that user's "
        "held-out relevant set (they could never be hit).",
    )
    max_users: int | None = Field(
        5000, gt=0, description="Evaluate at most this many held-out users (sampled with seed); null = all."
    )
    seed: int = Field(42, ge=0, description="Seed of the user sample and of the baselines.")
    ope_max_scored_pairs: int | None = Field(
        100_000_000,
        gt=0,
        description="The off-policy estimates score every logged decision against the whole catalog; when "
        "decisions x catalog items exceed this, they use a seeded sample of whole logged requests that fits it "
        "(said in the report: their confidence intervals widen). null = every decision.",
    )
    max_slice_examples: int = Field(
        20_000,
        gt=0,
        description="The TFMA slices score at most this many held-out (user, shown item) pairs, a seeded sample "
        "(said in the report when it binds).",
    )
    max_dense_items: int | None = Field(
        20_000,
        gt=0,
        description="Skip the baselines that build dense item-by-item matrices (ease: 2 x 8 x items^2 bytes, "
        "160 GB at 100,000 items) when train has more items than this, in tuning too; the reason is in the "
        "report and the run summary, and the best remaining baseline is the bar. null = never skip.",
    )
    baselines: tuple[str, ...] = Field(
        ("popularity", "als", "item_knn", "content", "most_viewed", "most_recent", "coview"),
        description="Baselines fitted on train and evaluated in the same run ("
        + ", ".join(BASELINE_NAMES)
        + ").",
    )
    popularity_half_life_days: float | None = Field(
        None, gt=0.0, description="Recency decay of the popularity baseline (null = plain counts)."
    )
    item_knn_neighbors: int = Field(
        50, gt=0, description="Neighbours kept per item by the item-kNN baseline."
    )
    als: ALSConfig = Field(ALSConfig(), description="ALS baseline hyper-parameters.")
    count_baselines: CountBaselinesConfig = Field(
        CountBaselinesConfig(), description="most_viewed, most_recent and coview hyper-parameters."
    )
    baseline_tuning_trials: int = Field(
        8,
        ge=0,
        description="Trials each tuned baseline gets (fit on train, scored on eval, Optuna TPE seeded with "
        "seed; trial 0 = the configured values); the best is then fitted and compared on the evaluated split. "
        "0 = no tuning (the configured values).",
    )
    tuned_baselines: tuple[str, ...] = Field(
        ("als", "ease", "item_knn", "coview"),
        description="Which of evaluator.baselines are tuned (from " + ", ".join(TUNABLE_BASELINES) + ").",
    )
    thresholds: BlessingThresholds = Field(BlessingThresholds(), description="Blessing rules.")
    beyond_accuracy: BeyondAccuracyConfig = Field(
        BeyondAccuracyConfig(), description="Diversity, novelty and exposure metrics."
    )
    reranking: RerankingConfig = Field(
        RerankingConfig(),
        description="Re-rank the candidate's lists for long-tail exposure or diversity before evaluating them "
        "(the un-re-ranked candidate is reported beside it as 'candidate_unreranked').",
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in RANKING_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(RANKING_METRICS)}")
        return value

    @model_validator(mode="after")
    def _margins_are_measured(self) -> EvaluatorConfig:
        margins = self.thresholds.non_inferiority_margins
        unknown = [m for m in margins if m not in RANKING_METRICS]
        if unknown:
            raise ValueError(
                f"thresholds.non_inferiority_margins: unknown metric(s) {unknown}; choose from "
                f"{list(RANKING_METRICS)}"
            )
        missing = [m for m in margins if m not in self.metrics and m != self.primary_metric]
        if missing:
            raise ValueError(
                f"thresholds.non_inferiority_margins: metric(s) {missing} are not measured (add them to "
                "evaluator.metrics)"
            )
        bad = {m: v for m, v in margins.items() if not 0.0 <= v < 1.0}
        if bad:
            raise ValueError(f"thresholds.non_inferiority_margins: margins must be in [0, 1), got {bad}")
        return self

    @field_validator("primary_metric")
    @classmethod
    def _known_primary(cls, value: str) -> str:
        if value not in RANKING_METRICS:
            raise ValueError(f"unknown metric {value!r}; choose from {list(RANKING_METRICS)}")
        return value

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in value if b not in BASELINE_NAMES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINE_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError("baselines are listed more than once")
        return value

    @field_validator("tuned_baselines")
    @classmethod
    def _tunable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in value if b not in TUNABLE_BASELINES]
        if unknown:
            raise ValueError(f"baseline(s) {unknown} cannot be tuned; choose from {list(TUNABLE_BASELINES)}")
        return value

    def metric_key(self, metric: str | None = None) -> str:
        """The reported name of a metric at this config's cut-off, e.g. ``'ndcg@10'``."""
        return f"{metric or self.primary_metric}@{self.k}"
