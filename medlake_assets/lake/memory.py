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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# The allocators read these once, when the process first loads Polars or PyArrow, so the process must be
# started with them (the run workers' environment and the Docker image set them).
# - Polars' jemalloc gives freed pages back within a quarter second rather than 10 s, by background
#   threads. Not at once (decay 0): that gave back and faulted in again the pages of every transient frame,
#   and made runs 15% slower (sys time was a third of silver lab_results' CPU) for 20 MB less at the run's
#   peak (docs/benchmarks.md).
# - Arrow allocates from its own jemalloc, set the same way, instead of its default mimalloc, which kept
#   the pages that pyiceberg's reader threads had used: in the run of every source's largest batch the
#   silver steps peaked 210-270 MB lower (silver lab_results 1,118 -> 876-889 MB), for 4-5% more wall
#   time (docs/benchmarks.md, "Both allocators set"). Without its decay settings, Arrow's jemalloc kept
#   up to 390 MB more after a step than mimalloc.
_JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0"
ALLOCATOR_ENV = {
    "_RJEM_MALLOC_CONF": _JEMALLOC_CONF,
    "ARROW_DEFAULT_MEMORY_POOL": "jemalloc",
    "JE_ARROW_MALLOC_CONF": _JEMALLOC_CONF,
}
_POLARS_JEMALLOC_DEFAULTS = "dirty_decay_ms:500,muzzy_decay_ms:1000"


def allocator_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`ALLOCATOR_ENV` for a run process started from `env`, an operator's own setting of a variable kept.

    Importing Polars writes its defaults in front of `_RJEM_MALLOC_CONF` in `os.environ` (polars/__init__.py),
    so in a process that has imported Polars the variable is set though no operator set it; passed on as
    it is, it kept run workers on Polars' defaults. Only what follows those defaults is the operator's."""
    chosen = {}
    for name, value in ALLOCATOR_ENV.items():
        own = env.get(name, "")
        if name == "_RJEM_MALLOC_CONF":
            own = own.removeprefix(_POLARS_JEMALLOC_DEFAULTS).lstrip(",")
        chosen[name] = own or value
    return chosen


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, looked up once (`find_library` runs `ldconfig`); None on musl or macOS."""
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


@functools.cache
def _freeze_what_the_process_keeps() -> None:
    """Once per process, after the first step's collection: what survived it is what a run keeps to its
    end (modules, the job's definitions, the instance; about 350,000 objects). A full collection walks them
    all, 0.2-0.3 s, ten times a run; frozen, the next releases walk only what later steps made. Cyclic
    garbage among the frozen objects waits for the process's exit, which ends a run worker anyway."""
    gc.freeze()


@dataclass(frozen=True)
class StepMemory:
    """A step's memory as the operating system saw its process: the peak resident set since the previous
    step's release (Linux's high-water mark, reset then), and what stayed after this release."""

    peak_mb: int
    after_mb: int

    def describe(self, step: str) -> str:
        return f"step {step}: peak RSS {self.peak_mb} MB, {self.after_mb} MB after release"

    @classmethod
    def parse(cls, message: str) -> tuple[str, StepMemory] | None:
        """The step and its memory from a `describe` line (the run's log), or None for any other line."""
        found = _DESCRIBED.search(message)
        if found is None:
            return None
        return found["step"], cls(int(found["peak"]), int(found["after"]))


_DESCRIBED = re.compile(r"step (?P<step>\S+): peak RSS (?P<peak>\d+) MB, (?P<after>\d+) MB after release")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(status: str, field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(found[1]) // 1024 if found else 0


def release_memory() -> StepMemory | None:
    """Free unreachable Python objects, then have Arrow's and the C library's allocators return what they
    hold unused to the operating system. Returns the step's memory on Linux (None elsewhere), and starts
    the next step's peak from what is left."""
    import pyarrow as pa

    gc.collect()
    _freeze_what_the_process_keeps()
    pa.default_memory_pool().release_unused()
    if trim := _malloc_trim():
        trim(0)
    if not _STATUS.exists():
        return None
    status = _STATUS.read_text()
    memory = StepMemory(peak_mb=_status_mb(status, "VmHWM"), after_mb=_status_mb(status, "VmRSS"))
    try:
        # Writing 5 resets the process's peak resident set (VmHWM) to its current size (Linux 4.0 and later).
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None  # a sandbox that refuses it: the next peak would be the process's, not the step's
    return memory
