"""Handing freed memory back to the system after the large temporaries of a shop-scale step (issue 17).

The allocators keep what a step freed: Arrow's pool (mimalloc) the buffers of a split read (about 270 MB after
reading the 1M-event eval split of the 10M-event shop), glibc's malloc the baselines' fit temporaries (about
400 MB after the tuning's fits on that shop). The process's RSS then carries them through every later stage.
Neither function changes a result.
"""

from __future__ import annotations


def release_arrow_memory() -> None:
    """Hand the Arrow memory pool's freed blocks back to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def release_freed_memory() -> None:
    """``gc.collect()``, then the Arrow pool's unused blocks (:func:`release_arrow_memory`) and glibc's
    ``malloc_trim(0)`` where the C library has it (Linux): for steps that allocate and free large temporaries
    many times (the baseline tuning fits 24 models)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    release_arrow_memory()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
