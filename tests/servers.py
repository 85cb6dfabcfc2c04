"""Real servers for tests, started on 127.0.0.1 and stopped afterwards (no Docker, no network).

Use the context managers directly, or, for a server shared by every test of a session, the pytest fixtures
below: a test module makes them available with ``pytest_plugins = ["servers"]`` (tests/ is on sys.path), so
that all modules share one server instead of starting one each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log_path: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} before {url} answered:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(
        f"{url} did not answer within {timeout_s:.0f}s:\n" + log_path.read_text(errors="replace")[-4000:]
    )


def stop_process_group(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate a server started with ``start_new_session=True`` and its workers (its process group only)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the parent
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def mlflow_server(tmp_path: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """Run a real ``mlflow server`` (sqlite backend, proxied local artifacts) and yield its http:// URI."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = tmp_path / "mlflow-server.log"
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        (tmp_path / "mlartifacts").resolve().as_uri(),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No job runner (a second Python process that tests never use): halves the start time on a busy machine.
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(uri + "/health", proc, timeout_s, log_path)
        yield uri
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real MLflow tracking server for the whole test session."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
