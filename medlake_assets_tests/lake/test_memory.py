"""A step's memory as its release reports it: the peak since the previous release, read from the kernel."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from medlake_assets.lake import memory
from medlake_assets.lake.memory import StepMemory, release_memory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the peak is Linux's VmHWM")


def test_each_release_reports_the_peak_since_the_previous_one() -> None:
    release_memory()
    held = b"\x01" * (300 * 2**20)  # written through: every page is resident
    del held
    step = release_memory()
    quiet = release_memory()
    assert step is not None and quiet is not None
    assert step.peak_mb >= quiet.after_mb + 290  # the freed 300 MB counted in the step that held them
    assert quiet.peak_mb < step.peak_mb - 250  # and not in the next one: its peak started from what was left
    assert quiet.after_mb <= quiet.peak_mb


class _Cycle:
    """A step's leftover that refers to itself: reference counting alone never frees it."""

    def __init__(self) -> None:
        self.myself = self
        self.payload = b"\x01" * (100 * 2**20)


def test_a_steps_cyclic_garbage_is_freed_though_what_the_process_keeps_is_frozen() -> None:
    release_memory()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the modules and what the tests so far hold: later collections skip them
    garbage = _Cycle()
    gone = weakref.ref(garbage)
    del garbage
    assert gone() is not None
    release_memory()
    assert gone() is None  # a later step's garbage is not frozen, so the next release frees it
    assert gc.get_freeze_count() == frozen  # frozen once per process, not the survivors of every step


def test_the_logged_line_reads_back_and_other_lines_do_not() -> None:
    memory = StepMemory(peak_mb=1_234, after_mb=456)
    line = memory.describe("silver__lab_results")
    assert line == "step silver__lab_results: peak RSS 1234 MB, 456 MB after release"
    assert StepMemory.parse(line) == ("silver__lab_results", memory)
    assert StepMemory.parse("silver lab_results: 3 batches") is None


def test_a_sandbox_that_refuses_the_reset_gets_no_figure_rather_than_a_wrong_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "no-such-dir" / "clear_refs")
    assert release_memory() is None


_ALLOCATORS_IN_USE = """
import polars as pl, pyarrow as pa
pl.DataFrame({"a": [1, 2]}).sum()
print(pa.default_memory_pool().backend_name, pa.array([1, 2]).sum())
"""


def _python_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if name not in memory.ALLOCATOR_ENV}
    return subprocess.run(
        [sys.executable, "-c", _ALLOCATORS_IN_USE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )


def test_a_run_process_started_with_the_allocator_settings_uses_them() -> None:
    started = _python_with(memory.ALLOCATOR_ENV)
    assert started.stdout.split() == ["jemalloc", "3"]
    assert started.stderr == ""  # every option is one the allocator knows
    # Each variable is read by the allocator it is meant for: a bad option in it is reported, by name.
    for name in ("_RJEM_MALLOC_CONF", "JE_ARROW_MALLOC_CONF"):
        refused = _python_with({**memory.ALLOCATOR_ENV, name: "no_such_option:1"})
        assert "<jemalloc>: Invalid conf pair: no_such_option:1" in refused.stderr, name
