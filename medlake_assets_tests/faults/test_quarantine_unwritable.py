"""Fault: a permission error writing to quarantine."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from medlake_assets_tests.faults.harness import (
    assert_equals_clean_run,
    assert_quarantined_originals_kept,
    ledger_statuses,
    log_tail,
    run_ingest,
)


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """Make `folder` refuse new entries for real: the immutable attribute as root (root ignores mode bits;
    `chattr +i` makes even root get EPERM), mode 0555 otherwise (EACCES)."""
    as_root = os.geteuid() == 0
    if as_root:
        assert shutil.which("chattr"), "as root only `chattr +i` (e2fsprogs) makes a folder unwritable"
        lock, unlock = ["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]
        locked = subprocess.run(lock, capture_output=True, text=True)
        assert locked.returncode == 0, f"chattr +i failed here: {locked.stderr.strip()}"
    else:
        folder.chmod(0o555)
    try:
        probe = folder / "probe"
        with pytest.raises(PermissionError):
            probe.mkdir()
        yield
    finally:
        if as_root:
            subprocess.run(unlock, check=True)
        else:
            folder.chmod(0o755)


@pytest.mark.e2e
@pytest.mark.faults
def test_quarantine_folder_unwritable_then_fixed_equals_clean_run(
    tmp_path, make_lake, fault_feeds, clean_run
):
    """Killed: write access to the quarantine location (a permission error on the volume: the folder made
    immutable, so creating anything in it fails with EPERM even for root; it stands for a read-only or
    full quarantine volume or a revoked write permission). Landing stays readable, the catalog and ledger
    stay on PostgreSQL. The runs that must keep a quarantined original fail clearly, naming the path; no
    archive is marked quarantined without its copy, the batches stay pending, and once write access is
    back the next `ingest --once` makes the lake equal a clean run."""
    store_root = tmp_path / "store"  # a local folder: the one store where a permission error is real here
    faulted = make_lake("quarantine-unwritable", store_url=store_root.as_uri())
    lake = faulted.lake()
    fault_feeds.land(lake.store)
    quarantine = store_root / "quarantine"
    quarantine.mkdir()

    with unwritable(quarantine):
        assert run_ingest(faulted.env, faulted.log) == 1
        log = log_tail(faulted.log, 200_000)
        assert "Operation not permitted" in log or "Permission denied" in log
        assert str(quarantine) in log
        # Nothing is recorded as quarantined without its copy, and what could not be kept is still pending.
        assert_quarantined_originals_kept(lake)
        assert ledger_statuses(faulted.ledger_url)["pending"] > 0

    assert run_ingest(faulted.env, faulted.log) == 0, log_tail(faulted.log)
    assert_equals_clean_run(lake, clean_run)
