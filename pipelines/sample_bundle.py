"""A small, real model bundle for tests and benchmarks: one local pipeline run on simulator data, cached on disk.

``bundle_parts()`` returns a directory with ``model/``, ``policy/``, ``transform/`` and ``evaluation/`` (blessed)
from a real ``run_local`` on a tiny simulated shop (:data:`SMALL_WORLD`: 300 users, 150 items, 10 days; about
three minutes the first time). The bundle is cached under ``$RECFLOW_TEST_CACHE`` (default
``<tmp>/recflow-test-cache``), keyed by the world and by a fingerprint of the code that produces it (recflow/,
components/, pipelines/), so a code change rebuilds it. A file lock makes concurrent callers (pytest-xdist
workers, two sessions on one machine) build it once and never replace a bundle another process is reading.
``push(store, parts)`` pushes it into a model store as a new version.

Used by the serving, serving-HTTP and monitoring end-to-end tests and by benchmarks/retraining_replay.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from recflow.model_store import ModelStore

#: The simulated shop of the default bundle.
SMALL_WORLD: dict[str, int] = {"users": 300, "items": 150, "days": 10}
REPO = Path(__file__).resolve().parents[1]


def code_fingerprint() -> str:
    """Hash of the code that produces a bundle, so a cached bundle is rebuilt whenever that code changes."""
    digest = hashlib.sha256()
    for folder in ("recflow", "components", "pipelines"):
        for path in sorted((REPO / folder).rglob("*.py")):
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where bundles are cached: ``$RECFLOW_TEST_CACHE``, default ``<tmp>/recflow-test-cache``."""
    return Path(os.environ.get("RECFLOW_TEST_CACHE", Path(tempfile.gettempdir()) / "recflow-test-cache"))


def bundle_parts(world: Mapping[str, float] | None = None) -> Path:
    """A directory with model/, policy/, transform/ and evaluation/ (blessed) from a real pipeline run.

    ``world`` (simulator sizes, default :data:`SMALL_WORLD`) is the shop the pipeline trains on; each world and
    each version of the code has its own cached bundle.
    """
    world = dict(SMALL_WORLD if world is None else world)
    root = cache_root()
    suffix = "" if world == SMALL_WORLD else "-" + "-".join(f"{k}{v}" for k, v in sorted(world.items()))
    out = root / (f"serving-bundle-{code_fingerprint()}" + suffix)
    if (out / "done.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{out.name}.lock")):
        if not (out / "done.json").is_file():  # another process may have built it while this one waited
            _build(world, out)
    return out


def _build(world: dict[str, float], out: Path) -> None:
    """Run the pipeline on a fresh simulated shop and move its bundle into ``out`` (caller holds the lock)."""
    from pipelines.local_run import run_local
    from recflow.config import load_config
    from recflow.simulator import generate_dataset

    work = Path(tempfile.mkdtemp(prefix="serving-bundle-"))
    config = load_config(None, [f"simulator.{k}={v}" for k, v in world.items()])
    generate_dataset(config.simulator, work / "data", progress=False)
    result = run_local(
        work / "data",
        config,
        model_store=work / "store",
        tracking=False,
        run_root=work / "runs",
        echo=lambda _: None,
    )
    art = next((result.run_dir / "artifacts").iterdir())
    staging = out.parent / f".{out.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(art / "tfrs-trainer" / "model", staging / "model", ignore=shutil.ignore_patterns("logs"))
    shutil.copytree(art / "agents-trainer" / "policy", staging / "policy")
    shutil.copytree(
        art / "transform" / "transformed", staging / "transform", ignore=shutil.ignore_patterns("transformed")
    )
    (staging / "evaluation").mkdir()
    (staging / "evaluation" / "blessing.json").write_text(json.dumps({"blessed": True, "reasons": ["test"]}))
    (staging / "done.json").write_text(json.dumps(world))
    shutil.rmtree(out, ignore_errors=True)  # an incomplete leftover (no done.json) of an interrupted build
    staging.rename(out)
    shutil.rmtree(work, ignore_errors=True)


def push(store: ModelStore, parts: Path) -> str:
    """Push a bundle from :func:`bundle_parts` into ``store`` as a new version and return the version."""
    result = store.push({p: parts / p for p in ("model", "policy", "transform")}, parts / "evaluation")
    if not result.pushed:
        raise RuntimeError(f"the model store refused the bundle in {parts}: {result.reason}")
    return result.version
