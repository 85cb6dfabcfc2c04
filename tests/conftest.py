"""Root test configuration.

Importing recflow first selects legacy Keras for TFRS/TF-Agents before any test imports TensorFlow, and the
session end applies the protobuf teardown remedy (see recflow/runtime.py).
"""

import recflow  # noqa: F401  (must be the first import: configures TensorFlow's environment)
from recflow import runtime

# Real servers started on 127.0.0.1 for the tests that need them (e.g. the `mlflow_uri` fixture).
pytest_plugins = ["servers"]


def pytest_unconfigure(config):  # noqa: ARG001
    runtime.freeze_gc_now()
