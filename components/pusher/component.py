"""Pusher component: blessed model bundle (or, with no champion yet, the run's best baseline) -> model store."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output, python_component


def pusher(
    transformed: Input[Dataset],
    model: Input[Model],
    policy: Input[Model],
    evaluation: Input[Dataset],
    blessing: Input[Artifact],
    model_store: str,
    model_store_config: dict,
    release_config: dict,
    tracking_config: dict,
    tracking_uri: str,
    run_key: str,
    run_name: str,
    pushed: Output[Model],
) -> str:
    """Push the bundle into ``model_store``; returns where it went ('' and a reason line when refused).

    The pushed model is also the artifact ``pushed`` (a small ``pushed.json``; metadata: ``version``, ``uri``,
    ``alias``, ``registered_version``, ``kind``). The pipeline runs this step when the Evaluator says to push: a
    blessed candidate (the model store re-checks the blessing itself, from ``evaluation``, so an unblessed model
    cannot be pushed by any path), or -- the candidate lost and the store has no champion yet -- the run's best
    baseline from ``evaluation/fallback_baseline``, pushed as a bundle of kind ``baseline`` that the store never
    lets replace a champion.

    Unlike the steps before it, the Pusher is never served from KFP's cache (it changes the store and the
    registry), so it takes the run id and logs its own nested MLflow run as it runs.
    """
    import json
    from pathlib import Path

    from components.step_run import Tracking, step_run

    sections = {"model_store": model_store_config, "release": release_config, "tracking": tracking_config}
    with step_run("pusher", sections, Tracking(tracking_uri, run_key, run_name)) as step:
        from recflow.model_store import ModelStore, register_in_mlflow

        parts = {"transform": Path(transformed.path), "model": Path(model.path), "policy": Path(policy.path),
                 "evaluation": Path(evaluation.path)}
        from recflow.model_store import read_blessing
        from recflow.servable_baseline import FALLBACK_DIR

        store = ModelStore.from_config(model_store, step.config.model_store)
        canary = step.config.release.canary.enabled
        meta = {"mlflow_run_id": step.parent_run_id or ""}
        fallback = Path(evaluation.path) / FALLBACK_DIR
        if not read_blessing(Path(evaluation.path))[0] and fallback.is_dir():  # lost, and no champion yet
            result = store.push_baseline(fallback, Path(evaluation.path), metadata=meta)
        else:
            result = store.push(parts, Path(evaluation.path), metadata=meta, canary=canary)
        kind = result.bundle.kind if result.pushed and result.bundle is not None else ""
        where = str(result.bundle.path) if result.pushed else ""
        alias = "canary" if result.as_canary else "champion"
        registered = ""
        if result.pushed and step.parent_run_id:
            # The store is the source of truth; the registry mirrors it (`recflow models rollback` re-syncs it).
            # Registered as an MLflow pyfunc model: mlflow.pyfunc.load_model("models:/<name>@champion") serves it.
            from serving.pyfunc import write_pyfunc_model

            registered = register_in_mlflow(tracking_uri, step.parent_run_id, result.bundle,
                                            step.config.tracking.registered_model_name, store=store, alias=alias,
                                            model_writer=write_pyfunc_model)
        record = {"pushed": bool(result.pushed), "version": result.bundle.version if result.pushed else "",
                  "uri": where, "alias": alias if result.pushed else "", "registered_version": registered,
                  "reason": getattr(result, "reason", "") or "",
                  "blessed": bool(blessing.metadata.get("blessed", True)), "kind": kind}
        Path(pushed.path).parent.mkdir(parents=True, exist_ok=True)
        Path(pushed.path).write_text(json.dumps(record, indent=2), encoding="utf-8")
        pushed.metadata.update(record)
        step.log_artifact(pushed.path, "pusher")
        step.note(pushed=bool(result.pushed), pushed_to=where, reason=record["reason"],
                  registered=registered, alias=record["alias"], canary_disabled=not canary, kind=kind)
        step.progress(("the run's best BASELINE, " if kind == "baseline" else "")
                      + f"pushed to {where} as the {alias}"
                      + (f" (MLflow model {registered})" if registered else "")
                      + (f"; serving tries it on {step.config.release.canary.share:.0%} of users first"
                         if result.as_canary else "")
                      if result.pushed else f"nothing pushed: {result.reason}")
    return where


def build(image: str) -> python_component.PythonComponent:
    """The Pusher component running in ``image``."""
    return dsl.component(pusher, base_image=image, install_kfp_package=False)
