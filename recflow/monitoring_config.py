"""Configuration of monitoring: the drift job's thresholds and the retraining watcher's guards.

This is the ``monitoring`` section of the core config (``RecflowConfig.monitoring``); it lives in the core
library because the monitoring package imports the core, never the other way round.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftConfig(_Frozen):
    """Thresholds of ``recflow monitor drift`` (see docs/monitoring.md for how they were chosen)."""

    min_events: int = Field(
        2000,
        ge=1,
        description="Fewest events a window (reference and current alike) needs before any verdict; fewer "
        "gives the verdict 'insufficient_data' (exit code 4).",
    )
    min_clicks: int = Field(
        30, ge=1, description="Fewest clicks the reference needs before the click-rate tests run."
    )
    max_rows: int = Field(
        50_000,
        ge=1000,
        description="Impressions per window fed to Evidently at most (a seeded sample above it).",
    )
    drift_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Feature drift is declared when at least this share of the verdict's feature columns drifted.",
    )
    numerical_method: str = Field(
        "wasserstein",
        description="Evidently stat test of numerical columns (an effect size, so huge windows do not alarm "
        "on trivial shifts).",
    )
    numerical_threshold: float = Field(0.1, gt=0.0, description="Drift when the numerical distance is >= this.")
    categorical_method: str = Field("jensenshannon", description="Evidently stat test of categorical columns.")
    categorical_threshold: float = Field(
        0.1, gt=0.0, description="Drift when the categorical distance is >= this."
    )
    prediction_numerical_threshold: float = Field(
        0.3,
        gt=0.0,
        description="Drift threshold of the numerical prediction columns (score, categories per slate): what a "
        "model shows is clustered by user and request, so it varies more between windows than the features "
        "(0.3 keeps the false-alarm rate of benchmarks/drift_loop.py within target).",
    )
    informational_columns: tuple[str, ...] = Field(
        ("hour", "weekday", "user_known"),
        description="Columns reported but left out of the verdict: a short recent window always covers other "
        "hours/weekdays than weeks of training data, and users unseen in the reference keep arriving in a "
        "stationary shop; neither is drift.",
    )
    target_alpha: float = Field(
        0.002,
        gt=0.0,
        lt=1.0,
        description="Significance level of the target tests (CTR, CVR: two-proportion z-test; click category "
        "mix: chi-square).",
    )
    min_relative_change: float = Field(
        0.1,
        ge=0.0,
        description="A significant CTR/CVR change must also move the rate by at least this share to count.",
    )
    ctr_cusum_drop: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Relative CTR drop the sequential CTR test (a one-sided Bernoulli CUSUM over the current "
        "window's impressions, in time order, against the reference CTR) is tuned to; 0 turns the test off.",
    )
    ctr_cusum_threshold: float = Field(
        8.0,
        gt=0.0,
        description="CUSUM decision threshold h (log-likelihood ratio): target drift when the statistic at the "
        "end of the current window is above it. benchmarks/drift_loop.py --calibrate finds the smallest "
        "threshold with at most one confirmed false alarm in its 20 no-drift runs (threshold_sweep in "
        "benchmarks/results/drift_loop.json: 6.5; 6.0 gave 2 alarms, 4.0 gave 4); the default keeps a margin "
        "above it for shops noisier than the simulated one.",
    )
    click_model: bool = Field(
        True,
        description="Risk-adjust the CTR tests: fit a click model (logistic regression on score, position, "
        "context, segment and category) on the reference and compare the current window's clicks with its "
        "prediction (needs request ids in the log; else the CUSUM uses the reference's overall CTR).",
    )
    seed: int = Field(0, ge=0, description="Seed of the row sampling above max_rows.")


class WatchConfig(_Frozen):
    """Guards of ``recflow monitor watch`` (the retraining trigger)."""

    state_dir: str | None = Field(
        None, description="Where the watcher keeps its lock, state and decision log; null: DATA_DIR/monitoring."
    )
    interval_s: float = Field(300.0, gt=0.0, description="Seconds between two polls of the loop.")
    confirmations: int = Field(
        2,
        ge=1,
        description="Consecutive drift verdicts needed before drift counts as confirmed (one noisy window "
        "never retrains).",
    )
    cooldown_s: float = Field(
        6 * 3600.0, ge=0.0, description="Seconds after a retraining starts during which no other one starts."
    )
    dedup_window_s: float = Field(
        3600.0, ge=0.0, description="An alert with a fingerprint seen within this many seconds is a duplicate."
    )
    daily_budget: int = Field(3, ge=0, description="Retrainings started per UTC day at most.")
    recent_events: int = Field(
        200_000, ge=1000, description="Events a retraining trains on: the newest of the champion's training data "
        "(the watcher's --reference) followed by the feedback log, cut to this many."
    )
    kfp_host: str | None = Field(
        None, description="Kubeflow Pipelines API URL; set: `recflow pipeline submit`, null: local runner."
    )
    retraining_overrides: tuple[str, ...] = Field(
        (
            "evaluator.thresholds.min_lift_over_popularity=null",
            "evaluator.thresholds.min_lift_over_best_baseline=null",
        ),
        description="Config overrides (key=value) of a drift-triggered retraining. After a drift the newest "
        "traffic, which the pipeline's time split holds out for the test, was chosen by the degraded champion: "
        "its clicks fall on the few items it kept showing, which the popularity of that same period predicts by "
        "construction (measured in the end-to-end test: popularity's NDCG@10 0.355 with a 2.8% catalog "
        "coverage). So the retraining's gate is the champion comparison (a retrained model must not be "
        "significantly worse than the champion on the drifted traffic) and the absolute floors, not the lift "
        "over popularity or over the run's best baseline (popularity is one of them); scheduled retrainings keep "
        "every rule.",
    )
    warm_start_from_champion: bool = Field(
        True,
        description="Start a drift-triggered retraining's towers from the serving champion's weights "
        "(`trainer.warm_start_from`; local model stores). The feedback after a drift holds what the degraded "
        "champion chose to show: a cold start learns the drop but loses what the champion knew of users and "
        "items (docs/monitoring.md: in a replay of the end-to-end test's shop, 27-39% of the drift's CTR loss won "
        "back warm, 13-15% cold).",
    )
    alert_names: tuple[str, ...] = Field(
        ("RecflowDataDrift", "RecflowCTRDrop"),
        description="Alertmanager alerts that trigger a retraining (others are logged and ignored).",
    )


class MonitoringConfig(_Frozen):
    """The ``monitoring`` config section: the drift job and the retraining watcher."""

    drift: DriftConfig = Field(DriftConfig(), description="The drift job's thresholds.")
    watch: WatchConfig = Field(WatchConfig(), description="The retraining watcher's guards.")
