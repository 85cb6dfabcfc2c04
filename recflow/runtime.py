"""Process-wide runtime settings that the whole stack depends on, applied once.

Two traps of the verified stack (see docs/install.md) are handled here and nowhere else:

* TensorFlow Recommenders and TF-Agents need Keras 2 (``tf_keras``). TensorFlow picks its Keras at first import,
  so ``TF_USE_LEGACY_KERAS=1`` must be in the environment before anything imports TensorFlow. Importing
  :mod:`recflow` sets it; :func:`check_tensorflow_keras` fails loudly if TensorFlow was imported first without it.
* After any tf.Transform / Apache Beam run, protobuf's C extension can segfault while the interpreter tears
  down (exit code 139 after a successful run). Freezing and disabling the garbage collector at the very end of
  the process avoids it; :func:`install_exit_guard` registers that as the first ``atexit`` hook, which makes it
  run last.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

_EXIT_GUARD_INSTALLED = False


def configure_environment() -> None:
    """Set the environment variables the stack needs, unless the user set them explicitly."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    # TensorFlow's C++ INFO/WARNING chatter drowns the progress output users care about.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Beam and Evidently try to phone home for telemetry; recflow runs without network.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")


def check_tensorflow_keras() -> None:
    """Raise a clear error when TensorFlow was imported before recflow could select legacy Keras."""
    if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError(
            "TensorFlow was imported before recflow with TF_USE_LEGACY_KERAS unset; TFRS and TF-Agents need "
            "legacy Keras. Import recflow first, or export TF_USE_LEGACY_KERAS=1."
        )


def _freeze_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.disable()


def install_exit_guard() -> None:
    """Register the garbage-collector freeze that prevents the protobuf teardown crash (idempotent)."""
    global _EXIT_GUARD_INSTALLED
    if not _EXIT_GUARD_INSTALLED:
        atexit.register(_freeze_gc)
        _EXIT_GUARD_INSTALLED = True


def freeze_gc_now() -> None:
    """Apply the teardown remedy immediately (for hooks such as pytest_unconfigure that run at the very end)."""
    _freeze_gc()
