"""Regenerate the auto-documented sections of defaults.yaml from the typed models (sections after 'simulator')."""
from pathlib import Path

import yaml

import recflow.config as c

DEFAULTS = Path("recflow/defaults.yaml")
MARKER = "\n# === generated sections"
HEAD = {
    "example_gen": "ExampleGen: validation gate and the time split (recflow/examplegen.py)",
    "transform": "Transform: tf.Transform on Apache Beam (recflow/features/transform.py)",
    "tuning": "Optional Optuna hyperparameter search step before the TFRS trainer (recflow/tuning.py)",
    "trainer": "TFRS trainer: two-tower retrieval and ranking (recflow/training/tfrs_trainer.py)",
    "policy": "TF-Agents trainer: the slate policy learned from logged feedback (recflow/policy/config.py)",
    "evaluator": "Evaluator: metrics, baselines, significance tests, blessing thresholds "
                 "(recflow/evaluation/config.py)",
    "model_store": "Pusher's model store (null path: DATA_DIR/models) (recflow/model_store.py)",
    "tracking": "MLflow (null tracking_uri: sqlite under DATA_DIR) (recflow/tracking.py)",
    "pipeline": "KFP DAG: images, per-step resources, GPU placement, caching (recflow/pipeline_config.py)",
    "serving": "The online service: request path, cold start, feedback log, hot swap, A/B, auth "
               "(recflow/serving_config.py)",
    "monitoring": "Drift job thresholds and the retraining watcher's guards (recflow/monitoring_config.py)",
}


def main() -> None:
    text = DEFAULTS.read_text()
    cut = text.find(MARKER)
    if cut >= 0:
        text = text[:cut + 1]
    d = c.RecflowConfig().model_dump(mode="json")
    parts = [text.rstrip("\n") + "\n" + MARKER
             + ": regenerate with `python tools/gen_defaults.py` after changing a model ===\n"]
    names = list(c.RecflowConfig.model_fields)
    for k in names[names.index("simulator") + 1:]:
        h = HEAD.get(k) or (c.RecflowConfig.model_fields[k].annotation.__doc__ or k).strip().splitlines()[0]
        parts.append(f"\n# {h}\n" + yaml.safe_dump({k: d[k]}, sort_keys=False))
    DEFAULTS.write_text("".join(parts))


if __name__ == "__main__":
    main()
