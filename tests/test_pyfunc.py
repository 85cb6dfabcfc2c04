"""The registered model version is an MLflow pyfunc model that answers like the service.

A real bundle (``pipelines.sample_bundle``, cached) is pushed and registered the way the Pusher does it, in a real
``mlflow server``; a fresh Python process loads ``models:/<name>@champion`` with ``mlflow.pyfunc.load_model`` and
predicts a DataFrame of requests; the slates equal those of a :class:`serving.Recommender` on the same bundle.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.sample_bundle import bundle_parts, push
from recflow.model_store import ModelStore, register_in_mlflow

NAME = "pyfunc-test-recommender"

REQUESTS = [
    {"user_id": "u000001", "context": json.dumps({"hour": 20, "device": "mobile"}), "k": 5},
    {"user_id": "u000002", "k": 3},
    {"user_id": "brand-new-user", "k": 4,
     "history": json.dumps([{"item_id": "i000003", "event_type": "view"}, "i000007"])},
    {"user_id": "nobody-at-all", "k": 5},
]

LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame(json.loads(sys.argv[2])))
print("RESULT" + out.to_json(orient="records"))
"""


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> ModelStore:
    from recflow.tracking import get_or_create_experiment, tracking_client
    from serving.pyfunc import write_pyfunc_model

    store = ModelStore(str(tmp_path_factory.mktemp("pyfunc") / "store"))
    version = push(store, bundle_parts())
    client = tracking_client(mlflow_uri)
    run = client.create_run(get_or_create_experiment(client, "pyfunc-test"))
    register_in_mlflow(mlflow_uri, run.info.run_id, store.resolve(version), NAME, store=store,
                       model_writer=write_pyfunc_model)
    return store


def _service_slates(store: ModelStore) -> list[dict]:
    from recflow.serving_config import ServingConfig
    from serving.recommender import Recommender, load_bundle

    info = store.champion()
    config = ServingConfig()
    rec = Recommender(load_bundle(info.path, info.version, config), config)
    try:
        out = []
        for r in REQUESTS:
            s = rec.recommend(r["user_id"], context=json.loads(r["context"]) if "context" in r else None, k=r["k"],
                              history=json.loads(r["history"]) if "history" in r else None)
            out.append({"user_id": s.user_id, "item_ids": [i.item_id for i in s.items],
                        "propensities": [i.propensity for i in s.items], "scores": [i.score for i in s.items],
                        "model_version": s.model_version, "cold_start": s.cold_start})
        return out
    finally:
        rec.close()


@pytest.mark.slow
def test_champion_loads_with_mlflow_pyfunc_in_a_fresh_process_and_answers_like_the_service(
        champion: ModelStore, mlflow_uri: str, tmp_path: Path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_REGISTRY_URI": mlflow_uri}
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, f"models:/{NAME}@champion",
                           json.dumps(REQUESTS)], capture_output=True, text=True, env=env, timeout=900,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    got = pd.read_json(__import__("io").StringIO(line[len("RESULT"):]), orient="records").to_dict("records")
    want = _service_slates(champion)
    assert [g["user_id"] for g in got] == [w["user_id"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert list(g["item_ids"]) == w["item_ids"] and len(w["item_ids"]) > 0
        assert list(g["propensities"]) == pytest.approx(w["propensities"])
        assert list(g["scores"]) == pytest.approx(w["scores"], rel=1e-6)
        assert g["model_version"] == w["model_version"] == champion.champion().version
        assert bool(g["cold_start"]) == w["cold_start"]
    assert want[3]["cold_start"] and not want[0]["cold_start"]


def test_the_pyfunc_model_directory_has_an_mlmodel_and_the_bundle(tmp_path: Path):
    """Without training: the writer's layout on a stand-in bundle directory (what MLflow's loader reads)."""
    from serving.pyfunc import write_pyfunc_model

    bundle = tmp_path / "v0001"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"version": "v0001"}))
    out = write_pyfunc_model(bundle, tmp_path / "model")
    mlmodel = (out / "MLmodel").read_text()
    assert "python_function" in mlmodel and "artifacts/v0001" in mlmodel
    assert (out / "python_model.pkl").is_file() and (out / "artifacts" / "v0001" / "manifest.json").is_file()
    assert "recflow" in (out / "requirements.txt").read_text()


@pytest.mark.slow
def test_a_rolled_back_champion_gets_a_pyfunc_registry_version(tmp_path: Path, mlflow_uri: str, monkeypatch):
    """A champion that rollback brings back, whose bundle the registry holds only as a plain version (or not at
    all), is registered as a pyfunc model on the way: ``models:/<name>@champion`` loads and answers like the
    service. (In this process: the fresh-process load is the test above.)"""
    import mlflow.pyfunc

    from recflow.model_store import TAG_PYFUNC, registry_version_for, rollback_champion
    from recflow.tracking import get_or_create_experiment, tracking_client
    from serving.pyfunc import write_pyfunc_model

    name = "pyfunc-rollback-recommender"
    store = ModelStore(str(tmp_path / "store"))
    client = tracking_client(mlflow_uri)
    experiment = get_or_create_experiment(client, "pyfunc-rollback-test")
    parts = bundle_parts()
    pushed = {}
    for tag in ("old", "new"):
        run_id = client.create_run(experiment, run_name=f"push-{tag}").info.run_id
        pushed[tag] = store.push({p: parts / p for p in ("model", "policy", "transform")}, parts / "evaluation",
                                 {"mlflow_run_id": run_id}).bundle
    # the old bundle's only registry version is a plain one (registered before the pyfunc flavour existed) ...
    register_in_mlflow(mlflow_uri, pushed["old"].mlflow_run_id, pushed["old"], name, store=store, alias="legacy")
    # ... the new one was registered the Pusher's way and is the champion
    register_in_mlflow(mlflow_uri, pushed["new"].mlflow_run_id, pushed["new"], name, store=store,
                       model_writer=write_pyfunc_model)
    bundle, version = rollback_champion(store, tracking_uri=mlflow_uri, model_name=name,
                                        model_writer=write_pyfunc_model)
    assert bundle.version == pushed["old"].version
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.version == version and mv.tags[TAG_PYFUNC] == "true"
    assert mv.tags["recflow.bundle_version"] == pushed["old"].version
    assert version != client.get_model_version_by_alias(name, "legacy").version  # not the plain one
    # a second sync finds the pyfunc version: no third registration
    assert registry_version_for(mlflow_uri, name, bundle.version, store.root, pyfunc=True) == version
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    got = model.predict(pd.DataFrame(REQUESTS)).to_dict("records")
    want = _service_slates(store)
    for g, w in zip(got, want, strict=True):
        assert list(g["item_ids"]) == w["item_ids"] and len(w["item_ids"]) > 0
        assert list(g["scores"]) == pytest.approx(w["scores"], rel=1e-6)
        assert g["model_version"] == w["model_version"] == pushed["old"].version
