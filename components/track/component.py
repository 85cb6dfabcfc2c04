"""Track component: a heavy step's record -> the step's nested MLflow run (and the local run's status record).

One task of it follows each heavy step (ExampleGen, Transform, tuner, TFRS trainer, Agents trainer, Evaluator).
The heavy step takes no per-run input, so KFP can serve it from its cache; this step is never cached
(``set_caching_options(False)``) and is the only one that takes the orchestrator's run id (``run_key``). The one
after ExampleGen opens the pipeline's MLflow parent run (or joins it when retried) and fingerprints the data on it;
the others join it. A step served from the cache still gets its nested run, tagged ``recflow.cached=true`` with
the pipeline run it actually ran in (:mod:`recflow.tracking.records`).
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects (Input[Artifact], ...).
from kfp import dsl
from kfp.dsl import Artifact, Input, python_component


def track(
    record: Input[Artifact],
    tracking_config: dict,
    tracking_uri: str,
    run_key: str,
    run_name: str,
    data_uri: str,
    opens: bool,
) -> str:
    """Log the record as the step's nested run under the pipeline run ``run_key``; returns the step run's id
    ('' without tracking)."""
    from components.step_run import Tracking, publish_record

    where = Tracking(tracking_uri, run_key, run_name, opens=opens, data_uri=data_uri)
    return publish_record(record.path, tracking_config, where)


def build(image: str) -> python_component.PythonComponent:
    """The tracking component running in ``image`` (the CPU image: it only talks to MLflow)."""
    return dsl.component(track, base_image=image, install_kfp_package=False)
