"""The HTTP service: every endpoint, auth, limits, JSON errors, metrics, schemathesis fuzzing, and the SIGKILL
durability of the feedback log against a real ``recflow serve`` process."""

from __future__ import annotations

import os
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
    assert 'recflow_model_version_info{variant="champion",version="v0001"} 1.0' in metrics
    assert "recflow_ctr_5m" in metrics and "recflow_feedback_learner_lag_events" in metrics
    assert "/v1/feedback" in client.get("/openapi.json").json()["paths"]


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


def test_no_key_configured_means_writes_are_refused(store_root: Path, app_client) -> None:
    from serving.app import create_app

    _, rec = app_client
    os.environ.pop("RECFLOW_API_KEY", None)
    with TestClient(create_app(rec, watch=False)) as client:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_acknowledged_feedback(store_root: Path, tmp_path: Path) -> None:
    port = _free_port()
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
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "server did not become ready"
            time.sleep(0.5)
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
