"""Where the MLflow tracking store is, whether it can be reached, and the client bound to it.

MLflow's HTTP client retries a dead server for minutes, so :func:`check_tracking_server` runs first and fails
within seconds with :class:`~recflow.errors.ServiceUnavailable`.
"""

from __future__ import annotations

import os
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from recflow.errors import DataError, ServiceUnavailable

if TYPE_CHECKING:
    from mlflow import MlflowClient

class TrackingConfig(BaseModel):
    """Where and how pipeline runs are tracked in MLflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (an `mlflow server` URL, sqlite:///..., file:///...); null: "
        "$MLFLOW_TRACKING_URI if set, else sqlite:///DATA_DIR/mlflow.db.",
    )
    experiment: str = Field(
        "recflow", min_length=1, description="MLflow experiment that holds the pipeline runs."
    )
    registered_model_name: str = Field(
        "recflow-recommender", min_length=1, description="Name of the model in the MLflow Model Registry."
    )
    artifact_location: str | None = Field(
        None,
        description="Artifact root of a newly created experiment; null: DATA_DIR/mlartifacts for a local "
        "store, "
        "the server's default for a tracking server.",
    )
    check_timeout_s: float = Field(
        5.0, gt=0, description="Seconds to wait for the tracking server's /health before failing the run."
    )


def default_tracking_uri(data_dir: Path) -> str:
    """The local default: a sqlite database ``DATA_DIR/mlflow.db`` (absolute: any working directory works)."""
    return "sqlite:///" + str(Path(data_dir).expanduser().resolve() / "mlflow.db")


def tracking_data_dir(data_dir: Path, config_path: Path | None = None) -> Path:
    """The data directory that holds the local tracking store, as an absolute path.

    :func:`recflow.config.load_config` has already anchored a ``paths.data_dir`` that came from a config file
    (``--config`` / $RECFLOW_CONFIG) at the file's directory, so every command finds the same store whatever the
    working directory. A relative ``data_dir`` here (none of the CLI's, which are absolute by then) is anchored
    at ``config_path``'s directory when given, else at the working directory.
    """
    path = Path(data_dir).expanduser()
    if not path.is_absolute() and config_path is not None:
        path = Path(config_path).expanduser().resolve().parent / path
    return path.resolve()


def resolve_tracking_uri(
    config: TrackingConfig, data_dir: Path, override: str | None = None, config_path: Path | None = None
) -> str:
    """The tracking URI to use: ``override`` (``--tracking-uri``) > config > $MLFLOW_TRACKING_URI > sqlite.

    The sqlite default lives in :func:`tracking_data_dir` (``data_dir`` anchored at ``config_path``'s
    directory).
    """
    for candidate in (override, config.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")):
        if candidate:
            return candidate
    return default_tracking_uri(tracking_data_dir(data_dir, config_path))


def require_existing_store(uri: str) -> None:
    """For commands that only read runs: fail (without creating anything) when a local store does not exist.

    MLflow creates an empty sqlite database on first use; a reading command run from the wrong directory
    would otherwise leave a stray ``data/mlflow.db`` there and report that the experiment does not exist.
    """
    if not uri.startswith("sqlite:"):
        return
    db = uri[len("sqlite:") :]
    db = db[3:] if db.startswith("///") else db.lstrip("/")
    if db in ("", ":memory:"):
        return
    path = Path(db) if db.startswith("/") or ":" in db[:3] else Path.cwd() / db
    if not path.is_file():
        raise DataError(
            f"no MLflow tracking store at {path} (no runs tracked there yet)",
            hint="run from the project directory, pass --config with the config file whose paths.data_dir "
            "holds the runs, or --tracking-uri",
        )


def default_artifact_location(tracking_uri: str, config: TrackingConfig, data_dir: Path) -> str | None:
    """Artifact root for a new experiment: configured, else DATA_DIR/mlartifacts for a local store, else None.

    Without it a local sqlite store would put artifacts in ``./mlruns`` of whatever the working directory is.
    """
    if config.artifact_location:
        return config.artifact_location
    if _is_local_store(tracking_uri):
        return (Path(data_dir).expanduser().resolve() / "mlartifacts").as_uri()
    return None


def _is_local_store(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("sqlite", "file", "") or (len(scheme) == 1 and os.name == "nt")


def _local_store_dir(uri: str) -> Path:
    """The directory a sqlite database or a file store lives in."""
    if uri.startswith("sqlite:"):
        db = uri[len("sqlite:") :]
        db = db[3:] if db.startswith("///") else db.lstrip("/")
        if db in ("", ":memory:"):
            return Path.cwd()
        return Path(db).parent if db.startswith("/") or ":" in db[:3] else (Path.cwd() / db).parent
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    return Path(uri)


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when the tracking store cannot be used.

    http(s): ``GET <uri>/health`` must answer 200 within ``timeout_s``. sqlite/file: the store's directory
    must exist (or be creatable) and be writable. Database URLs (postgresql://, mysql://): the host's port
    must accept a TCP connection. Raises :class:`ServiceUnavailable` naming the URI and what to do.
    """
    import requests

    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    hint = (
        "start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), or pass another --tracking-uri / "
        "set tracking.tracking_uri (null uses a local sqlite file under the data directory)"
    )
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            resp = requests.get(url, timeout=timeout_s)
        except requests.RequestException as exc:
            raise ServiceUnavailable(
                f"MLflow tracking server {uri} is unreachable ({type(exc).__name__}: {exc})", hint=hint
            ) from None
        if resp.status_code != 200:
            raise ServiceUnavailable(
                f"MLflow tracking server {uri} is not healthy: GET {url} answered {resp.status_code}",
                hint=hint,
            )
        return
    if _is_local_store(uri):
        directory = _local_store_dir(uri)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".recflow-write-check-"):
                pass
        except OSError as exc:
            raise ServiceUnavailable(
                f"MLflow tracking store {uri}: directory {directory} is not writable ({exc.strerror or exc})",
                hint="fix the permissions or point tracking.tracking_uri / --tracking-uri elsewhere",
            ) from None
        return
    if parsed.hostname:  # a database server
        port = parsed.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(scheme)
        if port is None:
            return
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
                return
        except OSError as exc:
            raise ServiceUnavailable(
                f"MLflow tracking database {parsed.hostname}:{port} ({scheme}) is unreachable ({exc})",
                hint="start the database or fix tracking.tracking_uri",
            ) from None
    # Other schemes (databricks, ...) are left to MLflow itself.


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An MLflow client bound to ``tracking_uri`` for tracking and for the model registry."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
