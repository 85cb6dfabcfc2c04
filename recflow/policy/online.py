"""recflow's online learner: a LinUCB-style correction of the exported policy, learned from feedback.

The trained policy (any agent of :mod:`recflow.policy.agents`) stays as exported; what is learned online is a
per-arm linear model on the policy's features ``x = [global, arm]`` (the policy's feature layout, see
:mod:`recflow.policy.logged_data`): ridge regression of the residual
``reward - policy score`` with ``A = lambda I + sum x x^T`` and ``b = sum (reward - score) x``. The served
score of a candidate is ``policy score + w * theta^T x + alpha * sqrt(x^T A^-1 x)`` with
``theta = A^-1 b``: at start (no feedback) it is the exported policy plus a uniform bonus; as feedback
arrives it corrects the policy where it is wrong and explores where it is unsure.

Updates are split so no request ever waits for learning: an impression adds ``x x^T`` to ``A`` and
``-score * x`` to ``b``; each later click/cart/purchase on the same shown item adds ``reward * x`` to ``b``
(the sums equal the batch ridge regression once all feedback is in). A learner thread drains a queue and
publishes an immutable snapshot ``(theta, A^-1)`` every ``publish_every`` decisions; the request path reads
the current snapshot reference, which is atomic in CPython.

With ``forgetting`` < 1 every impression first multiplies ``A - lambda I`` and ``b`` by it: an exponential
window over decisions, so the correction follows a drift of the users' preferences.

Serving (:mod:`serving.recommender`, ``serving.online_learning``) keeps one per served variant; the policy
benchmark's drift scenario (benchmarks/policy) uses the same class on its bandit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearSnapshot:
    """What the request path reads: the residual weights and the inverse design matrix."""

    theta: np.ndarray
    a_inv: np.ndarray
    decisions: int


class OnlineLinUCB:
    """Residual LinUCB over feature vectors of dimension ``dim`` (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        ridge: float = 1.0,
        alpha: float = 0.05,
        weight: float = 1.0,
        publish_every: int = 50,
        reward_weights: Mapping[str, float] | None = None,
        forgetting: float = 1.0,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting: must be in (0, 1], got {forgetting}")
        self.dim = dim
        self.ridge = ridge
        self.forgetting = forgetting
        self.alpha = alpha
        self.weight = weight
        self.publish_every = publish_every
        self.reward_weights = dict(reward_weights or {"click": 1.0, "add_to_cart": 2.0, "purchase": 5.0})
        self._a = ridge * np.eye(dim)
        self._b = np.zeros(dim)
        self._since_publish = 0
        self.decisions = 0
        self.rewards = 0
        self.snapshot = LinearSnapshot(np.zeros(dim), np.eye(dim) / ridge, 0)
        self._queue: queue.Queue[tuple[str, np.ndarray, float] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._barriers: dict[int, threading.Event] = {}
        self.processed = 0

    # ------------------------------------------------------------------ request path (read only)
    def adjust(self, features: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Scores ``base`` corrected by the current snapshot for candidate features ``[n, dim]``."""
        snap = self.snapshot
        bonus = np.sqrt(np.maximum(((features @ snap.a_inv) * features).sum(axis=1), 0.0))
        return base + self.weight * (features @ snap.theta) + self.alpha * bonus

    # ------------------------------------------------------------------ learning
    def learn(self, kind: str, features: np.ndarray, base_score: float) -> None:
        """Apply one feedback event for a shown item (``kind``: impression or a rewarded event type)."""
        x = np.asarray(features, dtype=np.float64)
        if kind == "impression":
            if self.forgetting < 1.0:  # the prior ridge term stays; the data's weight decays
                self._a = self.ridge * np.eye(self.dim) + self.forgetting * (self._a - self.ridge * np.eye(self.dim))
                self._b *= self.forgetting
            self._a += np.outer(x, x)
            self._b -= base_score * x
            self.decisions += 1
            self._since_publish += 1
        elif kind in self.reward_weights:
            self._b += self.reward_weights[kind] * x
            self.rewards += 1
        else:
            return
        if self._since_publish >= self.publish_every:
            self.publish()

    def publish(self) -> None:
        """Recompute ``A^-1`` and ``theta`` and swap in the new snapshot."""
        a_inv = np.linalg.inv(self._a)
        self.snapshot = LinearSnapshot(a_inv @ self._b, a_inv, self.decisions)
        self._since_publish = 0

    # ------------------------------------------------------------------ background thread
    def submit(self, kind: str, features: np.ndarray, base_score: float) -> None:
        """Queue one feedback event for the learner thread (never blocks the caller)."""
        self._queue.put((kind, features, base_score))

    @property
    def lag(self) -> int:
        """Feedback events queued but not learned yet."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the learner thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="online-linucb", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Learn what is queued, publish, and stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def drain(self, timeout: float = 10.0) -> None:
        """Block until everything queued so far has been learned and published (for tests and shutdown)."""
        done = threading.Event()
        self._queue.put(("__barrier__", np.zeros(0), float(id(done))))
        self._barriers[id(done)] = done
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                if self._since_publish:
                    self.publish()
                return
            kind, x, base = item
            if kind == "__barrier__":
                self.publish()
                event = self._barriers.pop(int(base), None)
                if event is not None:
                    event.set()
                continue
            self.learn(kind, x, base)
            self.processed += 1
