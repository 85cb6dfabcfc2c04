"""Requests that keep flowing through an in-process Recommender while a test switches its models (hot swap,
rollback, canary start and end): tests/ is on sys.path, so ``from background_requests import ...``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BackgroundRequests:
    """What the threads of :func:`recommending_in_background` saw."""

    served: list[str] = field(default_factory=list)  # the model version of each answered request
    failures: list[BaseException] = field(default_factory=list)


@contextlib.contextmanager
def recommending_in_background(rec: Any, threads: int = 2) -> Iterator[BackgroundRequests]:
    """``threads`` threads call ``rec.recommend`` (users ``u000000`` to ``u000299`` in turn, ``k=5``) until the
    block ends, then are joined. An exception is recorded in ``failures``, not raised: a failure during a model
    switch is the bug the caller tests for."""
    seen = BackgroundRequests()
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                seen.served.append(rec.recommend(f"u{i % 300:06d}", k=5).model_version)
            except BaseException as exc:  # noqa: BLE001 - recorded for the caller's assertion
                seen.failures.append(exc)
            i += 1

    workers = [threading.Thread(target=load) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        for t in workers:
            t.join()
