"""`recflow pipeline submit/schedule` through the real kfp Client, against a recording KFP API on 127.0.0.1.

No Kubeflow Pipelines server can run here, so a small HTTP server answers the v2beta1 REST calls the client
makes (healthz, experiments, runs, recurring runs) with plausible JSON and records every request; the tests
assert what the client sent: the compiled spec with its six tasks, the run parameters, cron and the
recurring-run safety settings.
"""

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.remote import kfp_cron
from recflow.cli import main
from recflow.errors import ConfigError

TASKS = {"example-gen", "transform", "tfrs-trainer", "agents-trainer", "evaluator", "pusher"}


class RecordingKfpApi(BaseHTTPRequestHandler):
    """Answers the KFP v2beta1 API calls of kfp.Client and records (method, path, body)."""

    requests: list[tuple[str, str, dict]] = []

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        self.requests.append((self.command, self.path, body))
        return body

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})  # none yet: the client creates it
        elif self.path.startswith("/apis/v2beta1/runs/"):
            self._reply({"run_id": self.path.rsplit("/", 1)[-1], "state": "PENDING"})
        else:
            self._reply({"error": f"unexpected GET {self.path}"}, 404)

    def do_POST(self) -> None:
        body = self._record()
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self._reply({**body, "run_id": "run-1", "experiment_id": "exp-1", "state": "PENDING"})
        elif self.path.startswith("/apis/v2beta1/recurringruns"):
            self._reply({**body, "recurring_run_id": "rr-1", "experiment_id": "exp-1", "status": "ENABLED"})
        else:
            self._reply({"error": f"unexpected POST {self.path}"}, 404)


@pytest.fixture()
def kfp_api() -> Iterator[tuple[str, list]]:
    RecordingKfpApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", RecordingKfpApi.requests
    finally:
        server.shutdown()
        server.server_close()


def _posted(requests: list, prefix: str) -> dict:
    bodies = [b for method, path, b in requests if method == "POST" and path.startswith(prefix)]
    assert len(bodies) == 1, f"expected one POST {prefix}, got {[(m, p) for m, p, _ in requests]}"
    return bodies[0]


def _task_names(pipeline_spec: dict) -> set[str]:
    names = set(pipeline_spec["root"]["dag"]["tasks"])
    for comp in pipeline_spec["components"].values():
        names |= set(comp.get("dag", {}).get("tasks", {}))
    return names


def _assert_gpu_placement(platform_spec: dict) -> None:
    """The kfp-kubernetes section travels with the spec: both trainers' node selector and toleration."""
    executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-tfrs-trainer", "exec-agents-trainer"}
    for config in executors.values():
        assert config["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
        assert config["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_submit_sends_compiled_spec_and_parameters(kfp_api, capsys):
    host, requests = kfp_api
    rc = main(["--set", "trainer.epochs=3", "pipeline", "submit", "--host", host, "--data", "gs://shop/events",
               "--model-store", "gs://shop/models", "--tracking-uri", "http://mlflow:5000", "--run-name", "nightly"])
    assert rc == 0, capsys.readouterr()
    assert "submitted run run-1" in capsys.readouterr().out
    run = _posted(requests, "/apis/v2beta1/runs")
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == "exp-1"
    assert _posted(requests, "/apis/v2beta1/experiments")["display_name"] == "recflow"
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "recflow-training"
    assert _task_names(spec) >= TASKS
    _assert_gpu_placement(run["pipeline_spec"]["platform_spec"])
    params = run["runtime_config"]["parameters"]
    assert params["data_uri"] == "gs://shop/events"
    assert params["model_store"] == "gs://shop/models"
    assert params["tracking_uri"] == "http://mlflow:5000"
    assert params["trainer_config"]["epochs"] == 3  # each step's config section, typed
    assert params["run_name"] == "nightly"  # the MLflow run's name (opened by the first step on the cluster)
    assert "serving_config" not in params and "config_yaml" not in params


def test_schedule_sends_cron_single_flight_and_no_catchup(kfp_api, capsys):
    host, requests = kfp_api
    rc = main(["pipeline", "schedule", "--host", host, "--data", "gs://shop/events", "--model-store",
               "gs://shop/models", "--cron", "30 2 * * *", "--name", "nightly-retrain"])
    assert rc == 0, capsys.readouterr()
    assert "rr-1" in capsys.readouterr().out
    job = _posted(requests, "/apis/v2beta1/recurringruns")
    assert job["display_name"] == "nightly-retrain"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"
    assert int(job["max_concurrency"]) == 1
    assert job["no_catchup"] is True
    assert job["mode"] == "ENABLE"
    assert _task_names(job["pipeline_spec"]["pipeline_spec"]) >= TASKS
    _assert_gpu_placement(job["pipeline_spec"]["platform_spec"])
    assert job["runtime_config"]["parameters"]["data_uri"] == "gs://shop/events"


def test_cron_expressions():
    assert kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert kfp_cron("15 0 3 ? * MON-FRI") == "15 0 3 ? * MON-FRI"
    for bad in ("", "* * *", "0 3 * * * * *", "0 3 * * ; rm"):
        with pytest.raises(ConfigError, match="cron expression"):
            kfp_cron(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_is_a_clear_error_without_traceback(tmp_path: Path):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "recflow"), "pipeline", "submit", "--host", f"http://127.0.0.1:{_free_port()}",
         "--data", "gs://shop/events", "--model-store", "gs://shop/models"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert "cannot be reached" in proc.stderr and "127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr
