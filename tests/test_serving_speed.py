"""Serving speed and swaps (issue 15): what keeps the request thread free -- buffered log writes, request ids
without a system call each, cold-start queries computed at load, the slate's plain dict -- and what keeps a
swap off the serving workers (a lower-priority loader thread, a drain before a worker is retired)."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from dataclasses import asdict

import numpy as np
import pytest

from pipelines.sample_bundle import bundle_parts, push
from recflow.model_store import ModelStore
from serving.config import ServingConfig


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory):
    from serving.recommender import Recommender

    root = tmp_path_factory.mktemp("store")
    push(ModelStore(root), bundle_parts())
    r = Recommender.load(root, ServingConfig(warm_explanations=False))
    yield r
    r.close()


def test_buffered_log_lines_keep_their_order_and_are_written_by_the_background_thread() -> None:
    from serving.logs import ACCESS_LOGGER, BufferedLineHandler, JsonFormatter, log_event

    stream = io.StringIO()
    # A long interval first: the writer sleeps, so whatever is written while it sleeps would have been written by
    # the logging thread (no timing assumption about how fast 200 lines are logged on a loaded machine).
    handler = BufferedLineHandler(stream, interval_s=60.0)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(ACCESS_LOGGER), logging.getLogger("recflow.serving")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        writes: list[str] = []
        original = stream.write

        def write(text: str) -> int:
            writes.append(threading.current_thread().name)
            return original(text)

        def wait_for(text: str) -> None:
            deadline = time.monotonic() + 10
            while text not in stream.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)

        stream.write = write  # type: ignore[method-assign]
        for n in range(200):
            log_event("request", logging.INFO, ACCESS_LOGGER, n=n)
        assert stream.getvalue() == ""  # access lines wait for the writer; nothing written by the logging thread
        handler.interval_s = 0.05
        log_event("swap", version="v9")  # not an access line: wakes the writer at once, whatever the interval
        wait_for('"swap"')
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert [x.get("n") for x in lines[:200]] == list(range(200))  # every line, in order
        assert lines[200]["event"] == "swap" and len(lines) == 201
        assert writes == ["log-writer"]  # one batched write, off the logging thread
        log_event("request", logging.INFO, ACCESS_LOGGER, n=200)  # written by the writer within its interval
        wait_for('"n":200')
        assert json.loads(stream.getvalue().splitlines()[-1])["n"] == 200
        assert set(writes) == {"log-writer"}
        log_event("request", logging.INFO, ACCESS_LOGGER, n=201)
        handler.flush()  # what shutdown calls: pending lines now
        assert json.loads(stream.getvalue().splitlines()[-1])["n"] == 201
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


def test_request_ids_are_random_unique_hex_and_slates_convert_as_asdict(rec) -> None:
    ids = [rec._next_request_id()[0] for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:8] for i in ids}) > 900  # random throughout, not a counter
    out = rec.recommend("u000001", {"hour": 9, "device": "mobile"}, k=5)
    assert out.to_dict() == asdict(out)
    assert json.dumps(out.to_dict()) == json.dumps(asdict(out))  # same keys, same order


def test_cold_start_queries_are_computed_at_load_and_equal_the_query_tower(rec, monkeypatch) -> None:
    from serving.bundle import ServingBundle

    b = rec.champion
    if "query_embedding" not in b.retrieval.signatures:
        pytest.skip("this bundle's retrieval model has no query tower")
    assert len(b._cold_queries) >= 24 * 7  # every hour and weekday of the known devices and regions
    device = str(b.default_context.get("device") or "")
    region = str(b.default_context.get("region") or "")
    for hour, weekday in ((0, 0), (8, 3), (23, 6)):
        one = b._query_tower([(hour, weekday, device, region)])[0]  # a call of its own, as before
        np.testing.assert_allclose(b.cold_query(hour, weekday, device, region), one, atol=1e-5, rtol=0)

    def refuse(*args, **kwargs):
        raise AssertionError("a cold start called TensorFlow on the request path")

    monkeypatch.setattr(ServingBundle, "_query_tower", refuse)
    for hour in range(0, 24, 5):
        out = rec.recommend(f"cold-speed-{hour}", {"hour": hour, "weekday": 2}, k=4)
        assert out.cold_start and len(out.items) == 4
    monkeypatch.undo()
    unknown = b.cold_query(5, 1, "smart-fridge", region)  # a context no one logged: one call, then cached
    assert unknown.shape == one.shape and np.isfinite(unknown).all()


def test_the_loader_thread_runs_at_lower_priority_and_passes_errors_on() -> None:
    from serving.workers import load_at_low_priority

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: dict[str, int] = {}

    def load() -> str:
        seen["loader"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["caller"] = os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id or 0)
        return "loaded"

    assert load_at_low_priority(load, 7) == "loaded"
    assert seen["loader"] == min(before + 7, 19) and seen["caller"] == before
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the caller keeps its own

    def broken() -> None:
        raise ValueError("bundle v9 is broken")

    with pytest.raises(ValueError, match="v9 is broken"):
        load_at_low_priority(broken, 7)


def test_a_draining_worker_asks_clients_to_close_their_connections(rec) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    app = create_app(rec, api_key="k", watch=False, warm_explanations=False)
    with TestClient(app) as client:
        first = client.post("/v1/recommendations", json={"user_id": "u000002", "k": 2})
        assert first.status_code == 200 and first.headers.get("connection") != "close"
        app.state.drain.on = True  # what SIGUSR1 sets in a worker about to be retired
        second = client.post("/v1/recommendations", json={"user_id": "u000002", "k": 2})
        assert second.status_code == 200 and second.headers.get("connection") == "close"
        assert client.get("/healthz").headers.get("connection") == "close"


def test_serving_processes_set_a_short_switch_interval() -> None:
    import sys

    from serving.recommender import limit_threads

    before = sys.getswitchinterval()
    try:
        limit_threads(ServingConfig(switch_interval_ms=0.5))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_the_heap_is_frozen_after_load_and_a_swap_unfreezes_it() -> None:
    import gc

    from serving.workers import freeze_heap

    try:
        freeze_heap()
        assert gc.get_freeze_count() > 10_000  # what was loaded is out of the collector's reach
        started = time.perf_counter()
        gc.collect()
        assert time.perf_counter() - started < 5.0
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
