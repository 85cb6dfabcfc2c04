"""The model store: blessed-only pushes, atomicity under injected failures, alias, rollback, registry."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from recflow.errors import ConfigError, DataError
from recflow.model_store import (
    ModelStore,
    ModelStoreConfig,
    VerificationFailed,
    normalize_version,
    register_in_mlflow,
    registry_version_for,
    resolve_store_root,
    rollback_champion,
    sync_registry_alias,
)

pytest_plugins = ["servers"]


def _evaluation(tmp_path: Path, blessed: bool | None, name: str = "eval", **extra: object) -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "metrics.json").write_text('{"ndcg_at_10": 0.31}')
    if blessed is not None:
        (d / "blessing.json").write_text(json.dumps({"blessed": blessed, **extra}))
    return d


def _parts(tmp_path: Path, tag: str = "a") -> dict[str, Path]:
    retrieval = tmp_path / f"retrieval-{tag}"
    (retrieval / "variables").mkdir(parents=True, exist_ok=True)
    (retrieval / "saved_model.pb").write_bytes(b"graph-" + tag.encode() * 100)
    (retrieval / "variables" / "variables.data").write_bytes(bytes(range(256)) * 10)
    ranking = tmp_path / f"ranking-{tag}.keras"
    ranking.write_bytes(b"ranking-" + tag.encode())
    return {"retrieval": retrieval, "ranking": ranking}


def _push(store: ModelStore, tmp_path: Path, tag: str = "a", **kwargs: object):
    return store.push(
        _parts(tmp_path, tag),
        _evaluation(tmp_path, True),
        {"mlflow_run_id": None, "metrics": {"ndcg_at_10": 0.3, "tag": 0}, "tag": tag},
        **kwargs,
    )


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the store and its bytes (the lock file excluded: it is not part of the state)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".push.lock"
    } | {p.relative_to(root).as_posix() + "/": b"" for p in root.rglob("*") if p.is_dir()}


def test_blessed_push_writes_a_verified_version_and_moves_the_champion(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    assert store.champion() is None and store.versions() == []
    result = _push(store, tmp_path, "a")
    assert result.pushed and result.version == "v0001" and result.previous is None
    champion = store.champion()
    assert champion is not None and champion.version == "v0001" == store.alias().version
    assert champion.parts == ["evaluation", "ranking", "retrieval"]
    assert champion.metrics["ndcg_at_10"] == 0.3 and champion.metadata["tag"] == "a"
    bundle_dir = Path(champion.path)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["version"] == "v0001" and manifest["blessing"]["blessed"] is True
    for rel, entry in manifest["files"].items():
        assert hashlib.sha256((bundle_dir / rel).read_bytes()).hexdigest() == entry["sha256"]
    assert (bundle_dir / "retrieval" / "variables" / "variables.data").read_bytes() == bytes(range(256)) * 10
    assert (bundle_dir / "ranking" / "ranking-a.keras").read_bytes() == b"ranking-a"
    assert (bundle_dir / "evaluation" / "blessing.json").is_file()

    second = _push(store, tmp_path, "b")
    assert (second.version, second.previous) == ("v0002", "v0001")
    assert store.champion().version == "v0002"
    assert [e["version"] for e in store.history()] == ["v0001", "v0002"]
    assert not list((tmp_path / "store" / "versions").glob(".staging-*"))


@pytest.mark.parametrize(
    "blessing, expected",
    [
        (None, "does not exist"),
        (
            {"blessed": False, "reasons": ["ndcg_at_10 0.10 < baseline 0.20"]},
            "ndcg_at_10 0.10 < baseline 0.20",
        ),
        ({"blessed": "yes"}, "not blessed"),
    ],
)
def test_unblessed_model_pushes_nothing_and_says_why(tmp_path: Path, blessing: dict | None, expected: str):
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    if blessing is not None:
        (evaluation / "blessing.json").write_text(json.dumps(blessing))
    store = ModelStore(tmp_path / "store")
    result = store.push(_parts(tmp_path), evaluation, {})
    assert not result.pushed and expected in result.reason and result.version is None
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.json"))


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    evaluation = _evaluation(tmp_path, True)
    with pytest.raises(DataError, match="missing-dir"):
        store.push({"retrieval": tmp_path / "missing-dir"}, evaluation, {})
    with pytest.raises(ConfigError, match="part name"):
        store.push({"../escape": _parts(tmp_path)["ranking"]}, evaluation, {})
    with pytest.raises(DataError, match="JSON"):
        store.push(_parts(tmp_path), evaluation, {"when": object()})
    assert store.versions() == [] and not (tmp_path / "store" / "versions").exists()


def _fail_after(original, message: str):
    def wrapper(*args, **kwargs):
        original(*args, **kwargs)
        raise OSError(message)

    return wrapper


@pytest.mark.parametrize(
    "stage", ["_stage", "_write_manifest", "_verify", "_commit", "alias-file", "history"]
)
def test_a_failure_at_any_stage_leaves_the_store_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
):
    root = tmp_path / "store"
    store = ModelStore(root)
    _push(store, tmp_path, "a")
    before = _snapshot(root)
    if stage in ("alias-file", "history"):  # fail the write of one alias file, after its temp file exists
        target = "champion.json" if stage == "alias-file" else "history.jsonl"
        real_write = ModelStore._write_text

        def write_text(self, path, text):
            if path.endswith(target):
                real_write(self, path + ".partial-check", text)  # a write happened ...
                Path(path + ".partial-check").unlink()
                raise OSError(f"disk full while writing {target}")  # ... then the disk filled up
            real_write(self, path, text)

        monkeypatch.setattr(ModelStore, "_write_text", write_text)
    else:
        monkeypatch.setattr(store, stage, _fail_after(getattr(store, stage), f"injected failure in {stage}"))
    with pytest.raises(OSError, match="injected failure|disk full"):
        _push(store, tmp_path, "b")
    assert _snapshot(root) == before
    assert [b.version for b in store.versions()] == ["v0001"] and store.champion().version == "v0001"
    monkeypatch.undo()
    assert _push(store, tmp_path, "c").version == "v0002"  # the store still works


def test_corruption_while_copying_is_caught_by_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "store"
    store = ModelStore(root)
    _push(store, tmp_path, "a")
    before = _snapshot(root)
    real_stage = store._stage

    def corrupting_stage(parts, staging):
        files = real_stage(parts, staging)
        with open(Path(staging) / "retrieval" / "saved_model.pb", "r+b") as fh:
            fh.write(b"X")  # one flipped byte
        return files

    monkeypatch.setattr(store, "_stage", corrupting_stage)
    with pytest.raises(VerificationFailed, match="saved_model.pb has sha256"):
        _push(store, tmp_path, "b")
    assert _snapshot(root) == before


def test_the_callers_check_sees_the_staged_bundle_and_can_reject_it(tmp_path: Path):
    root = tmp_path / "store"
    store = ModelStore(root)
    seen: list[Path] = []

    def loads(path: str) -> bool:
        seen.append(Path(path))
        return (Path(path) / "retrieval" / "saved_model.pb").read_bytes().startswith(b"graph-")

    assert _push(store, tmp_path, "a", verify=loads).pushed
    assert seen[0].name.startswith(".staging-") and not seen[0].exists()
    before = _snapshot(root)
    with pytest.raises(VerificationFailed, match="returned False"):
        _push(store, tmp_path, "b", verify=lambda path: False)

    def broken(path: str) -> None:
        raise ValueError("SavedModel has no serving_default signature")

    with pytest.raises(VerificationFailed, match="serving_default"):
        _push(store, tmp_path, "c", verify=broken)
    assert _snapshot(root) == before


def test_rollback_walks_back_through_champions_and_can_target_a_version(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(DataError, match="no champion yet"):
        store.rollback()
    for tag in "abc":
        _push(store, tmp_path, tag)
    assert store.rollback().version == "v0002"
    assert store.alias().reason == "rollback from v0003"
    assert store.rollback().version == "v0001"
    with pytest.raises(DataError, match="no previous champion"):
        store.rollback()
    with pytest.raises(DataError, match="already the champion"):
        store.rollback("1")
    assert store.rollback("v3").version == "v0003" and store.champion().version == "v0003"
    with pytest.raises(DataError, match="v0009 does not exist"):
        store.rollback("9")
    assert [e["version"] for e in store.history()] == ["v0001", "v0002", "v0003", "v0002", "v0001", "v0003"]


def test_rollback_refuses_a_bundle_whose_files_changed(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    _push(store, tmp_path, "a")
    _push(store, tmp_path, "b")
    (Path(store.bundle("v0001").path) / "ranking" / "ranking-a.keras").write_bytes(b"tampered")
    with pytest.raises(DataError, match="does not match its manifest"):
        store.rollback()
    assert store.champion().version == "v0002"


def test_garbage_collection_keeps_the_newest_the_champion_and_the_previous(tmp_path: Path):
    store = ModelStore(tmp_path / "store", keep_versions=2)
    for tag in "abc":
        _push(store, tmp_path, tag)
    assert [b.version for b in store.versions()] == ["v0002", "v0003"]
    store.rollback()  # champion v0002, previous v0001 is gone
    store.rollback("v0003")  # champion v0003, previous v0002
    _push(store, tmp_path, "d")  # champion v0004, previous v0003
    _push(store, tmp_path, "e")  # champion v0005, previous v0004
    assert [b.version for b in store.versions()] == ["v0004", "v0005"]
    store.rollback()  # champion v0004 (previous v0003, already collected)
    _push(store, tmp_path, "f")  # champion v0006, previous v0004; newest two: v0005, v0006
    assert [b.version for b in store.versions()] == ["v0004", "v0005", "v0006"]
    _push(store, tmp_path, "g")  # champion v0007, previous v0006
    assert [b.version for b in store.versions()] == ["v0006", "v0007"]


def test_garbage_collection_keeps_leased_and_aliased_versions(tmp_path: Path):
    store = ModelStore(tmp_path / "store", keep_versions=2)
    _push(store, tmp_path, "a")  # v0001: a serving process loaded it and still serves it
    store.hold("serving-host-1", ["v0001"])
    for tag in "bcd":
        _push(store, tmp_path, tag)
    # v0001 is neither newest, champion nor previous, but it is leased; v0002 is not
    assert [b.version for b in store.versions()] == ["v0001", "v0003", "v0004"]
    kept = store.retention()
    assert kept["v0001"] == ["lease serving-host-1"]
    assert "champion" in kept["v0004"] and "previous champion" in kept["v0003"]
    # an alias other than the champion (the canary) protects its version too
    store._move_alias("canary", "v0003", "v0004", "canary")
    store.release("serving-host-1")
    _push(store, tmp_path, "e")
    _push(store, tmp_path, "f")  # newest two v0005, v0006; champion v0006, previous v0005
    assert [b.version for b in store.versions()] == ["v0003", "v0004", "v0005", "v0006"]
    assert store.retention()["v0003"] == ["canary"] and store.retention()["v0004"] == ["previous canary"]
    # an expired lease protects nothing
    store.hold("gone", ["v0005"], ttl_s=-1)
    assert store.leases() == {}


def test_models_gc_cli_deletes_what_retention_does_not_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from recflow.cli import cli as main

    root = tmp_path / "store"
    store = ModelStore(root, keep_versions=5)
    for tag in "abcd":
        _push(store, tmp_path, tag)
    runner = CliRunner()
    dry = runner.invoke(main, ["--set", "model_store.keep_versions=2", "models", "gc", "--dry-run",
                               "--store", str(root)])
    assert dry.exit_code == 0, dry.output
    assert "v0001  delete" in dry.output and "v0004  keep (newest 2, champion)" in dry.output
    assert len(store.versions()) == 4
    done = runner.invoke(main, ["--set", "model_store.keep_versions=2", "models", "gc", "--store", str(root)])
    assert done.exit_code == 0, done.output
    assert "deleted 2 version(s)" in done.output and "v0001, v0002" in done.output
    assert [b.version for b in store.versions()] == ["v0003", "v0004"]


def test_concurrent_pushers_get_distinct_complete_versions(tmp_path: Path):
    root = tmp_path / "store"
    results = []

    def push(tag: str) -> None:
        results.append(_push(ModelStore(root), tmp_path / tag, tag))

    for tag in "xyz":
        (tmp_path / tag).mkdir()
    threads = [threading.Thread(target=push, args=(tag,)) for tag in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.version for r in results) == ["v0001", "v0002", "v0003"]
    store = ModelStore(root)
    assert {b.metadata["tag"] for b in store.versions()} == set("xyz")
    for bundle in store.versions():
        store._check_bundle(bundle)


def test_resolve_aliases_versions_and_latest(tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(DataError, match="no champion yet"):
        store.resolve("champion")
    _push(store, tmp_path, "a")
    _push(store, tmp_path, "b")
    store.rollback()
    (tmp_path / "store" / "versions" / ".staging-crashed").mkdir()  # a pusher that died mid-copy
    assert store.resolve("champion").version == "v0001"
    assert store.resolve("latest").version == "v0002"
    assert store.resolve("2").version == store.resolve("v0002").version == "v0002"
    assert [b.version for b in store.versions()] == ["v0001", "v0002"]
    with pytest.raises(ConfigError, match="expected a version"):
        store.resolve("newest")
    assert normalize_version(12) == "v0012"


def test_store_root_defaults_under_the_data_dir(tmp_path: Path):
    assert resolve_store_root(ModelStoreConfig(), tmp_path) == str(tmp_path.resolve() / "models")
    assert resolve_store_root(ModelStoreConfig(path="gs://bucket/models"), tmp_path) == "gs://bucket/models"
    assert resolve_store_root(ModelStoreConfig(), tmp_path, str(tmp_path / "x")) == str(tmp_path / "x")


def test_registry_alias_follows_pushes_and_rollbacks(mlflow_uri: str, tmp_path: Path):
    from recflow.tracking import get_or_create_experiment, tracking_client

    name = "recflow-test-registry"
    client = tracking_client(mlflow_uri)
    experiment_id = get_or_create_experiment(client, "test-model-store")
    store = ModelStore(tmp_path / "store")
    registered = {}
    for tag in "ab":
        run_id = client.create_run(experiment_id, run_name=f"push-{tag}").info.run_id
        result = store.push(_parts(tmp_path, tag), _evaluation(tmp_path, True), {"mlflow_run_id": run_id})
        registered[result.version] = register_in_mlflow(mlflow_uri, run_id, result.bundle, name, store=store)
        assert client.get_model_version_by_alias(name, "champion").version == registered[result.version]
    mv = client.get_model_version(name, registered["v0002"])
    assert mv.tags["recflow.bundle_version"] == "v0002" and mv.tags["recflow.store"] == store.root
    files = {a.path for a in client.list_artifacts(mv.run_id, "model_bundle/v0002")}
    assert "model_bundle/v0002/manifest.json" in files and "model_bundle/v0002/retrieval" in files

    bundle, version = rollback_champion(store, tracking_uri=mlflow_uri, model_name=name)
    assert bundle.version == "v0001" and version == registered["v0001"]
    assert client.get_model_version_by_alias(name, "champion").version == registered["v0001"]

    # A push whose registration never happened (registry down): sync registers it from the manifest's run.
    run_id = client.create_run(experiment_id, run_name="push-c").info.run_id
    pushed = store.push(_parts(tmp_path, "c"), _evaluation(tmp_path, True), {"mlflow_run_id": run_id})
    assert registry_version_for(mlflow_uri, name, pushed.version, store.root) is None
    synced = sync_registry_alias(mlflow_uri, store, name)
    assert client.get_model_version_by_alias(name, "champion").version == synced
    assert registry_version_for(mlflow_uri, name, "v0003", store.root) == synced
