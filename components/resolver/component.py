"""Resolver component: ``data_uri`` and ``model_store`` -> what they hold now, as values other steps take.

ExampleGen takes ``data_version`` and the Evaluator ``champion`` as parameters, so their KFP cache keys change
when the data or the champion does, and not otherwise (:mod:`recflow.pipeline_inputs`). Never cached: it must
look every time.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import python_component


def resolver(data_uri: str, model_store: str) -> NamedTuple("Outputs", [("data_version", str), ("champion", str)]):
    """The dataset's content version and the champion's ``<version>@<created>`` ('' for none)."""
    from collections import namedtuple

    from recflow.pipeline_inputs import champion_version, data_version

    data, champion = data_version(data_uri), champion_version(model_store)
    print(f"[resolver] data {data}; champion {champion or 'none'}", flush=True)
    return namedtuple("Outputs", ["data_version", "champion"])(data, champion)


def build(image: str) -> python_component.PythonComponent:
    """The resolver component running in ``image``."""
    return dsl.component(resolver, base_image=image, install_kfp_package=False)
