"""The model watcher: the store's champion alias polled, new bundles loaded and warmed up off the serving path
and swapped in atomically, rollbacks, and the leases that keep served versions from garbage collection.

A swap loads the new bundle in the watcher's thread (with a short GIL switch interval so request threads keep
running), answers ``warmup_requests`` requests with it (a bundle that fails is rejected and the old one keeps
serving), then replaces the champion variant by one reference assignment: a request sees the old or the new
variants, whole, and in-flight requests finish on the bundle they started with.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recflow.errors import DataError
from serving.bundle import ServingBundle
from serving.config import ServingConfig
from serving.logs import log_event

if TYPE_CHECKING:
    from serving.recommender import Recommender

log = logging.getLogger(__name__)


def local_bundle_path(store: Any, info: Any) -> str:
    """A local directory holding bundle ``info``: its own path in a local store, else a fresh download
    (gs:// and other fsspec stores) into a temporary directory."""
    if store.is_local:
        return str(info.path)
    local = Path(tempfile.mkdtemp(prefix=f"recflow-bundle-{info.version}-"))
    store.fs.get(str(info.path).rstrip("/") + "/", str(local), recursive=True)
    return str(local)


def load_bundle(path: str | Path, version: str, config: ServingConfig, *, share_arrays: bool = False) -> ServingBundle:
    """:meth:`ServingBundle.load` with the serving config's index settings (approximate index and its check);
    ``share_arrays``: memory-map the arrays shared by the service's worker processes. A bundle of kind
    ``baseline`` (the run's best baseline, pushed when its candidate lost) loads as a :class:`BaselineBundle`."""
    from serving.baseline_bundle import BaselineBundle, is_baseline_bundle

    if is_baseline_bundle(path):
        return BaselineBundle.load(path, version)  # type: ignore[return-value]
    return ServingBundle.load(
        path,
        version,
        ann_index=config.ann_index,
        min_index_recall=config.min_index_recall,
        index_check_queries=config.index_check_queries,
        share_arrays=share_arrays,
    )


class ModelWatcher:
    """Swaps, rollbacks and leases of one recommender (see the module docstring)."""

    def __init__(self, rec: Recommender, store: Any) -> None:
        self.rec = rec
        self.store = store
        self.rejected_versions: dict[str, str] = {}
        self.swaps = 0
        self.rollbacks = 0
        self._swap_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ leases
    @property
    def lease_holder(self) -> str:
        """This process's name on the store's leases (see :meth:`recflow.model_store.ModelStore.hold`)."""
        import socket

        return f"serving-{socket.gethostname()}-{os.getpid()}-{id(self.rec):x}"

    def hold_served(self, loading: Sequence[str] = ()) -> None:
        """Lease the versions this process serves (and ``loading``) so the store's garbage collection keeps
        them; a store that cannot be written (read-only) only logs."""
        if self.store is None or not hasattr(self.store, "hold"):
            return
        versions = {v.bundle.version for v in self.rec.variants.values()} | set(loading)
        try:
            self.store.hold(self.lease_holder, sorted(versions))
        except Exception as exc:  # noqa: BLE001 - a lease is a courtesy to the collector; serving goes on
            log.warning("could not lease served versions %s: %s", sorted(versions), exc)

    # ------------------------------------------------------------------ swaps
    def _load_and_warm(self, version: str) -> ServingBundle:
        cfg = self.rec.config
        info = self.store.resolve(version)
        bundle = load_bundle(local_bundle_path(self.store, info), info.version, cfg)
        self.rec.warm_up(bundle)
        if cfg.warm_explanations:
            try:
                self.rec.warm_explanations(bundle)
            except Exception as exc:  # noqa: BLE001 - a slower first explanation is no reason to reject
                log_event("explainer_warm_failed", logging.WARNING, version=bundle.version,
                          reason=f"{type(exc).__name__}: {exc}")
        return bundle

    def check_for_new_champion(self) -> str:
        """One poll of the store's champion alias: ``unchanged``, ``swapped`` or ``rejected``."""
        if self.store is None:
            return "unchanged"
        state = self.store.alias()
        current = self.rec.champion.version
        if state is None or state.version == current or state.version in self.rejected_versions:
            return "unchanged"
        with self._swap_lock:
            import gc

            gc.unfreeze()  # the old bundle's objects may be frozen (serving.workers.freeze_heap): let them go
            # Loading is Python-heavy and holds the GIL for long stretches; a short switch interval hands the
            # GIL back to request threads often, so requests keep flowing while the new bundle loads.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(min(interval, 0.0005))
            self.hold_served(loading=[state.version])  # nobody deletes it while it loads
            try:
                bundle = self._load_and_warm(state.version)
            except Exception as exc:  # noqa: BLE001 - any failure rejects the bundle; the old one keeps serving
                self.rejected_versions[state.version] = f"{type(exc).__name__}: {exc}"
                log_event("swap_rejected", logging.ERROR, version=state.version, serving=current,
                          reason=self.rejected_versions[state.version])
                self.rec.tell("swap_rejected")
                return "rejected"
            finally:
                sys.setswitchinterval(interval)
            previous = self.rec.replace_champion(bundle)
            self.swaps += 1
            self.hold_served()
            log_event("swap", version=bundle.version, previous=previous, variant="champion",
                      items=len(bundle.item_ids))
            self.rec.tell("swap")
            return "swapped"

    def rollback(self) -> str:
        """Move the store's champion alias back to the previous version and swap to it now."""
        if self.store is None:
            raise DataError("this recommender was not loaded from a model store: nothing to roll back to")
        current = self.rec.champion.version
        self.store.rollback()
        outcome = self.check_for_new_champion()
        self.rollbacks += 1
        log_event("rollback", previous=current, version=self.rec.champion.version, outcome=outcome)
        self.rec.tell("rollback")
        return outcome

    # ------------------------------------------------------------------ the thread
    def start(self, interval_s: float, *, swap: bool = True) -> None:
        """Poll the store in a background thread: refresh the leases, step the canary and (``swap``) hot-swap
        new champions. With several workers the parent process swaps (it rolls the workers) and each worker's
        thread only steps its canary (``swap=False``)."""
        if self._thread is not None or self.store is None:
            return

        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.hold_served()  # refresh the lease
                    if self.rec.canary is not None:
                        self.rec.canary.step()
                    if swap:
                        self.check_for_new_champion()
                except Exception:  # noqa: BLE001 - the watcher must survive a flaky store
                    log.exception("model watcher poll failed")

        self._thread = threading.Thread(target=run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and release this process's lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.store is not None and hasattr(self.store, "release"):
            try:
                self.store.release(self.lease_holder)
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself
                log.warning("could not release the serving lease: %s", exc)
