"""Root test configuration.

Importing recflow first selects legacy Keras for TFRS/TF-Agents before any test imports TensorFlow, and the
session end applies the protobuf teardown remedy (see recflow/runtime.py). Every test has a time limit
(pytest-timeout, ``timeout`` in pyproject.toml); the ``slow`` end-to-end tests get :data:`SLOW_TIMEOUT_S`.
"""

import pytest

import recflow  # noqa: F401  (before anything imports TensorFlow: configures TensorFlow's environment)

# isort: split
from recflow import runtime

#: Time limit of a ``slow`` test (setup included) unless it sets its own ``@pytest.mark.timeout``.
SLOW_TIMEOUT_S = 1800

# Real servers started on 127.0.0.1 for the tests that need them (e.g. the `mlflow_uri` fixture).
pytest_plugins = ["servers"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def pytest_unconfigure(config):  # noqa: ARG001
    runtime.freeze_gc_now()
