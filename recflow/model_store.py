"""The model store: versioned, verified model bundles and the ``champion`` alias that serving follows.

Layout under the store root (a local directory by default; any fsspec URL such as ``gs://bucket/models`` in
production -- only the local path is tested here)::

    versions/v0001/manifest.json      # version, created, files with sha256, metadata (mlflow run id, metrics)
    versions/v0001/retrieval/...      # the bundle's parts (retrieval, ranking, policy, evaluation, ...)
    versions/.staging-<uuid>/         # a push in progress (never listed, never served)
    aliases/champion.json             # {"version": "v0003", "previous": "v0002", "moved_at", "reason"}
    aliases/canary.json               # a pushed champion on trial for a share of traffic (serving/canary.py)
    aliases/history.jsonl             # every alias move, oldest first
    leases/<holder>.json              # versions a serving process has loaded or is loading, until "expires"
    .push.lock                        # serialises pushers, rollbacks and garbage collection

A push happens only for a blessed model (``blessing.json`` in the evaluation directory says
``{"blessed": true}``); it copies into a staging directory, writes the manifest, re-hashes every file
(and runs an optional caller check such as loading the SavedModel), renames the staging directory to the next
version and finally moves the alias with an atomic replace. The alias file is the commit point: a failure
anywhere before it leaves the store as it was, and a failure while moving it puts the previous state back.

Retention (:meth:`ModelStore.collect_garbage`, run after every push and by ``recflow models gc``): the store keeps
the champion, the previous champion, every other alias's version (the canary and the version it would replace),
the newest ``keep_versions`` versions, and every version named in an unexpired lease; everything older is
deleted. A serving process holds a lease on what it serves (:meth:`ModelStore.hold`, refreshed by its model
watcher), so a bundle being served or loaded is never removed under it.

The store is the source of truth for which bundle is the champion. The MLflow Model Registry mirrors it
(:func:`register_in_mlflow`, :func:`sync_registry_alias`): its model versions carry the tag
``recflow.bundle_version`` and its ``champion`` alias is moved to match the store, never the other way round.
Every path that registers a version (the Pusher, ``recflow models rollback``, canary promote/abort by hand or by
the serving guardrail) passes the same ``model_writer`` (``serving.pyfunc.write_pyfunc_model``), so each version
is an MLflow pyfunc model (tag ``recflow.pyfunc=true``); a sync that finds only a plain version of the bundle
(registered before) registers a pyfunc one for it. This module does not import ``serving``: the writer is a
parameter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from recflow.errors import ConfigError, DataError, ServiceUnavailable

log = logging.getLogger(__name__)

CHAMPION = "champion"
CANARY = "canary"
MANIFEST = "manifest.json"
BLESSING = "blessing.json"
MANIFEST_FORMAT = 1
TAG_BUNDLE_VERSION = "recflow.bundle_version"
TAG_STORE = "recflow.store"
TAG_BUNDLE_KIND = "recflow.bundle_kind"
TAG_PYFUNC = "recflow.pyfunc"  # "true" on a registered version written by a model_writer (an MLflow pyfunc model)

#: Turns a bundle directory into the model directory to register: ``writer(bundle_dir, out_dir) -> out_dir``.
ModelWriter = Callable[[Path, Path], Path]
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STAGING_PREFIX = ".staging-"
_STALE_STAGING_S = 24 * 3600


class ModelStoreConfig(BaseModel):
    """Where pushed model bundles are kept and how many."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(
        None,
        description="Store root: a directory or an fsspec URL (gs://bucket/models); null: DATA_DIR/models.",
    )
    keep_versions: int = Field(
        10,
        ge=2,
        description="The newest versions kept by the garbage collection after every push and by `recflow "
        "models gc`; the champion, the previous champion, the canary (and any other alias) and every version a "
        "serving process holds a lease on are kept as well, however old.",
    )
    lease_ttl_s: float = Field(
        3600.0,
        gt=0,
        description="How long a serving process's lease on the versions it serves lasts without a refresh "
        "(its model watcher refreshes it every poll); a crashed server's lease only delays deletion.",
    )
    lock_timeout_s: float = Field(
        600.0, gt=0, description="Seconds a pusher waits for another push or rollback to finish."
    )


def resolve_store_root(config: ModelStoreConfig, data_dir: Path, override: str | None = None) -> str:
    """The store root: ``override`` (``--store``) > config > DATA_DIR/models (absolute)."""
    root = override or config.path
    if root is None:
        return str((Path(data_dir).expanduser() / "models").resolve())
    return root if "://" in root else str(Path(root).expanduser().resolve())


@dataclass(frozen=True)
class BundleInfo:
    """One pushed version of the model bundle, as its manifest describes it."""

    version: str
    path: str  # directory of the bundle (a local path, or a URL for a remote store)
    created: str
    files: dict[str, str]  # relative path -> sha256
    metadata: dict[str, Any]
    blessing: dict[str, Any] = field(default_factory=dict)

    @property
    def parts(self) -> list[str]:
        return sorted(
            {f.split("/", 1)[0] for f in self.files if "/" in f} | {f for f in self.files if "/" not in f}
        )

    @property
    def metrics(self) -> dict[str, float]:
        metrics = self.metadata.get("metrics") or self.blessing.get("metrics") or {}
        return {str(k): v for k, v in metrics.items()} if isinstance(metrics, Mapping) else {}

    @property
    def kind(self) -> str:
        """``model`` (a blessed candidate) or ``baseline`` (the run's best baseline, pushed as a fallback)."""
        return str(self.metadata.get("kind") or "model")

    @property
    def mlflow_run_id(self) -> str | None:
        value = self.metadata.get("mlflow_run_id")
        return str(value) if value else None


@dataclass(frozen=True)
class AliasState:
    """Where an alias points now (the content of ``aliases/<alias>.json``)."""

    alias: str
    version: str
    previous: str | None
    moved_at: str
    reason: str


@dataclass(frozen=True)
class PushResult:
    """What a push did: ``pushed`` False means nothing was written, and ``reason`` says why."""

    pushed: bool
    reason: str
    version: str | None = None
    previous: str | None = None
    bundle: BundleInfo | None = None
    as_canary: bool = False  # pushed as the canary (the champion stays until the canary is promoted)


class VerificationFailed(DataError):
    """A staged bundle did not match its manifest or failed the caller's check; nothing was published."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def normalize_version(ref: str | int) -> str:
    """``3``, ``"3"``, ``"v3"``, ``"v0003"`` -> ``"v0003"``."""
    text = str(ref).strip()
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit():
        raise ConfigError(f"model version {ref!r}: expected a version such as v0003 or 3")
    return f"v{int(digits):04d}"


def read_blessing(evaluation_dir: Path) -> tuple[bool, str, dict[str, Any]]:
    """(blessed, why, blessing) from ``evaluation_dir/blessing.json``; a missing or bad file: not blessed."""
    path = Path(evaluation_dir) / BLESSING
    if not path.is_file():
        return False, f"{path} does not exist: the evaluation did not bless this model", {}
    try:
        blessing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return False, f"{path} cannot be read as JSON ({exc}); treating the model as not blessed", {}
    if not isinstance(blessing, dict):
        return False, f"{path}: expected a JSON object with a 'blessed' field", {}
    reasons = blessing.get("reasons") or blessing.get("reason") or []
    why = "; ".join(map(str, reasons)) if isinstance(reasons, list) else str(reasons)
    if blessing.get("blessed") is True:
        return True, why or "blessed by the evaluation", blessing
    return False, f"not blessed ({path}): {why or 'no reason given'}", blessing


def _hash_stream(fh: Any, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(chunk_size):
        digest.update(chunk)
    return digest.hexdigest()


def _local_files(path: Path) -> list[tuple[Path, str]]:
    """(file, relative posix path) for a file or every file under a directory, sorted."""
    if path.is_file():
        return [(path, path.name)]
    return sorted(
        ((p, p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file()), key=lambda t: t[1]
    )


class ModelStore:
    """Versioned model bundles under ``root`` with atomic pushes, a ``champion`` alias and rollback."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        keep_versions: int = 10,
        lock_timeout_s: float = 600.0,
        lease_ttl_s: float = 3600.0,
    ) -> None:
        import fsspec

        if keep_versions < 2:
            raise ConfigError(f"model store keep_versions must be at least 2, got {keep_versions}")
        text = os.fspath(root)
        self.root = text if "://" in text else str(Path(text).expanduser().resolve())
        self.keep_versions = keep_versions
        self.lock_timeout_s = lock_timeout_s
        self.lease_ttl_s = lease_ttl_s
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    @classmethod
    def from_config(cls, root: str | os.PathLike[str], config: ModelStoreConfig) -> ModelStore:
        """A store at ``root`` with the retention, lock and lease settings of ``config``."""
        return cls(root, keep_versions=config.keep_versions, lock_timeout_s=config.lock_timeout_s,
                   lease_ttl_s=config.lease_ttl_s)

    # ---- paths -------------------------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return "/".join([self._base.rstrip("/"), *parts])

    def _url(self, *parts: str) -> str:
        """A user-facing location (a local path, or a URL with its protocol)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def _lock(self) -> Any:
        from filelock import FileLock

        if self.is_local:
            Path(self._base).mkdir(parents=True, exist_ok=True)
            lock_path = Path(self._base) / ".push.lock"
        else:  # object stores have no locks: serialise the pushers of this machine (KFP runs one at a time)
            lock_dir = Path(tempfile.gettempdir()) / "recflow-model-store-locks"
            lock_dir.mkdir(parents=True, exist_ok=True)
            lock_path = lock_dir / (hashlib.sha256(self.root.encode()).hexdigest()[:16] + ".lock")
        return FileLock(str(lock_path), timeout=self.lock_timeout_s)

    def _locked(self) -> Any:
        from filelock import Timeout

        lock = self._lock()
        try:
            lock.acquire()
        except Timeout:
            raise ServiceUnavailable(
                f"model store {self.root}: another push or rollback held the lock {self.lock_timeout_s:.0f}s",
                hint=f"wait for it, or remove {lock.lock_file} if no recflow process is running",
            ) from None
        return lock

    # ---- reading -----------------------------------------------------------------------------------------
    def _read_json(self, path: str) -> Any:
        try:
            return json.loads(self.fs.cat_file(path).decode("utf-8"))
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"model store file {path} is corrupt: {exc}") from None

    def _write_text(self, path: str, text: str) -> None:
        """Replace a small file atomically (temp + rename locally; one object upload remotely)."""
        if self.is_local:
            from recflow.io import atomic_path  # lazily: recflow.config imports this module, keep it light

            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
        else:
            self.fs.pipe_file(path, text.encode("utf-8"))

    def _version_names(self) -> list[str]:
        """Every version directory name (with or without a manifest), oldest first."""
        try:
            entries = self.fs.ls(self._p("versions"), detail=False)
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted((n for n in names if _VERSION_RE.match(n)), key=lambda n: int(n[1:]))

    def bundle(self, version: str) -> BundleInfo:
        """The bundle of ``version`` (``v0003`` or ``3``); DataError if it does not exist."""
        name = normalize_version(version)
        manifest = self._read_json(self._p("versions", name, MANIFEST))
        if manifest is None:
            known = ", ".join(self._complete_versions()) or "none"
            raise DataError(f"model store {self.root}: version {name} does not exist (versions: {known})")
        return BundleInfo(
            version=name,
            path=self._url("versions", name),
            created=str(manifest.get("created", "")),
            files={k: v["sha256"] for k, v in manifest.get("files", {}).items()},
            metadata=dict(manifest.get("metadata") or {}),
            blessing=dict(manifest.get("blessing") or {}),
        )

    def _complete_versions(self) -> list[str]:
        return [n for n in self._version_names() if self.fs.exists(self._p("versions", n, MANIFEST))]

    def versions(self) -> list[BundleInfo]:
        """Every complete version (a manifest present), oldest first; pushes in progress are not listed."""
        return [self.bundle(n) for n in self._complete_versions()]

    def alias(self, alias: str = CHAMPION) -> AliasState | None:
        """Where ``alias`` points (cheap: one small file; serving polls this to hot-swap), or None."""
        data = self._read_json(self._p("aliases", f"{alias}.json"))
        if data is None:
            return None
        return AliasState(
            alias, data["version"], data.get("previous"), data.get("moved_at", ""), data.get("reason", "")
        )

    def champion(self) -> BundleInfo | None:
        """The bundle serving should use, or None before the first push."""
        state = self.alias(CHAMPION)
        return None if state is None else self.bundle(state.version)

    def history(self, alias: str = CHAMPION) -> list[dict[str, Any]]:
        """Every move of ``alias``, oldest first."""
        try:
            text = self.fs.cat_file(self._p("aliases", "history.jsonl")).decode("utf-8")
        except FileNotFoundError:
            return []
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [e for e in entries if e.get("alias") == alias]

    def resolve(self, ref: str) -> BundleInfo:
        """A bundle by alias (``champion``), ``latest``, or version (``v0003``/``3``)."""
        if ref == "latest":
            names = self._complete_versions()
            if not names:
                raise DataError(f"model store {self.root} is empty (nothing pushed yet)")
            return self.bundle(names[-1])
        if self.fs.exists(self._p("aliases", f"{ref}.json")):
            state = self.alias(ref)
            assert state is not None
            return self.bundle(state.version)
        if ref == CHAMPION:
            raise DataError(f"model store {self.root} has no champion yet (nothing pushed)")
        return self.bundle(ref)

    # ---- pushing -----------------------------------------------------------------------------------------
    def push(
        self,
        parts: Mapping[str, Path],
        evaluation_dir: Path,
        metadata: Mapping[str, Any] | None = None,
        *,
        verify: Callable[[str], object] | None = None,
        canary: bool = False,
    ) -> PushResult:
        """Publish a blessed bundle as the next version and make it the champion; refuse an unblessed one.

        With ``canary`` and a champion in place, the new version becomes the ``canary`` alias instead (its
        ``previous`` is the champion it would replace) and the champion stays; serving then tries it on a share
        of traffic and :meth:`promote_canary` or :meth:`abort_canary` ends the trial. A canary still running is
        superseded (its trial ends as ``aborted``). The first push always makes a champion.

        ``parts`` maps part names to local files or directories (e.g. retrieval, ranking, policy); the
        evaluation directory is included as part ``evaluation`` unless given. ``metadata`` (JSON) goes into
        the manifest; by convention it holds ``mlflow_run_id`` and ``metrics``. ``verify`` is called with the
        staged         bundle's path and may raise or return False to reject it (e.g. load the SavedModel).
        """
        blessed, why, blessing = read_blessing(evaluation_dir)
        if not blessed:
            return PushResult(False, why)
        all_parts = dict(parts)
        all_parts.setdefault("evaluation", Path(evaluation_dir))
        return self._publish(all_parts, dict(metadata or {}), blessing, why, verify=verify, canary=canary)

    def push_baseline(
        self,
        fallback_dir: Path,
        evaluation_dir: Path,
        metadata: Mapping[str, Any] | None = None,
        *,
        verify: Callable[[str], object] | None = None,
    ) -> PushResult:
        """Publish the run's best baseline (``fallback_dir``, see :mod:`recflow.servable_baseline`) as the
        champion -- only while the store has no champion: a baseline never replaces a model.

        The bundle's manifest says ``kind: baseline`` and which baseline it is (``metadata.baseline``); its parts
        are ``baseline`` and ``evaluation`` (the run's report, which says why the candidate was not blessed).
        """
        from recflow.servable_baseline import BASELINE_PART, read_spec

        spec = read_spec(Path(fallback_dir))
        _, why, blessing = read_blessing(evaluation_dir)
        meta = {**dict(metadata or {}), "kind": "baseline",
                "baseline": {k: spec.get(k) for k in ("label", "name", "metric", "value", "candidate_value",
                                                      "reason")},
                "metrics": {f"{spec['metric']}": spec["value"]}}
        parts = {BASELINE_PART: Path(fallback_dir), "evaluation": Path(evaluation_dir)}
        reason = f"serving the run's best baseline {spec['label']}: {spec.get('reason', '')}"
        return self._publish(parts, meta, blessing, reason, verify=verify, canary=False, only_if_no_champion=True)

    def _publish(
        self,
        all_parts: Mapping[str, Path],
        meta: dict[str, Any],
        blessing: dict[str, Any],
        why: str,
        *,
        verify: Callable[[str], object] | None,
        canary: bool,
        only_if_no_champion: bool = False,
    ) -> PushResult:
        """Stage, verify and commit ``all_parts`` as the next version, then move the alias (see :meth:`push`)."""
        for name, src in all_parts.items():
            if not _PART_RE.match(name) or name == MANIFEST:
                raise ConfigError(f"bundle part name {name!r}: use letters, digits, '_', '-', '.'")
            if not Path(src).exists():
                raise DataError(f"bundle part {name!r}: {src} does not exist")
        try:
            json.dumps(meta, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise DataError(f"push metadata is not JSON-serialisable: {exc}") from None

        lock = self._locked()
        try:
            names = self._version_names()
            version = f"v{(int(names[-1][1:]) + 1 if names else 1):04d}"
            previous = self.alias(CHAMPION)
            if only_if_no_champion and previous is not None:
                return PushResult(False, f"the store has a champion ({previous.version}); a baseline never "
                                         "replaces one")
            staging = self._p("versions", f"{_STAGING_PREFIX}{uuid.uuid4().hex}")
            final = self._p("versions", version)  # does not exist: numbers only grow under the lock
            try:
                files = self._stage(all_parts, staging)
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "version": version,
                    "created": _now(),
                    "files": files,
                    "metadata": meta,
                    "blessing": blessing,
                }
                self._write_manifest(staging, manifest)
                self._verify(staging, verify)
                self._commit(staging, version)
                if canary and previous is not None:
                    running = self.alias(CANARY)
                    if running is not None:
                        self._record_decision("aborted", running.version, previous.version,
                                              f"superseded by {version}", {})
                    self._move_alias(CANARY, version, previous.version, "push (canary)")
                else:
                    reason = "push (baseline fallback)" if meta.get("kind") == "baseline" else "push"
                    self._move_alias(CHAMPION, version, previous.version if previous else None, reason)
            except BaseException:
                self._remove(staging)
                self._remove(final)
                raise
            self._collect_garbage()
        finally:
            lock.release()
        as_canary = canary and previous is not None
        return PushResult(True, why, version, previous.version if previous else None, self.bundle(version),
                          as_canary=as_canary)

    def _stage(self, parts: Mapping[str, Path], staging: str) -> dict[str, dict[str, Any]]:
        """Copy every part into ``staging``, hashing while reading; returns the manifest's file table."""
        files: dict[str, dict[str, Any]] = {}
        for name, src in sorted(parts.items()):
            src = Path(src)
            for path, rel in _local_files(src):
                key = f"{name}/{rel}"
                dest = f"{staging}/{key}"
                self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path), dest)
                with open(path, "rb") as fh:
                    files[key] = {"sha256": _hash_stream(fh), "bytes": path.stat().st_size}
        return files

    def _write_manifest(self, staging: str, manifest: Mapping[str, Any]) -> None:
        self._write_text(f"{staging}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True))

    def _verify(self, staging: str, verify: Callable[[str], object] | None) -> None:
        """Re-read the staged manifest and re-hash every staged file; then the caller's check, if any."""
        manifest = self._read_json(f"{staging}/{MANIFEST}")
        if not isinstance(manifest, dict) or "files" not in manifest:
            raise VerificationFailed(f"staged bundle {staging}: manifest missing or unreadable")
        expected = {k: v["sha256"] for k, v in manifest["files"].items()}
        present = {p[len(staging) + 1 :] for p in self.fs.find(staging)} - {MANIFEST}
        if present != set(expected):
            extra, missing = sorted(present - set(expected)), sorted(set(expected) - present)
            raise VerificationFailed(
                f"staged bundle {staging}: files differ from the manifest "
                f"(unexpected {extra[:5]}, missing {missing[:5]})"
            )
        for rel, sha in expected.items():
            with self.fs.open(f"{staging}/{rel}", "rb") as fh:
                actual = _hash_stream(fh)
            if actual != sha:
                raise VerificationFailed(
                    f"staged bundle {staging}: {rel} has sha256 {actual[:12]}..., "
                    f"the manifest says {sha[:12]}... (corrupted while copying)"
                )
        if verify is not None:
            try:
                ok = verify(staging if not self.is_local else str(Path(staging)))
            except Exception as exc:
                raise VerificationFailed(
                    f"staged bundle failed the push check: {type(exc).__name__}: {exc}"
                ) from exc
            if ok is False:
                raise VerificationFailed("staged bundle failed the push check (the check returned False)")

    def _commit(self, staging: str, version: str) -> str:
        """Rename the staging directory to its version name (atomic on a local disk)."""
        final = self._p("versions", version)
        if self.is_local:
            os.rename(staging, final)  # fails rather than merging if ``final`` exists
        else:
            if self.fs.exists(final):
                raise DataError(f"model store {self.root}: version {version} already exists")
            self.fs.mv(staging, final, recursive=True)
        return final

    def _move_alias(self, alias: str, version: str, previous: str | None, reason: str) -> AliasState:
        """Append to the history, then replace the alias file (commit point); undo the history on failure."""
        moved_at = _now()
        entry = {
            "alias": alias,
            "version": version,
            "previous": previous,
            "moved_at": moved_at,
            "reason": reason,
        }
        history_path = self._p("aliases", "history.jsonl")
        try:
            old_history = self.fs.cat_file(history_path).decode("utf-8")
        except FileNotFoundError:
            old_history = None
        self.fs.makedirs(self._p("aliases"), exist_ok=True)
        self._write_text(history_path, (old_history or "") + json.dumps(entry, sort_keys=True) + "\n")
        try:
            self._write_text(self._p("aliases", f"{alias}.json"), json.dumps(entry, indent=2, sort_keys=True))
        except BaseException:
            if old_history is None:
                self._remove(history_path)
            else:
                self._write_text(history_path, old_history)
            raise
        return AliasState(alias, version, previous, moved_at, reason)

    def _remove(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except OSError as exc:  # cleanup must never hide the original error
            log.warning("could not remove %s: %s", path, exc)

    # ---- rollback and garbage collection -----------------------------------------------------------------
    def rollback(self, to: str | None = None, *, check_files: bool = True) -> BundleInfo:
        """Point ``champion`` at ``to`` (default: the champion before the current one) and return that bundle.

        Rolling back twice goes two champions back. The target's files are re-hashed first (``check_files``).
        """
        lock = self._locked()
        try:
            current = self.alias(CHAMPION)
            if current is None:
                raise DataError(f"model store {self.root} has no champion yet: nothing to roll back")
            if to is None:
                if current.previous is None:
                    raise DataError(
                        f"model store {self.root}: champion {current.version} has no previous champion "
                        "to roll back to",
                        hint="name a version with --to (see `recflow models list`)",
                    )
                target = current.previous
            else:
                target = normalize_version(to)
            if target == current.version:
                raise DataError(f"model store {self.root}: {target} is already the champion")
            if to is None and target not in self._complete_versions():
                raise DataError(
                    f"model store {self.root}: the previous champion {target} no longer exists "
                    f"(deleted beyond keep_versions={self.keep_versions})",
                    hint="name an existing version with --to (see `recflow models list`)",
                )
            bundle = self.bundle(target)
            if check_files:
                self._check_bundle(bundle)
            arrivals = [e for e in self.history(CHAMPION) if e.get("version") == target]
            previous = arrivals[-1].get("previous") if arrivals else current.version
            self._move_alias(CHAMPION, target, previous, f"rollback from {current.version}")
            return bundle
        finally:
            lock.release()

    # ---- the canary ------------------------------------------------------------------------------------
    def canary(self) -> BundleInfo | None:
        """The bundle on trial as the canary, or None."""
        state = self.alias(CANARY)
        return None if state is None else self.bundle(state.version)

    def promote_canary(self, reason: str, stats: Mapping[str, Any] | None = None,
                       *, expected: str | None = None) -> BundleInfo | None:
        """Make the canary the champion (its previous: the current champion) and end the trial; returns the new
        champion, or None when there is no canary (or it is no longer ``expected``: another process decided)."""
        lock = self._locked()
        try:
            state = self.alias(CANARY)
            if state is None or (expected is not None and state.version != normalize_version(expected)):
                return None
            champion = self.alias(CHAMPION)
            self._move_alias(CHAMPION, state.version, champion.version if champion else None,
                             f"canary promoted: {reason}")
            self._clear_alias(CANARY, f"promoted to champion: {reason}")
            self._record_decision("promoted", state.version, champion.version if champion else None, reason,
                                  stats or {})
            return self.bundle(state.version)
        finally:
            lock.release()

    def abort_canary(self, reason: str, stats: Mapping[str, Any] | None = None,
                     *, expected: str | None = None) -> str | None:
        """End the canary's trial without promoting it (a rollback: the champion never moved); returns the
        aborted version, or None when there is no canary (or it is no longer ``expected``)."""
        lock = self._locked()
        try:
            state = self.alias(CANARY)
            if state is None or (expected is not None and state.version != normalize_version(expected)):
                return None
            self._clear_alias(CANARY, f"rolled back: {reason}")
            self._record_decision("rolled_back", state.version, state.previous, reason, stats or {})
            return state.version
        finally:
            lock.release()

    def canary_decisions(self) -> list[dict[str, Any]]:
        """Every canary decision (promoted, rolled_back, aborted), oldest first."""
        try:
            text = self.fs.cat_file(self._p("aliases", "canary_decisions.jsonl")).decode("utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _record_decision(self, decision: str, version: str, champion: str | None, reason: str,
                         stats: Mapping[str, Any]) -> None:
        path = self._p("aliases", "canary_decisions.jsonl")
        try:
            old = self.fs.cat_file(path).decode("utf-8")
        except FileNotFoundError:
            old = ""
        entry = {"decision": decision, "version": version, "champion": champion, "reason": reason,
                 "decided_at": _now(), "stats": dict(stats)}
        self.fs.makedirs(self._p("aliases"), exist_ok=True)
        self._write_text(path, old + json.dumps(entry, sort_keys=True, default=str) + "\n")

    def _clear_alias(self, alias: str, reason: str) -> None:
        """Remove ``alias`` (history first, then the alias file: the commit point)."""
        history_path = self._p("aliases", "history.jsonl")
        try:
            old_history = self.fs.cat_file(history_path).decode("utf-8")
        except FileNotFoundError:
            old_history = ""
        entry = {"alias": alias, "version": None, "previous": None, "moved_at": _now(), "reason": reason}
        self._write_text(history_path, old_history + json.dumps(entry, sort_keys=True) + "\n")
        self._remove(self._p("aliases", f"{alias}.json"))

    def _check_bundle(self, bundle: BundleInfo) -> None:
        base = self._p("versions", bundle.version)
        for rel, sha in bundle.files.items():
            try:
                with self.fs.open(f"{base}/{rel}", "rb") as fh:
                    actual = _hash_stream(fh)
            except FileNotFoundError:
                raise DataError(f"model store {self.root}: {bundle.version}/{rel} is missing") from None
            if actual != sha:
                raise DataError(
                    f"model store {self.root}: {bundle.version}/{rel} does not match its manifest "
                    "(sha256 differs); refusing to serve it"
                )

    def collect_garbage(self) -> list[str]:
        """Delete the versions :meth:`retention` does not keep; returns the deleted ones."""
        lock = self._locked()
        try:
            return self._collect_garbage()
        finally:
            lock.release()

    # ---- leases: what serving processes have loaded ------------------------------------------------------
    def hold(self, holder: str, versions: list[str] | tuple[str, ...], ttl_s: float | None = None) -> None:
        """Record that ``holder`` (e.g. ``host:pid``) serves or is loading ``versions`` until now + ``ttl_s``
        (default ``lease_ttl_s``); the garbage collection keeps them. Call again to refresh or change them."""
        if not _PART_RE.match(holder):
            holder = hashlib.sha256(holder.encode()).hexdigest()[:16]
        ttl = self.lease_ttl_s if ttl_s is None else ttl_s
        record = {"holder": holder, "versions": sorted({normalize_version(v) for v in versions}),
                  "expires": time.time() + ttl, "held_at": _now()}
        self.fs.makedirs(self._p("leases"), exist_ok=True)
        self._write_text(self._p("leases", f"{holder}.json"), json.dumps(record, sort_keys=True))

    def release(self, holder: str) -> None:
        """Drop ``holder``'s lease (a serving process that shuts down)."""
        if not _PART_RE.match(holder):
            holder = hashlib.sha256(holder.encode()).hexdigest()[:16]
        self._remove(self._p("leases", f"{holder}.json"))

    def leases(self) -> dict[str, list[str]]:
        """Unexpired leases: holder -> versions."""
        try:
            entries = self.fs.ls(self._p("leases"), detail=False)
        except FileNotFoundError:
            return {}
        out: dict[str, list[str]] = {}
        now = time.time()
        for entry in entries:
            if not entry.endswith(".json"):
                continue
            try:
                record = self._read_json(entry)
            except DataError:  # a torn lease file protects nothing but must not stop the collection
                continue
            if isinstance(record, dict) and float(record.get("expires", 0)) > now:
                out[str(record.get("holder"))] = [str(v) for v in record.get("versions", [])]
        return out

    def retention(self) -> dict[str, list[str]]:
        """Why each kept version is kept: version -> reasons (``newest N``, ``champion``, ``previous
        champion``, ``alias canary``, ``lease <holder>``); versions absent from the result are deletable."""
        names = self._version_names()
        keep: dict[str, list[str]] = {}

        def mark(version: str | None, why: str) -> None:
            if version:
                keep.setdefault(version, []).append(why)

        for name in names[-self.keep_versions :]:
            mark(name, f"newest {self.keep_versions}")
        for alias in self._alias_names():
            state = self.alias(alias)
            if state is None:
                continue
            mark(state.version, alias)
            mark(state.previous, f"previous {alias}")
        for holder, versions in self.leases().items():
            for version in versions:
                mark(version, f"lease {holder}")
        return {name: keep[name] for name in names if name in keep}

    def _alias_names(self) -> list[str]:
        try:
            entries = self.fs.ls(self._p("aliases"), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1][: -len(".json")] for e in entries if e.endswith(".json"))

    def _collect_garbage(self) -> list[str]:
        names = self._version_names()
        protected = set(self.retention())
        removed = []
        for name in names:
            if name not in protected:
                try:
                    self.fs.rm(self._p("versions", name), recursive=True)
                    removed.append(name)
                except OSError as exc:
                    log.warning("model store %s: could not delete old version %s: %s", self.root, name, exc)
        if removed:
            log.info("model store %s: deleted old versions %s", self.root, ", ".join(removed))
        try:
            entries = self.fs.ls(self._p("versions"), detail=True)
        except FileNotFoundError:
            entries = []
        for entry in entries:  # staging left by a crashed pusher (old enough not to be a live push)
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            mtime = entry.get("mtime") or entry.get("updated") or entry.get("created")
            if (
                name.startswith(_STAGING_PREFIX)
                and isinstance(mtime, (int, float))
                and time.time() - mtime > _STALE_STAGING_S
            ):
                self._remove(entry["name"])
        return removed


# ----------------------------------------------------------------------------------------------------------
# The MLflow Model Registry mirrors the store


def _local_bundle_dir(store: ModelStore, bundle: BundleInfo, tmp: str) -> str:
    if store.is_local:
        return bundle.path
    local = str(Path(tmp) / bundle.version)
    store.fs.get(store._p("versions", bundle.version), local, recursive=True)
    return local


def register_in_mlflow(
    tracking_uri: str,
    run_id: str,
    bundle: BundleInfo,
    name: str,
    *,
    store: ModelStore | None = None,
    alias: str = CHAMPION,
    model_writer: ModelWriter | None = None,
) -> str:
    """Log ``bundle`` as artifacts of ``run_id``, register them as a version of model ``name``, set ``alias``.

    Returns the registered model version. The model version is tagged ``recflow.bundle_version`` (and
    ``recflow.store`` when ``store`` is given) so the registry can be kept in step with the store.
    ``model_writer(bundle_dir, out_dir)``, when given, turns the bundle into the directory that is logged and
    registered instead (the Pusher passes ``serving.pyfunc.write_pyfunc_model``: an MLflow pyfunc model).
    """
    from mlflow.exceptions import MlflowException

    from recflow.tracking import check_tracking_server, tracking_client

    check_tracking_server(tracking_uri)
    client = tracking_client(tracking_uri)
    artifact_path = f"model_bundle/{bundle.version}"
    with tempfile.TemporaryDirectory(prefix="recflow-bundle-") as tmp:
        local = _local_bundle_dir(store, bundle, tmp) if store is not None else bundle.path
        if model_writer is not None:  # (issue 16: the registered version loads with mlflow.pyfunc)
            local = str(model_writer(Path(local), Path(tmp) / "mlflow-model"))
        client.log_artifacts(run_id, local, artifact_path)
    try:
        client.create_registered_model(
            name, description="recflow recommender bundle (retrieval, ranking, policy)"
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + artifact_path
    tags = {TAG_BUNDLE_VERSION: bundle.version, TAG_BUNDLE_KIND: bundle.kind,
            **({TAG_STORE: store.root} if store is not None else {}),
            **({TAG_PYFUNC: "true"} if model_writer is not None else {})}
    mv = client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=f"model store bundle {bundle.version}"
    )
    client.set_registered_model_alias(name, alias, mv.version)
    client.set_tag(run_id, TAG_BUNDLE_VERSION, bundle.version)
    client.set_tag(run_id, TAG_BUNDLE_KIND, bundle.kind)  # "baseline": the run pushed its best baseline
    return str(mv.version)


def registry_version_for(
    tracking_uri: str, name: str, bundle_version: str, store_root: str | None = None, *, pyfunc: bool = False
) -> str | None:
    """The newest registered version of ``name`` tagged with ``bundle_version`` (and the store; with
    ``pyfunc``, only a version registered as an MLflow pyfunc model), or None."""
    from mlflow.exceptions import MlflowException

    from recflow.tracking import tracking_client

    client = tracking_client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matches = [
        int(v.version)
        for v in versions
        if v.tags.get(TAG_BUNDLE_VERSION) == bundle_version
        and (store_root is None or v.tags.get(TAG_STORE, store_root) == store_root)
        and (not pyfunc or _is_pyfunc(client, v, bundle_version))
    ]
    return str(max(matches)) if matches else None


def _is_pyfunc(client: Any, model_version: Any, bundle_version: str) -> bool:
    """Whether a registered version is an MLflow pyfunc model: tagged so, or (registered before the tag existed)
    an ``MLmodel`` file among its artifacts."""
    if model_version.tags.get(TAG_PYFUNC) == "true":
        return True
    if not model_version.run_id:
        return False
    folder = f"model_bundle/{bundle_version}"
    return any(a.path == f"{folder}/MLmodel" for a in client.list_artifacts(model_version.run_id, folder))


def sync_registry_alias(tracking_uri: str, store: ModelStore, name: str, alias: str = CHAMPION, *,
                        model_writer: ModelWriter | None = None) -> str | None:
    """Move the registry's ``alias`` to the model version of the store's champion (the store is the truth).

    Registers the champion first if the registry lacks it and its manifest names the MLflow run -- written by
    ``model_writer`` (an MLflow pyfunc model) when given; with a ``model_writer``, a plain version registered
    before counts as lacking, when the manifest names the run to register it from. Returns the registered model
    version, or None when the store has no champion.
    """
    from recflow.tracking import check_tracking_server, tracking_client

    check_tracking_server(tracking_uri)
    champion = store.champion()
    if champion is None:
        return None
    version = registry_version_for(tracking_uri, name, champion.version, store.root,
                                   pyfunc=model_writer is not None)
    if version is None and champion.mlflow_run_id is None:  # a plain version is better than none
        version = registry_version_for(tracking_uri, name, champion.version, store.root)
    if version is None:
        if champion.mlflow_run_id is None:
            raise DataError(
                f"MLflow model {name!r} has no version for bundle {champion.version}, and its manifest "
                "names no MLflow run to register it from",
                hint="the store stays authoritative; serving is unaffected",
            )
        return register_in_mlflow(
            tracking_uri, champion.mlflow_run_id, champion, name, store=store, alias=alias,
            model_writer=model_writer,
        )
    tracking_client(tracking_uri).set_registered_model_alias(name, alias, version)
    return version


def rollback_champion(
    store: ModelStore,
    to: str | None = None,
    *,
    tracking_uri: str | None = None,
    model_name: str | None = None,
    model_writer: ModelWriter | None = None,
) -> tuple[BundleInfo, str | None]:
    """Roll the store back, then move the registry alias to match (when a tracking URI and model are given;
    a version registered on the way is written by ``model_writer``, see :func:`sync_registry_alias`).

    Returns the new champion and its registered model version (None without a registry).
    """
    bundle = store.rollback(to)
    if tracking_uri is None or model_name is None:
        return bundle, None
    return bundle, sync_registry_alias(tracking_uri, store, model_name, model_writer=model_writer)


def sync_canary_registry(tracking_uri: str, store: ModelStore, name: str, *,
                         model_writer: ModelWriter | None = None) -> dict[str, str | None]:
    """Mirror the store's ``champion`` and ``canary`` aliases in the MLflow registry after a canary decision:
    ``champion`` follows the store's champion (:func:`sync_registry_alias`); ``canary`` is set on the canary's
    registered version, or deleted when no canary runs (versions registered on the way are written by
    ``model_writer``). Returns ``{"champion": version, "canary": version}``."""
    from mlflow.exceptions import MlflowException

    from recflow.tracking import tracking_client

    out: dict[str, str | None] = {
        "champion": sync_registry_alias(tracking_uri, store, name, model_writer=model_writer), "canary": None}
    client = tracking_client(tracking_uri)
    canary = store.canary()
    if canary is None:
        with contextlib.suppress(MlflowException):  # no such alias: nothing to delete
            client.delete_registered_model_alias(name, CANARY)
        return out
    version = registry_version_for(tracking_uri, name, canary.version, store.root, pyfunc=model_writer is not None)
    if version is None and not canary.mlflow_run_id:
        version = registry_version_for(tracking_uri, name, canary.version, store.root)
    if version is None and canary.mlflow_run_id:
        version = register_in_mlflow(tracking_uri, canary.mlflow_run_id, canary, name, store=store, alias=CANARY,
                                     model_writer=model_writer)
    elif version is not None:
        client.set_registered_model_alias(name, CANARY, version)
    out["canary"] = version
    return out
