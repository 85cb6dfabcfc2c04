"""Evaluation of recommenders: ranking metrics, baselines run side by side, significance tests, the blessing
that gates every push, TFMA per-slice metrics and the HTML report.

Kept import-free on purpose: ``import recflow.evaluation`` must stay cheap (TFMA and TensorFlow are imported
only by :mod:`recflow.evaluation.slices`, and only when it is used). Import the submodules you need:

* :mod:`recflow.evaluation.metrics` -- ground truth, Precision/Recall/NDCG/MRR/hit@K, catalog coverage
* :mod:`recflow.evaluation.significance` -- paired t-test and Wilcoxon signed-rank test of per-user metrics
* :mod:`recflow.evaluation.blessing` -- the config-driven rules that bless (or refuse) a candidate
* :mod:`recflow.evaluation.slices` -- TFMA per-slice metrics of a ranking model's click predictions
* :mod:`recflow.evaluation.report` -- ``report.html``, ``metrics.json`` and ``blessing.json``
* :mod:`recflow.evaluation.evaluator` -- :func:`evaluate_recommenders`, which runs all of it
* :mod:`recflow.evaluation.config` -- :class:`EvaluatorConfig` (the ``evaluator`` config section)
"""


def run_evaluator(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - see recflow.evaluation.run.run_evaluator
    """The pipeline's Evaluator step (:func:`recflow.evaluation.run.run_evaluator`), imported on first use."""
    from recflow.evaluation.run import run_evaluator as _run_evaluator

    return _run_evaluator(*args, **kwargs)
