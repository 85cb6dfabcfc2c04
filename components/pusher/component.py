"""Pusher component: blessed model bundle (or, with no champion yet, the run's best baseline) -> model store."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import python_component
from kfp.dsl import Dataset, Input, Model


def pusher(
    transformed: Input[Dataset],
    model: Input[Model],
    policy: Input[Model],
    evaluation: Input[Dataset],
    model_store: str,
    config_yaml: str,
    tracking_uri: str,
    parent_run_id: str,
    status_dir: str,
) -> str:
    """Push the bundle into ``model_store``; returns where it went ('' and a reason line when refused).

    The pipeline runs this step when the Evaluator says to push: a blessed candidate (the model store re-checks
    the blessing itself, so an unblessed model cannot be pushed by any path), or -- the candidate lost and the
    store has no champion yet -- the run's best baseline from ``evaluation/fallback_baseline``, pushed as a
    bundle of kind ``baseline`` that the store never lets replace a champion.
    """
    from pathlib import Path

    from components.step_run import step_run

    with step_run("pusher", config_yaml, tracking_uri, parent_run_id, status_dir) as step:
        from recflow.model_store import ModelStore, register_in_mlflow

        parts = {"transform": Path(transformed.path), "model": Path(model.path), "policy": Path(policy.path),
                 "evaluation": Path(evaluation.path)}
        from recflow.model_store import read_blessing
        from recflow.servable_baseline import FALLBACK_DIR

        store = ModelStore.from_config(model_store, step.config.model_store)
        canary = step.config.release.canary.enabled
        blessed = read_blessing(Path(evaluation.path))[0]
        fallback = Path(evaluation.path) / FALLBACK_DIR
        if not blessed and fallback.is_dir():  # the candidate lost and there is no champion yet
            result = store.push_baseline(fallback, Path(evaluation.path), metadata={"mlflow_run_id": parent_run_id})
        else:
            result = store.push(parts, Path(evaluation.path), metadata={"mlflow_run_id": parent_run_id},
                                canary=canary)
        kind = result.bundle.kind if result.pushed and result.bundle is not None else ""
        where = str(result.bundle.path) if result.pushed else ""
        alias = "canary" if result.as_canary else "champion"
        registered = ""
        if result.pushed and tracking_uri and parent_run_id:
            # The store is the source of truth; the registry mirrors it (`recflow models rollback` re-syncs it).
            registered = register_in_mlflow(tracking_uri, parent_run_id, result.bundle,
                                            step.config.tracking.registered_model_name, store=store, alias=alias)
        step.note(pushed=bool(result.pushed), pushed_to=where, reason=getattr(result, "reason", ""),
                  registered=registered, alias=alias if result.pushed else "",
                  canary_disabled=not canary, kind=kind)
        step.progress(("the run's best BASELINE, " if kind == "baseline" else "")
                      + f"pushed to {where} as the {alias}" + (f" (MLflow model {registered})" if registered else "")
                      + (f"; serving tries it on {step.config.release.canary.share:.0%} of users first"
                         if result.as_canary else "")
                      if result.pushed else f"nothing pushed: {result.reason}")
    return where


def build(image: str) -> python_component.PythonComponent:
    """The Pusher component running in ``image``."""
    return dsl.component(pusher, base_image=image, install_kfp_package=False)
