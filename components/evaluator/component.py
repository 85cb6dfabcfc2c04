"""Evaluator component: models + test split -> metrics, HTML report, blessing (an artifact), and the push
decision (the ``Output`` parameter that gates the Pusher)."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output, python_component


def evaluator(
    examples: Input[Dataset],
    model: Input[Model],
    policy: Input[Model],
    model_store: str,
    champion: str,
    evaluator_config: dict,
    policy_config: dict,
    release_config: dict,
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Dataset],
    blessing: Output[Artifact],
    record: Output[Artifact],
) -> bool:
    """Evaluate the candidate against the baselines and the current champion; return whether to push: the
    candidate is blessed, or it is not and the run's best baseline was written as the fallback (no champion
    yet, ``release.baseline_fallback``; the Pusher tells the two apart from the evaluation directory).

    The blessing is also the artifact ``blessing`` (``blessing.json``; metadata: ``blessed``, ``reasons``,
    ``overrides``). The push decision stays the component's single output parameter (``Output``): the KFP
    local runner of kfp 2.17 resolves ``task-Output`` channels in conditions but silently treats named
    NamedTuple outputs as false.

    ``champion`` is the resolver's ``<version>@<created>`` of the store's champion ('' for none): the step
    compares with that version, and the value is in its cache key (a new champion means a new evaluation).
    """
    import json
    import logging
    import shutil
    from pathlib import Path

    log = logging.getLogger("recflow.evaluator")

    from components.step_run import step_run

    sections = {"evaluator": evaluator_config, "policy": policy_config, "release": release_config}
    with step_run("evaluator", sections, record=record.path) as step:
        from recflow.evaluation import run_evaluator
        from recflow.model_store import ModelStore
        from recflow.pipeline_inputs import champion_from

        current = ModelStore(model_store).bundle(champion_from(champion)) if model_store and champion else None
        out = Path(evaluation.path)
        # A baseline serving as the champion (pushed as a fallback) is among this run's baselines already.
        champion_model = current if current is not None and current.kind == "model" else None
        fallback = step.config.release.baseline_fallback == "no_champion" and current is None
        run = run_evaluator(Path(examples.path), Path(model.path), Path(policy.path), out, step.config.evaluator,
                            champion_dir=Path(champion_model.path) / "model" if champion_model else None,
                            policy_config=step.config.policy, fallback=fallback)
        verdict = json.loads((out / "blessing.json").read_text(encoding="utf-8"))
        for name, value in step.log_metrics(run.metrics).items():
            metrics.log_metric(name, value)
        Path(metrics.path).write_text(json.dumps(metrics.metadata), encoding="utf-8")  # (a file for the local cache)
        shutil.copyfile(out / "report.html", report.path)
        shutil.copyfile(out / "blessing.json", blessing.path)
        blessed = bool(verdict["blessed"])
        overrides = list(verdict.get("overrides", []))
        blessing.metadata.update({"blessed": blessed, "reasons": list(verdict.get("reasons", [])),
                                  "overrides": overrides})
        if overrides:  # a gate switched off or loosened is never silent
            log.warning("blessing gate settings differ from the defaults: %s", "; ".join(overrides))
        # the full report and the verdict, blessed or not, on the pipeline and step runs
        from recflow.tracking.lifecycle import evaluation_tags
        from recflow.tracking.names import EVALUATION_ARTIFACTS

        for name in EVALUATION_ARTIFACTS:
            step.log_artifact(out / name, "evaluation", on_pipeline=True)
        step.set_tags(evaluation_tags(verdict), on_pipeline=True)
        step.log_pipeline_metrics({**{k if "." in k else f"candidate.{k}": v for k, v in step.metrics.items()},
                                   "blessed": float(blessed)})
        for plot in sorted(out.glob("*.png")):
            step.log_artifact(plot, "plots")
        if step.config.release.baseline_fallback == "never":
            overrides.append("release.baseline_fallback=never: an unblessed run leaves the shop without a "
                             "servable bundle when there is no champion")
        blessing.metadata["fallback_baseline"] = run.fallback or {}
        step.note(blessed=blessed, reasons=list(verdict.get("reasons", [])), report=str(out / "report.html"),
                  checks=list(verdict.get("table", [])), overrides=overrides,
                  best_baseline=verdict.get("best_baseline") or {}, fallback_baseline=run.fallback or {})
        step.progress(("BLESSED" if blessed else "NOT blessed") + "".join(
            f"\n  - {r}" for r in verdict.get("reasons", [])) + "".join(
            f"\n  ! gate override: {o}" for o in overrides) + (
            f"\n  -> no champion yet: the Pusher publishes the best baseline, {run.fallback['label']} "
            f"({run.fallback['metric']} {run.fallback['value']:.4f})" if run.fallback else ""))
    # The pipeline's push condition: a blessed candidate, or the baseline fallback written above.
    return blessed or run.fallback is not None


def build(image: str) -> python_component.PythonComponent:
    """The Evaluator component running in ``image``."""
    return dsl.component(evaluator, base_image=image, install_kfp_package=False)
