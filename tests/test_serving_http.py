"""The HTTP service: every endpoint, auth, limits, JSON errors, metrics, schemathesis fuzzing, and the SIGKILL
durability of the feedback log against a real ``recflow serve`` process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from servers import free_port, wait_for_http

from pipelines.sample_bundle import bundle_parts, push
from recflow.model_store import ModelStore
from serving.config import ServingConfig
from serving.feedback_log import read_feedback

KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http-store")
    push(ModelStore(root), bundle_parts())
    return root


@pytest.fixture(scope="module")
def app_client(store_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from serving.app import create_app
    from serving.recommender import Recommender

    rec = Recommender.load(
        store_root, ServingConfig(max_body_bytes=4096), feedback_dir=tmp_path_factory.mktemp("http-feedback")
    )
    app = create_app(rec, api_key=KEY, watch=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, rec
    rec.close()


def test_recommendations_feedback_explanation_and_metrics(app_client) -> None:
    client, rec = app_client
    r = client.post(
        "/v1/recommendations",
        json={"user_id": "u000001", "k": 4, "context": {"hour": 7}, "exclude": ["i000001"]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 4 and body["model_version"] == "v0001" and body["variant"] == "champion"
    assert all(0 < it["propensity"] <= 1 for it in body["items"]) and body["request_id"]
    assert "i000001" not in [it["item_id"] for it in body["items"]]
    rid, first = body["request_id"], body["items"][0]["item_id"]
    events = [
        {"event_type": "impression", "item_id": it["item_id"], "request_id": rid} for it in body["items"]
    ]
    events.append({"event_type": "click", "item_id": first, "request_id": rid})
    r = client.post("/v1/feedback", json={"events": events}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"accepted": 5}
    logged = read_feedback(rec.feedback_log.log_dir)
    assert (logged["request_id"] == rid).sum() == 5
    r = client.get(f"/v1/recommendations/{rid}/explanation")
    assert r.status_code == 200 and len(r.json()["items"]) == 4
    assert client.get("/v1/recommendations/nope/explanation").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["model_version"] == "v0001"
    metrics = client.get("/metrics").text
    assert 'recflow_http_requests_total{endpoint="/v1/recommendations",method="POST",status="200"}' in metrics
    assert "recflow_http_request_seconds_bucket" in metrics
    assert 'recflow_model_version_info{kind="model",variant="champion",version="v0001"} 1.0' in metrics
    assert "recflow_feedback_learner_lag_events" in metrics
    assert "/v1/feedback" in client.get("/openapi.json").json()["paths"]


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_pass_promtool_and_count_clicks_and_impressions_per_variant(app_client) -> None:
    client, _ = app_client
    body = client.post("/v1/recommendations", json={"user_id": "u000002", "k": 3}).json()
    before = client.get("/metrics").text
    rid = body["request_id"]
    events = [{"event_type": "impression", "item_id": it["item_id"], "request_id": rid} for it in body["items"]]
    events.append({"event_type": "click", "item_id": body["items"][0]["item_id"], "request_id": rid})
    events.append({"event_type": "click", "item_id": "i000001", "user_id": "someone"})  # no slate to credit
    assert client.post("/v1/feedback", json={"events": events}, headers=AUTH).status_code == 200
    text = client.get("/metrics").text
    name = "recflow_feedback_events_total"
    for labels, added in (
        ({"variant": "champion", "event_type": "impression"}, 3),
        ({"variant": "champion", "event_type": "click"}, 1),
        ({"variant": "unattributed", "event_type": "click"}, 1),
    ):
        assert _metric(text, name, **labels) == _metric(before, name, **labels) + added, labels
    assert "# TYPE recflow_feedback_events_total counter" in text
    assert "recflow_ctr_5m" not in text  # the click rate is PromQL over these counters, not a per-process gauge
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install -y prometheus)"
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_one_json_access_log_line_per_request(app_client, caplog: pytest.LogCaptureFixture) -> None:
    from serving.app import create_app
    from serving.logs import ACCESS_LOGGER, JsonFormatter

    client, rec = app_client
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        ok = client.post("/v1/recommendations", json={"user_id": "u000003", "k": 2})
        client.post("/v1/recommendations", json={"user_id": ""})
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2, lines
    good, bad = lines
    assert good["event"] == "request" and good["request_id"] == ok.json()["request_id"]
    assert good["user_id"] == "u000003" and good["variant"] == "champion" and good["model_version"] == "v0001"
    assert good["status"] == 200 and good["endpoint"] == "/v1/recommendations" and good["latency_ms"] > 0
    assert bad["status"] == 422 and "variant" not in bad and bad["request_id"]
    caplog.clear()
    rec.config = rec.config.model_copy(update={"access_log_level": "DEBUG"})
    try:  # access lines at DEBUG are hidden by a logger at INFO
        with TestClient(create_app(rec, api_key=KEY, watch=False)) as quiet, caplog.at_level(
            logging.INFO, logger=ACCESS_LOGGER
        ):
            assert quiet.post("/v1/recommendations", json={"user_id": "u000003"}).status_code == 200
        assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]
    finally:
        rec.config = rec.config.model_copy(update={"access_log_level": "INFO"})


def test_openapi_declares_the_api_key_scheme_and_error_responses(app_client) -> None:
    client, _ = app_client
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"]["type"] == "apiKey" and schemes["ApiKey"]["in"] == "header"
    assert schemes["ApiKey"]["name"] == "X-API-Key"
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"].lower() == "bearer"
    feedback = spec["paths"]["/v1/feedback"]["post"]
    assert {"ApiKey": []} in feedback["security"] and {"Bearer": []} in feedback["security"]
    for path, method, codes in (
        ("/v1/feedback", "post", ("400", "401", "413", "422")),
        ("/v1/recommendations", "post", ("400", "413", "422")),
        ("/v1/recommendations/{request_id}/explanation", "get", ("404",)),
        ("/v1/admin/rollback", "post", ("401", "409")),
    ):
        responses = spec["paths"][path][method]["responses"]
        for code in codes:
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody"), (path, code, ref)
    assert "security" not in spec["paths"]["/v1/recommendations"]["post"]  # reads are open by default
    assert {"error", "detail"} <= set(spec["components"]["schemas"]["ErrorBody"]["properties"])


def test_explanations_are_warmed_after_load(app_client, caplog: pytest.LogCaptureFixture) -> None:
    from serving.logs import EVENT_LOGGER

    _, rec = app_client
    with caplog.at_level(logging.INFO, logger=EVENT_LOGGER):
        rec.start_explainer_warmup().join(600)
    warm = [r for r in caplog.records if r.getMessage() == "explainer_warm"]
    assert warm and warm[0].fields["version"] == "v0001" and warm[0].fields["seconds"] > 0


def test_history_objects_are_accepted_documented_and_bad_ones_rejected(app_client) -> None:
    client, rec = app_client
    items = rec.champion.item_ids[:3].tolist()
    history = [
        items[0],
        {"item_id": items[1], "event_type": "click", "timestamp": "2026-01-05T10:00:00Z"},
        {"item_id": items[2], "event_type": "add_to_cart", "timestamp": "2026-01-05T10:02:00"},
    ]
    r = client.post("/v1/recommendations", json={"user_id": "http-newcomer", "k": 5, "history": history})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 5 and r.json()["cold_start"] is False  # a history: not a cold start
    for bad, field in (
        ({"item_id": items[0], "event_type": "impression"}, "event_type"),
        ({"item_id": items[0], "timestamp": "yesterday-ish"}, "timestamp"),
        ({"event_type": "view"}, "item_id"),
        ({"item_id": items[0], "rating": 5}, "rating"),
        (17, None),
    ):
        r = client.post("/v1/recommendations", json={"user_id": "http-newcomer", "history": [items[0], bad]})
        assert r.status_code == 422, (bad, r.text)
        detail = r.json()["detail"]
        assert any(d["loc"][:3] == ["body", "history", 1] for d in detail), detail
        if field is not None:
            assert any(field in map(str, d["loc"]) for d in detail), detail
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"item_id", "event_type", "timestamp"} <= set(schema["HistoryEvent"]["properties"])
    assert "HistoryEvent" in str(schema["RecommendationRequest"]["properties"]["history"])


def test_auth_on_write_and_admin_endpoints(app_client) -> None:
    client, _ = app_client
    ev = {"events": [{"event_type": "click", "item_id": "i000001", "user_id": "u1"}]}
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = client.post("/v1/feedback", json=ev, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert client.post("/v1/admin/reload", headers=headers).status_code == 401
        assert client.post("/v1/admin/rollback", headers=headers).status_code == 401
    assert client.post("/v1/feedback", json=ev, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    r = client.post("/v1/admin/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["outcome"] == "unchanged"


def test_no_key_configured_means_writes_are_refused(
    store_root: Path, app_client, caplog: pytest.LogCaptureFixture
) -> None:
    from serving.app import create_app

    _, rec = app_client
    os.environ.pop("RECFLOW_API_KEY", None)
    with caplog.at_level(logging.WARNING, logger="recflow.serving"):
        app = create_app(rec, watch=False)
    warned = [r for r in caplog.records if r.getMessage() == "no_api_key"]
    assert warned and "RECFLOW_API_KEY" in warned[0].fields["detail"]
    with TestClient(app) as client:
        r = client.post(
            "/v1/feedback", json={"events": [{"event_type": "click", "item_id": "i", "user_id": "u"}]}
        )
        assert r.status_code == 401 and "RECFLOW_API_KEY" in r.json()["detail"]


def test_reads_can_require_the_key(store_root: Path, app_client) -> None:
    from serving.app import create_app

    _, rec = app_client
    rec.config = rec.config.model_copy(update={"require_key_for_reads": True})
    try:
        with TestClient(create_app(rec, api_key=KEY, watch=False)) as client:
            assert client.post("/v1/recommendations", json={"user_id": "u1"}).status_code == 401
            assert client.post("/v1/recommendations", json={"user_id": "u1"}, headers=AUTH).status_code == 200
    finally:
        rec.config = rec.config.model_copy(update={"require_key_for_reads": False})


@pytest.mark.parametrize(
    "body, status",
    [
        ({"user_id": "u1", "k": 0}, 422),
        ({"user_id": "u1", "k": 101}, 422),
        ({"user_id": ""}, 422),
        ({"user_id": "u1", "context": {"hour": 24}}, 422),
        ({"user_id": "u1", "context": {"device": "x" * 40}}, 422),
        ({"user_id": "u1", "surprise": 1}, 422),
        ({"k": 3}, 422),
        ("not json", 422),
        ({"user_id": "u1", "exclude": ["x"] * 1500}, 413),  # over max_body_bytes before it is even parsed
    ],
)
def test_malformed_requests_get_a_4xx_json_error(app_client, body, status) -> None:
    client, _ = app_client
    if isinstance(body, str):
        r = client.post("/v1/recommendations", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/recommendations", json=body)
    assert r.status_code == status and "error" in r.json()


def test_bad_feedback_is_rejected_whole(app_client) -> None:
    client, rec = app_client
    before = rec.feedback_events
    r = client.post(
        "/v1/feedback",
        headers=AUTH,
        json={
            "events": [
                {"event_type": "click", "item_id": "i1", "user_id": "u1"},
                {"event_type": "click", "item_id": "i1", "request_id": "never-served"},
            ]
        },
    )
    assert r.status_code == 400 and "events[1]" in r.json()["detail"]
    assert rec.feedback_events == before
    r = client.post(
        "/v1/feedback",
        headers=AUTH,
        json={
            "events": [
                {"event_type": "click", "item_id": "i1", "user_id": "u1", "timestamp": "yesterday-ish"}
            ]
        },
    )
    assert r.status_code == 400 and "timestamp" in r.json()["detail"]


def test_schemathesis_fuzzing_finds_no_server_error(app_client) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    client, _ = app_client
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            response = case.call(headers=AUTH)
            if response.status_code >= 500:
                failures.append((case.method, case.path, response.status_code, response.text[:200]))
            if response.status_code >= 400:
                assert "error" in response.json()

        fuzz()
    assert not failures


def test_serve_refuses_a_taken_port_before_loading_the_model(store_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "recflow", "serve", "--models", str(store_root), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
    assert "loading the champion" not in out.stderr + out.stdout  # refused before any model work
    assert time.monotonic() - started < 120


NOISE = ("cudart_stub", "cuInit", "SyntaxWarning", "Gym has been unmaintained", "Traceback")


@pytest.mark.slow
def test_serve_starts_quietly_warns_without_a_key_and_logs_json(store_root: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RECFLOW_API_KEY"}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recflow", "serve", "--models", str(store_root), "--port", str(port),
             "--feedback-dir", str(tmp_path / "fb")],
            env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", proc, 300, log_path)
        rid = httpx.post(f"{base}/v1/recommendations", json={"user_id": "u000004"}).json()["request_id"]
        deadline = time.time() + 300
        while '"explainer_warm"' not in log_path.read_text() and time.time() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log_path.read_text()
    assert not [n for n in NOISE if n in text], text[-3000:]
    assert "RECFLOW_API_KEY is not set" in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    for name in ("no_api_key", "model_loaded", "startup", "request", "explainer_warm", "shutdown"):
        assert name in names, (name, names)
    request = next(e for e in events if e["event"] == "request" and e.get("request_id") == rid)
    assert request["user_id"] == "u000004" and request["status"] == 200 and request["model_version"] == "v0001"


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_acknowledged_feedback(store_root: Path, tmp_path: Path) -> None:
    port = free_port()
    fb = tmp_path / "feedback"
    env = {**os.environ, "RECFLOW_API_KEY": KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recflow",
            "serve",
            "--models",
            str(store_root),
            "--port",
            str(port),
            "--feedback-dir",
            str(fb),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),  # one log line per request: a pipe nobody reads would fill
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # a loaded shared machine takes minutes to import TensorFlow
        wait_for_http(f"{base}/readyz", proc, 600, tmp_path / "serve.log")
        acked: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def sender(w: int) -> None:
            with httpx.Client(base_url=base, headers=AUTH, timeout=5) as c:
                i = 0
                while not stop.is_set():
                    ids = [f"w{w}-{i}-{j}" for j in range(3)]
                    events = [
                        {"event_id": e, "event_type": "click", "item_id": "i000001", "user_id": f"u{w}"}
                        for e in ids
                    ]
                    try:
                        r = c.post("/v1/feedback", json={"events": events})
                    except httpx.HTTPError:
                        return  # the server died mid-request: this batch was never acknowledged
                    if r.status_code == 200:
                        with lock:
                            acked.extend(ids)
                    i += 1

        threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 300:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    logged = set(read_feedback(fb)["event_id"])
    assert len(acked) >= 300
    missing = [e for e in acked if e not in logged]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"


@pytest.mark.slow
def test_two_workers_share_slates_arrays_and_metrics_and_roll_onto_a_new_champion(tmp_path: Path) -> None:
    from test_serving import bundle_parts, push

    root = tmp_path / "store"
    store = ModelStore(root)
    parts = bundle_parts()
    push(store, parts)
    port = free_port()
    fb = tmp_path / "fb"
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "RECFLOW_API_KEY": KEY}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recflow", "--set", "serving.watch_interval_s=1", "serve", "--models", str(root),
             "--port", str(port), "--feedback-dir", str(fb), "--workers", "2"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def events() -> list[dict]:
        return [json.loads(x) for x in log_path.read_text(errors="replace").splitlines() if x.startswith("{")]

    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                with httpx.Client(base_url=base, timeout=30) as c:  # a new connection each time: any worker
                    r = c.post("/v1/recommendations", json={"user_id": "u000005", "k": 3})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    versions.append(r.json()["model_version"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            time.sleep(0.02)

    try:
        deadline = time.time() + 600
        while sum(e["event"] == "worker_ready" for e in events()) < 2:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "workers did not start"
            time.sleep(0.5)
        served = []
        for i in range(40):
            with httpx.Client(base_url=base, timeout=30) as c:
                served.append(c.post("/v1/recommendations", json={"user_id": f"u{i:06d}", "k": 3}).json())
        deadline = time.time() + 30  # access lines are written in batches, at most 0.1 s after the request
        while True:
            worker_of = {e["request_id"]: e["pid"] for e in events() if e["event"] == "request" and "request_id" in e}
            if all(s["request_id"] in worker_of for s in served) or time.time() > deadline:
                break
            time.sleep(0.1)
        assert len({worker_of[s["request_id"]] for s in served}) == 2, "the kernel gave every request to one worker"
        for s in served:  # each click is posted on a fresh connection: often not the worker that served it
            with httpx.Client(base_url=base, timeout=30, headers=AUTH) as c:
                ev = {"event_type": "click", "item_id": s["items"][0]["item_id"], "request_id": s["request_id"]}
                assert c.post("/v1/feedback", json={"events": [ev]}).status_code == 200
        logged = read_feedback(fb)
        assert len(logged) == 40 and logged["propensity"].notna().all()  # every click credited to its slate
        segments = sorted(p.name for p in fb.iterdir())
        assert len(segments) >= 2 and all(n.count("-w") == 1 for n in segments), segments
        for _ in range(4):  # whichever worker answers, the counters are the service's
            text = httpx.get(f"{base}/metrics").text
            assert _metric(text, "recflow_feedback_events_total", variant="champion", event_type="click") == 40
        out = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
        pids = sorted({e["pid"] for e in events() if e["event"] == "worker_ready"})
        maps = [set(line.split()[-1] for line in Path(f"/proc/{p}/maps").read_text().splitlines()
                    if "recflow-arrays" in line) for p in pids]
        assert maps[0] and maps[0] == maps[1], maps  # one copy of the arrays, mapped by both workers
        # a new champion is rolled in while requests keep coming; none fails
        thread = threading.Thread(target=load)
        thread.start()
        push(store, parts)
        deadline = time.time() + 900
        while not any(e["event"] == "swap" for e in events()):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "no swap:\n" + log_path.read_text()[-3000:]
            time.sleep(1.0)
        time.sleep(2.0)
        stop.set()
        thread.join(60)
        assert not failures, failures[:5]
        assert versions[-1] == "v0002" and "v0001" in versions
        swap = next(e for e in events() if e["event"] == "swap")
        assert swap["version"] == "v0002" and swap["previous"] == "v0001" and swap["rolled"] == 2
        drained = sorted(e["pid"] for e in events() if e["event"] == "draining")
        assert drained == pids and all(e["listeners_closed"] >= 1 for e in events() if e["event"] == "draining")
    finally:
        stop.set()
        stop_process = proc.poll() is None
        if stop_process:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
    assert any(e["event"] == "shutdown" for e in events())
