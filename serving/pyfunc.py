"""The MLflow pyfunc flavour of a model bundle: ``mlflow.pyfunc.load_model('models:/<name>@champion')``.

The Pusher registers every pushed bundle as an MLflow pyfunc model (:func:`write_pyfunc_model`, passed to
:func:`recflow.model_store.register_in_mlflow`): the model directory holds ``MLmodel``, the bundle under
``artifacts/bundle`` and a :class:`RecflowPyfunc` that serves it with :class:`serving.Recommender` -- the same
request path as the HTTP service, so ``predict`` returns the service's slates.

``predict`` takes a DataFrame of requests, one per row: ``user_id`` (required), and optionally ``context`` (a
mapping or its JSON), ``k``, ``history`` (a list or its JSON, as in the HTTP request) and ``exclude``. It returns
one row per request: ``user_id``, ``item_ids``, ``scores``, ``click_probabilities``, ``propensities``,
``model_version``, ``cold_start``. Exploration is seeded (``serving.seed``) and counted per request, so a fresh
model answers a sequence of requests exactly as a fresh service does. The serving config is the default unless
``mlflow.pyfunc.load_model(..., model_config={...})`` sets keys of the ``serving`` section.

The loading environment needs recflow installed (the model's requirements name it); MLflow itself only
unpickles the small wrapper class.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

BUNDLE_ARTIFACT = "bundle"
OUTPUT_COLUMNS = ("user_id", "item_ids", "scores", "click_probabilities", "propensities", "model_version",
                  "cold_start")


def _parsed(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        return json.loads(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


class RecflowPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """A recflow bundle served by :class:`serving.Recommender` behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        from recflow.serving_config import ServingConfig
        from serving.recommender import Recommender, load_bundle

        bundle_dir = Path(context.artifacts[BUNDLE_ARTIFACT])
        manifest = bundle_dir / "manifest.json"  # recflow.model_store.MANIFEST
        bundle_version = json.loads(manifest.read_text()).get("version", bundle_dir.name) if manifest.is_file() \
            else bundle_dir.name
        config = ServingConfig.model_validate(dict(getattr(context, "model_config", None) or {}))
        self._recommender = Recommender(load_bundle(bundle_dir, str(bundle_version), config), config)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from recflow.errors import DataError

        frame = pd.DataFrame(model_input)
        if "user_id" not in frame.columns:
            raise DataError(f"recflow pyfunc: the requests need a user_id column (got {list(frame.columns)})")
        rows = []
        for i, request in enumerate(frame.to_dict("records")):
            k = _parsed(request.get("k"))
            try:
                rec = self._recommender.recommend(
                    str(request["user_id"]), context=_parsed(request.get("context")),
                    k=None if k is None else int(k), history=_parsed(request.get("history")),
                    exclude=_parsed(request.get("exclude")))
            except DataError as exc:
                raise DataError(f"recflow pyfunc: request row {i}: {exc}") from None
            rows.append({"user_id": rec.user_id, "item_ids": [s.item_id for s in rec.items],
                         "scores": [s.score for s in rec.items],
                         "click_probabilities": [s.click_probability for s in rec.items],
                         "propensities": [s.propensity for s in rec.items], "model_version": rec.model_version,
                         "cold_start": rec.cold_start})
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def _requirements() -> list[str]:
    try:
        return [f"recflow=={version('recflow')}"]
    except PackageNotFoundError:  # pragma: no cover - recflow runs from a checkout
        return ["recflow"]


def write_pyfunc_model(bundle_dir: Path | str, out_dir: Path | str) -> Path:
    """Write an MLflow pyfunc model directory for the bundle in ``bundle_dir`` into ``out_dir`` (which must not
    exist) and return it. The requirements are written, not inferred (no environment probing, no network)."""
    out = Path(out_dir)
    mlflow.pyfunc.save_model(
        path=str(out), python_model=RecflowPyfunc(), artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        pip_requirements=_requirements(),
        metadata={"recflow_bundle": Path(bundle_dir).name},
    )
    return out
