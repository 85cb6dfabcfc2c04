"""What a training run's outside inputs are *now*: the dataset's content and the model store's champion.

A KFP cache key covers a step's parameters and input artifacts, not what sits behind a path: ExampleGen reads
``data_uri`` and the Evaluator compares with the store's champion, and both can change under the same path. So
the DAG's first task, the light and never-cached resolver (``components/resolver``; TFX's Resolver node plays the
same part for its Evaluator's baseline model), turns them into values -- :func:`data_version` and
:func:`champion_version` -- that ExampleGen and the Evaluator take as parameters: new data or a new champion
changes their cache keys, an unchanged dataset and champion let KFP reuse them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Checksum-like fields fsspec reports for remote objects, in order of preference.
_REMOTE_CHECKSUMS = ("md5Hash", "crc32c", "ETag", "etag", "generation", "md5", "mtime", "LastModified", "updated")


def data_version(data_uri: str) -> str:
    """An identifier of the dataset's content at ``data_uri``.

    A local directory or file: ``sha256:<hex>``, the data fingerprint (the tables' bytes only,
    :func:`recflow.tracking.data_fingerprint`). A remote URI (``gs://...``): ``objects:<hex>``, a digest of every
    object's name, size and the checksum or generation the store reports. When the data cannot be read:
    ``unreadable: <reason>`` (ExampleGen then fails with its own, named error).
    """
    uri = (data_uri or "").strip()
    if not uri:
        return "unreadable: data_uri is empty"
    try:
        if "://" not in uri:
            from recflow.tracking.lifecycle import data_fingerprint

            return f"sha256:{data_fingerprint(Path(uri))}"
        return f"objects:{_remote_digest(uri)}"
    except Exception as exc:  # noqa: BLE001 -- any failure is ExampleGen's to report, with its own message
        return f"unreadable: {type(exc).__name__}: {exc}"[:500]


def _remote_digest(uri: str) -> str:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    digest = hashlib.sha256()
    entries = fs.find(root, detail=True)
    if not entries:
        raise FileNotFoundError(f"{uri}: no objects")
    for name in sorted(entries):
        info = entries[name]
        check = next((str(info[k]) for k in _REMOTE_CHECKSUMS if info.get(k) not in (None, "")), "")
        digest.update(f"{name[len(root):]}\0{info.get('size')}\0{check}\n".encode())
    return digest.hexdigest()


def champion_version(model_store: str) -> str:
    """``<version>@<created>`` of the champion in the model store at ``model_store`` ('' when there is no store
    or no champion yet): the bundle the Evaluator compares the candidate with."""
    if not (model_store or "").strip():
        return ""
    from recflow.model_store import ModelStore

    champion = ModelStore(model_store).champion()
    return f"{champion.version}@{champion.created}" if champion is not None else ""


def champion_from(version: str) -> str:
    """The store version of a :func:`champion_version` value ('' for none)."""
    return (version or "").split("@", 1)[0]
