"""Evaluator component: models + test split -> metrics, HTML report, blessing (the ``Output`` parameter)."""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Dataset], ...).
from kfp import dsl
from kfp.dsl import python_component
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def evaluator(
    examples: Input[Dataset],
    model: Input[Model],
    policy: Input[Model],
    model_store: str,
    config_yaml: str,
    tracking_uri: str,
    parent_run_id: str,
    status_dir: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Dataset],
) -> bool:
    """Evaluate the candidate against the baselines and the current champion; return whether it is blessed.

    The blessing is the component's single output parameter (``Output``): the KFP local runner of kfp 2.17
    resolves ``task-Output`` channels in conditions but silently treats named NamedTuple outputs as false.
    """
    import json
    import logging
    import shutil
    from pathlib import Path

    log = logging.getLogger("recflow.evaluator")

    from components.step_run import step_run

    with step_run("evaluator", config_yaml, tracking_uri, parent_run_id, status_dir) as step:
        from recflow.evaluation import run_evaluator
        from recflow.model_store import ModelStore

        champion = ModelStore(model_store).champion() if model_store else None
        out = Path(evaluation.path)
        run = run_evaluator(Path(examples.path), Path(model.path), Path(policy.path), out, step.config.evaluator,
                            champion_dir=Path(champion.path) / "model" if champion is not None else None,
                            policy_config=step.config.policy)
        blessing = json.loads((out / "blessing.json").read_text(encoding="utf-8"))
        for name, value in step.log_metrics(run.metrics).items():
            metrics.log_metric(name, value)
        shutil.copyfile(out / "report.html", report.path)
        blessed = bool(blessing["blessed"])
        overrides = list(blessing.get("overrides", []))
        if overrides:  # a gate switched off or loosened is never silent
            log.warning("blessing gate settings differ from the defaults: %s", "; ".join(overrides))
        if tracking_uri and parent_run_id:  # the full report, blessed or not, on the pipeline and step runs
            from recflow.tracking import record_evaluation

            record_evaluation(tracking_uri, [parent_run_id, step.tracking_run_id or ""], out)
        step.note(blessed=blessed, reasons=list(blessing.get("reasons", [])), report=str(out / "report.html"),
                  checks=list(blessing.get("table", [])), overrides=overrides,
                  best_baseline=blessing.get("best_baseline") or {})
        step.progress(("BLESSED" if blessed else "NOT blessed") + "".join(
            f"\n  - {r}" for r in blessing.get("reasons", [])) + "".join(
            f"\n  ! gate override: {o}" for o in overrides))
    return blessed


def build(image: str) -> python_component.PythonComponent:
    """The Evaluator component running in ``image``."""
    return dsl.component(evaluator, base_image=image, install_kfp_package=False)
