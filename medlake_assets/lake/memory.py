"""Giving memory back to the operating system between the steps of a run.

Every job runs its steps one after another in the run's process (`defs/policies.py: EXECUTOR`). Without
this, each step's peak stays in the process for the next one: Polars' jemalloc keeps freed pages in the
arena of the thread that freed them, Arrow's mimalloc keeps its segments, glibc its heap. A run of the
four sources' largest batches measured 2.4 GB where its largest step alone needed 1.4 GB
(docs/benchmarks.md, "Memory of ingest and silver runs").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable

# Polars' jemalloc reads its options from this variable once, when the process first loads Polars, so the
# process must be started with it (the run workers' environment and the Docker image set it). Decay 0:
# pages are given back as soon as they are freed, rather than after 10 s; background threads do it.
POLARS_ALLOCATOR_ENV = {"_RJEM_MALLOC_CONF": "background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0"}


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, looked up once (`find_library` runs `ldconfig`); None on musl or macOS."""
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def release_memory() -> None:
    """Free unreachable Python objects, then have Arrow's and the C library's allocators return what they
    hold unused to the operating system."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    if trim := _malloc_trim():
        trim(0)
