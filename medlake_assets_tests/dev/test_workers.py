"""`medlake workers`: the instance it writes, the replayer, and N=2 workers end to end on PostgreSQL + S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.lake.memory import ALLOCATOR_ENV
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets.lake.settings import SettingsError
from medlake_assets_tests.defs.test_ingest import GENERATION, assert_lake_matches_manifest
from medlake_assets_tests.lake_helpers import lineage_keys, local_settings, open_lake, table_rows
from medlake_assets_tests.postgres import postgres_url
from medlake_dev.generate import write_feeds
from medlake_dev.workers import (
    CODE_LOCATION,
    DAGSTER_PG_URL_ENV,
    Workers,
    ensure_bucket,
    replay,
    scratch_database,
    slice_keys,
    wait_until_settled,
    worker_environment,
    write_instance,
)

# Columns that name a delivery (when, in which batch) rather than data: they differ between a parallel and
# a sequential run of the same archives.
DELIVERY_COLUMNS = ("_ingested_at", "_batch")


def test_written_instance_loads_with_the_production_policy(tmp_path: Path, monkeypatch) -> None:
    with scratch_database(postgres_url()) as url:
        monkeypatch.setenv(DAGSTER_PG_URL_ENV, url.replace("+psycopg2", ""))
        write_instance(tmp_path, 3)
        assert url.split("@")[-1] not in (tmp_path / "dagster.yaml").read_text()
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert instance.run_monitoring_enabled
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
            limits = instance.get_concurrency_config()
            assert limits.run_queue_config.max_concurrent_runs == 3
            assert limits.pool_config.default_pool_limit == 1


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("MEDLAKE_STORE_URL", "MEDLAKE_STORE_URL is not set"),
        ("MEDLAKE_CATALOG_URL", "MEDLAKE_CATALOG_URL is not set"),
    ],
)
def test_workers_refuse_an_embedded_environment(tmp_path: Path, missing: str, message: str) -> None:
    env = {"MEDLAKE_CATALOG_URL": "postgresql://medlake@db/lake", "MEDLAKE_STORE_URL": "s3://lake/prod"}
    del env[missing]
    with pytest.raises(SettingsError, match=message):
        worker_environment(env, tmp_path, 5)


def test_worker_environment_is_production_with_one_process_per_run(tmp_path: Path) -> None:
    env = {"MEDLAKE_CATALOG_URL": "postgresql+psycopg2://medlake@db/lake", "MEDLAKE_STORE_URL": "s3://lake/p"}
    result = worker_environment(env, tmp_path, 5)
    assert result["MEDLAKE_PROFILE"] == "production"
    assert result["DAGSTER_HOME"] == str(tmp_path)
    assert result["MEDLAKE_SENSOR_INTERVAL_SECONDS"] == "5"
    assert result["MEDLAKE_INGEST_WORKERS"] == "1"
    # Dagster's LISTEN/NOTIFY uses psycopg2 directly, which does not know SQLAlchemy's driver suffix.
    assert result[DAGSTER_PG_URL_ENV] == "postgresql://medlake@db/lake"
    # Runs give Polars' freed pages back soon (read when a run's process loads Polars)...
    assert result["_RJEM_MALLOC_CONF"] == "background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0"
    assert result["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"  # and Arrow's, from its own jemalloc
    assert result["JE_ARROW_MALLOC_CONF"] == result["_RJEM_MALLOC_CONF"]
    own = worker_environment({**env, "_RJEM_MALLOC_CONF": "dirty_decay_ms:500"}, tmp_path, 5)
    assert own["_RJEM_MALLOC_CONF"] == "dirty_decay_ms:500"  # an operator's own setting stays


def test_worker_environment_makes_a_relative_dagster_home_absolute(tmp_path: Path, monkeypatch) -> None:
    """`medlake bench soak --work-dir .medlake/bench-soak` once fed an hour of archives to a daemon that had
    exited at start: Dagster refuses a relative DAGSTER_HOME."""
    monkeypatch.chdir(tmp_path)
    env = {"MEDLAKE_CATALOG_URL": "postgresql+psycopg2://medlake@db/lake", "MEDLAKE_STORE_URL": "s3://lake/p"}
    result = worker_environment(env, Path("bench-soak/dagster"), 5)
    assert result["DAGSTER_HOME"] == str(tmp_path / "bench-soak" / "dagster")


def test_replay_spaces_puts_at_the_arrival_rate(tmp_path: Path, archive_password: str) -> None:
    slice_dir = tmp_path / "slice"
    write_feeds(
        slice_dir, facilities=2, archives=6, seed=1, day=datetime(2026, 11, 20).date(), size_scale=0.01
    )
    store = LocalObjectStore(tmp_path / "landing-store")
    now = [1000.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    landed = list(replay(slice_dir, store, rate_per_hour=3600, speedup=2, clock=lambda: now[0], sleep=sleep))
    keys = slice_keys(slice_dir)
    assert sorted(item.key for item in landed) == keys
    assert [item.key for item in landed] != keys  # shuffled across facilities, as arrivals are
    assert [item.at for item in landed] == [1000.0 + 0.5 * number for number in range(len(keys))]
    assert waits == [0.5] * (len(keys) - 1)
    assert all(store.get(key) == (slice_dir / key).read_bytes() for key in keys)


def _silver(lake, identifier: str) -> pl.DataFrame:
    rows = pl.from_arrow(table_rows(lake, identifier)).drop(DELIVERY_COLUMNS, strict=False)
    # Encounters' fold order keys (`_fold_*_at`) encode each event's load time and batch, as `_ingested_at`.
    rows = rows.drop(pl.selectors.matches(r"^_fold_.*_at$"))
    return rows.sort(rows.columns)


@pytest.mark.e2e
@pytest.mark.s3
def test_two_workers_match_the_manifest_and_a_sequential_run(
    tmp_path: Path, archive_password: str, s3_endpoint: str, s3_bucket: str
) -> None:
    """Dagster daemon, QueuedRunCoordinator with 2 workers, a process per run, PostgreSQL + loopback S3."""
    slice_dir = tmp_path / "slice"
    # Today: the landing sensors list the open landing days.
    manifest = write_feeds(slice_dir, **{**GENERATION, "day": datetime.now(UTC).date()})
    with scratch_database(postgres_url()) as catalog_url:
        env = {
            **os.environ,
            "MEDLAKE_HOME": str(tmp_path / "home"),
            "MEDLAKE_CATALOG_URL": catalog_url,
            "MEDLAKE_STORE_URL": f"s3://{s3_bucket}/lake",
        }
        workers = Workers(env, tmp_path / "dagster", 2, sensor_interval_seconds=2)
        ensure_bucket(workers.settings)
        with workers:
            landed = list(replay(slice_dir, workers.lake.store, rate_per_hour=0))
            state = wait_until_settled(workers, len(landed), timeout_seconds=1200)
            runs = workers.instance().get_runs()
            assert workers.running(), "the code server or the daemon exited"
            log = workers.log_path.read_text()
        # The daemon reached the code server `medlake workers` started, as production's daemon reaches its
        # user deployment: it never started (and every 60 s replaced) one of its own.
        assert "No heartbeat received" not in log
        assert {run.remote_job_origin.location_name for run in runs} == {CODE_LOCATION}
        assert state.pending == 0
        assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}, "a run failed"
        landing_runs = [run for run in runs if run.job_name == "ingest_landed"]
        # Two workers: the landing sensor spreads a day's sources over two runs in flight.
        assert landing_runs and {
            key.removeprefix("medlake/batch/")
            for run in landing_runs
            for key in run.tags
            if key.startswith("medlake/batch/")
        } == set(manifest["sources"])
        parallel = workers.lake
        assert_lake_matches_manifest(parallel, manifest)

        reference = open_lake(local_settings(tmp_path / "reference"))
        list(replay(slice_dir, reference.store, rate_per_hour=0))
        with dg.instance_for_test() as instance:
            summary = ingest_once(build_definitions(reference.settings), instance, reference)
        assert summary.failed_runs == 0
        for source in manifest["sources"]:
            bronze = lineage_keys(table_rows(parallel, f"bronze.{source}"))
            assert bronze == lineage_keys(table_rows(reference, f"bronze.{source}")), source
            assert len(set(bronze)) == len(bronze), f"{source}: a record is in bronze twice"
            silver = _silver(parallel, f"silver.{source}")
            assert silver.height > 0, source
            assert silver.equals(_silver(reference, f"silver.{source}")), source
        assert _silver(parallel, "silver.encounters").equals(_silver(reference, "silver.encounters"))


_WORKER_ALLOCATORS = """
import json, os, sys
import polars  # as `medlake workers` has, before it computes the workers' environment
from medlake_dev.workers import worker_environment
env = {**os.environ, "MEDLAKE_CATALOG_URL": "postgresql://medlake@db/lake", "MEDLAKE_STORE_URL": "s3://lake/p"}
print(json.dumps(worker_environment(env, sys.argv[1], 5)))
"""


@pytest.mark.parametrize(
    ("operator_setting", "expected"),
    [(None, ALLOCATOR_ENV["_RJEM_MALLOC_CONF"]), ("dirty_decay_ms:700", "dirty_decay_ms:700")],
)
def test_run_workers_get_the_allocator_settings_though_polars_rewrote_the_variable(
    tmp_path: Path, operator_setting: str | None, expected: str
) -> None:
    env = {name: value for name, value in os.environ.items() if name not in ALLOCATOR_ENV}
    if operator_setting is not None:
        env["_RJEM_MALLOC_CONF"] = operator_setting
    started = subprocess.run(
        [sys.executable, "-c", _WORKER_ALLOCATORS, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(started.stdout)
    assert result["_RJEM_MALLOC_CONF"] == expected
    assert result["JE_ARROW_MALLOC_CONF"] == ALLOCATOR_ENV["JE_ARROW_MALLOC_CONF"]
