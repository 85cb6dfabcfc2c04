"""The KFP v2 components of the training DAG, one folder per step: the six steps (and the optional tuner), the
light tasks around them -- ``resolver`` (what the data and the champion are now), ``track`` (a heavy step's
record -> its MLflow run), ``close_run`` (the exit handler) -- and ``step_run.py``, what every step does around
its core call.

Each ``components/<step>/component.py`` holds the step's function, a thin declaration of its typed inputs and
outputs whose body calls one function of the core library (``recflow``), and ``build(image)``, which turns it
into a lightweight KFP component running in that container image. The image is chosen when the pipeline is
built (``pipelines.definition.build_pipeline``), from the ``pipeline`` config section, so one definition serves
the CPU and GPU images, the local runner and Kubeflow.

The functions' source is shipped to the step's container by KFP, so they import everything inside their body;
the image must have recflow installed (infra/docker), and KFP itself is not pip-installed at run time.
"""

from components.step_run import STEP_ORDER

__all__ = ["STEP_ORDER"]
