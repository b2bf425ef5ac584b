"""A `medlake ingest --once` process killed with SIGKILL mid-way, then re-run, equals a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets_tests.defs.test_ingest import assert_lake_matches_manifest
from medlake_assets_tests.faults.harness import files_done, table_contents
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake
from medlake_dev.generate import write_feeds

GENERATION = {"facilities": 4, "archives": 48, "seed": 5, "bad_rate": 0.1, "day": DAY, "size_scale": 0.05}


def loaded_files(home) -> int:
    return files_done(f"sqlite:///{home / 'catalog.db'}")


@pytest.mark.e2e
@pytest.mark.faults
def test_sigkill_mid_ingest_then_rerun_equals_clean_run(tmp_path, archive_password):
    sources_dir = tmp_path / "sources"
    import shutil

    from medlake_assets_tests.conftest import SOURCES_DIR

    shutil.copytree(SOURCES_DIR, sources_dir)
    defaults = sources_dir / "_defaults.yaml"
    defaults.write_text(defaults.read_text().replace("max_archives_per_run: 500", "max_archives_per_run: 4"))

    killed_home, clean_home = tmp_path / "killed", tmp_path / "clean"
    manifest = write_feeds(killed_home, **GENERATION)
    assert write_feeds(clean_home, **GENERATION) == manifest
    total = sum(counts["archives"] for counts in manifest["sources"].values())
    env = {
        **os.environ,
        "MEDLAKE_HOME": str(killed_home),
        "DAGSTER_HOME": str(killed_home / "dagster"),
        "MEDLAKE_SOURCES_DIR": str(sources_dir),
    }
    command = [sys.executable, "-m", "medlake_assets.cli", "ingest", "--once"]
    log = tmp_path / "ingest.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while loaded_files(killed_home) < total // 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, f"ingest finished before it could be killed:\n{log.read_text()[-4000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < loaded_files(killed_home) < total

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode in (0, 1), rerun.stderr[-2000:]

    clean_settings = local_settings(clean_home, MEDLAKE_SOURCES_DIR=str(sources_dir))
    clean = open_lake(clean_settings)
    with dg.instance_for_test() as instance:
        ingest_once(build_definitions(clean_settings), instance, clean)
    killed = open_lake(local_settings(killed_home, MEDLAKE_SOURCES_DIR=str(sources_dir)))
    assert_lake_matches_manifest(killed, manifest)
    for source in manifest["sources"]:
        # Same records, same values, as many times; only run-specific lineage (_ingested_at, _batch) differs.
        assert table_contents(killed, f"bronze.{source}") == table_contents(clean, f"bronze.{source}"), source
