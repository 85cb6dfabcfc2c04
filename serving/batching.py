"""Micro-batching of request computations, off the event loop.

The HTTP handlers run on one asyncio event loop per worker process; a recommendation is milliseconds of numpy and
Python. Computed on the loop, it blocks the loop from reading and answering other connections; handed to a thread
pool one by one, every request pays a thread hop and the pool's threads fight over the GIL. A
:class:`MicroBatcher` has one computing thread: a request queues its call and awaits a future; the thread takes
the first queued call, gathers the calls that arrived meanwhile (those that queued while the previous batch was
computing; at most ``max_batch``, waiting at most ``max_wait_s`` for more), computes them in arrival order and
hands each result (or exception) back to the loop.

The calls of a batch run one after another, each exactly as it would alone (the same function, in the same
order as the requests arrived), so every per-request result -- the exploration draws included, which are seeded
by the request's sequence number -- is identical to unbatched serving. What batching saves is the loop's time
(it only parses, queues and answers) and a thread hop per request (one per batch).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

R = TypeVar("R")

_STOP = object()


class MicroBatcher(Generic[R]):
    """Computes queued calls on one thread in batches (see the module docstring)."""

    def __init__(self, max_batch: int = 32, max_wait_s: float = 0.0, name: str = "micro-batcher") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be at least 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self.max_wait_s = max(float(max_wait_s), 0.0)
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0  #: batches computed
        self.calls = 0  #: calls computed
        self.largest = 0  #: the largest batch so far

    def start(self) -> None:
        """Start the computing thread (idempotent; :meth:`submit` starts it too)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Compute what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    async def submit(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """``fn(*args, **kwargs)`` computed on the batcher's thread; its result or exception, awaited."""
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((fn, args, kwargs, future, loop))
        return await future

    def _gather(self, first: Any) -> tuple[list[Any], bool]:
        """The batch that starts with ``first``; True when the stop marker was met."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._gather(first)
            self.batches += 1
            self.calls += len(batch)
            self.largest = max(self.largest, len(batch))
            for fn, args, kwargs, future, loop in batch:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request, which raises it
                    loop.call_soon_threadsafe(_settle, future, None, exc)
                else:
                    loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():  # the client went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
