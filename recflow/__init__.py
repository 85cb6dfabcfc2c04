"""recflow: the core library of the recflow MLOps platform.

Every part of the platform (components, pipelines, serving, monitoring) imports this package; it imports none
of them. Importing it first configures the process for the TensorFlow stack (see :mod:`recflow.runtime`).
"""

from recflow import runtime as _runtime

_runtime.configure_environment()
_runtime.install_exit_guard()

__version__ = "0.1.0"

__all__ = ["__version__"]
