"""Maintenance and reprocessing through real Dagster runs on a generated lake: the nightly job compacts
every table without changing a row and reports counts only; reprocessing a day replaces it exactly, and
picks up a metadata change."""

from __future__ import annotations

import os
import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.maintenance import (
    MAINTENANCE_JOB,
    REPROCESS_TAG,
    MaintenanceConfig,
    maintained_tables,
    maintenance_key,
    reprocess_day,
)
from medlake_assets.defs.runner import ingest_once
from medlake_assets.gold import load_reports
from medlake_assets.ingest.bronze import arrow_schema, bronze_table, commit_batch
from medlake_assets.serving.sql import connect
from medlake_assets_tests.conftest import SOURCES_DIR
from medlake_assets_tests.lake_helpers import DAY, lineage_keys, local_settings, open_lake, table_rows
from medlake_dev.generate import write_feeds

GENERATION = {"facilities": 2, "archives": 16, "seed": 5, "bad_rate": 0.0, "day": DAY, "size_scale": 0.02}


def sources_copy(folder: Path, replace: dict[str, tuple[str, str]]) -> Path:
    """The shipped source metadata with edits: {file name: (old text, new text)}."""
    shutil.copytree(SOURCES_DIR, folder)
    for file_name, (old, new) in replace.items():
        path = folder / file_name
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    return folder


def synthetic_batch(table, batch_id: str, count: int, start: int) -> pa.Table:
    """Seeded bronze rows (declared columns as strings, lineage) for one batch of the landing day."""
    rng = random.Random(batch_id)
    schema = arrow_schema(table)
    rows = []
    for ordinal in range(start, start + count):
        row = {name: f"v{rng.randrange(1000)}" for name in schema.names if not name.startswith("_")}
        facility = f"F{rng.randrange(3):03d}"
        rows.append(
            row
            | {
                "_archive": f"landing/x/{facility}/{batch_id}.zip",
                "_member": "m1",
                "_record": ordinal,
                "_facility": facility,
                "_landing_day": DAY,
                "_ingested_at": datetime(2026, 11, 20, 8, tzinfo=UTC),
                "_batch": batch_id,
            }
        )
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture
def small_files_lake(tmp_path, sources):
    """Two bronze tables of real sources, each with six one-batch commits (six small files) of a day."""
    settings = local_settings(tmp_path / "home")
    lake = open_lake(settings)
    for name in ("adt_events", "lab_results"):
        table = bronze_table(lake.catalog, sources[name])
        for number in range(6):
            batch_id = f"{name}-{number}"
            rows = synthetic_batch(table, batch_id, 50, number * 50)
            commit_batch(
                table, rows, archives=[rows["_archive"][0].as_py()], batch_id=batch_id, replace=False
            )
    return settings, lake


def maintenance_config(tables: list[str], **values) -> dg.RunConfig:
    """The same config for each listed table's maintenance op."""
    return dg.RunConfig(
        ops={"__".join(maintenance_key(name).path): MaintenanceConfig(**values) for name in tables}
    )


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Metadata of each maintenance materialization, by table name, as plain values."""
    found = {}
    for node in result.job_def.nodes:
        for materialization in result.asset_materializations_for_node(node.name):
            name = ".".join(materialization.asset_key.path[1:])
            found[name] = {key: value.value for key, value in materialization.metadata.items()}
    return found


def old_file(path: Path, age: timedelta) -> None:
    path.write_bytes(b"not referenced by any snapshot")
    moment = time.time() - age.total_seconds()
    os.utime(path, (moment, moment))


def test_maintenance_job_compacts_every_table_and_reports_counts(small_files_lake):
    settings, lake = small_files_lake
    defs = build_definitions(settings)
    bronze = ["bronze.adt_events", "bronze.lab_results"]
    before = {name: lineage_keys(table_rows(lake, name)) for name in bronze}
    location = lake.catalog.load_table("bronze.adt_events").location().removeprefix("file://")
    orphan = Path(location) / "data" / "00000-0-crashed-writer.parquet"
    old_file(orphan, timedelta(days=10))
    snapshots = {name: lake.catalog.load_table(name).current_snapshot().snapshot_id for name in bronze}
    job = defs.resolve_job_def(MAINTENANCE_JOB)

    with dg.instance_for_test() as instance:
        dry = job.execute_in_process(
            instance=instance,
            run_config=maintenance_config(bronze, dry_run=True),
            asset_selection=[maintenance_key(name) for name in bronze],
        )
        assert dry.success
        planned = materializations(dry)
        assert planned["bronze.adt_events"]["orphans_removed"] == 1
        assert all(planned[name]["partitions_compacted"] == 1 for name in bronze)
        assert orphan.exists()
        current = {name: lake.catalog.load_table(name).current_snapshot().snapshot_id for name in bronze}
        assert current == snapshots

        result = job.execute_in_process(instance=instance)

    assert result.success
    reported = materializations(result)
    assert set(reported) == set(maintained_tables(lake.sources, load_reports(settings.reports_dir)))
    for name in bronze:
        counts = reported[name]
        assert (counts["files_before"], counts["files_after"], counts["files_rewritten"]) == (6, 1, 6)
        assert len(lake.catalog.load_table(name).inspect.files()) == 1
        assert counts["snapshots_expired"] == 0, "every snapshot is inside the 30-day window"
        assert lineage_keys(table_rows(lake, name)) == before[name]
    assert reported["bronze.adt_events"]["orphans_removed"] == 1
    assert not orphan.exists()
    # Counts and flags only: no file names, no record values.
    for counts in reported.values():
        assert all(isinstance(value, bool | int | float) for value in counts.values()), counts
    # Tables no run has created yet are reported, not failed.
    assert reported["silver.adt_events"] == {"table_exists": False, "dry_run": False}


def silver_keys(lake, name: str, key: list[str]) -> list[tuple]:
    rows = table_rows(lake, f"silver.{name}")
    return sorted(zip(*(rows.column(column).to_pylist() for column in key), strict=True))


@pytest.mark.e2e
def test_reprocess_replaces_the_day_exactly_and_applies_changed_metadata(tmp_path, archive_password):
    home = tmp_path / "home"
    write_feeds(home, **GENERATION)
    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        assert (
            ingest_once(build_definitions(settings), instance, lake, refresh_reports=False).failed_runs == 0
        )
        defs = build_definitions(settings)
        encounters = connect(lake).execute("SELECT count(*) FROM silver.encounters").fetchone()[0]
        for name, key in [
            ("adt_events", ["_archive", "_member", "_record"]),
            ("lab_results", ["facility_id", "order_id", "test_code"]),
        ]:
            bronze_before = lineage_keys(table_rows(lake, f"bronze.{name}"))
            silver_before = silver_keys(lake, name, key)

            report = reprocess_day(defs, instance, lake, lake.sources[name], DAY)

            assert report.success and len(report.run_ids) == 2
            assert report.bronze_rows_after == report.bronze_rows_before == len(bronze_before)
            assert report.silver_rows_after == report.silver_rows_before > 0
            bronze_rows = table_rows(lake, f"bronze.{name}")
            assert lineage_keys(bronze_rows) == bronze_before, "no record lost, none doubled"
            assert all("-backfill-" in batch for batch in bronze_rows.column("_batch").to_pylist())
            assert silver_keys(lake, name, key) == silver_before
        runs = instance.get_runs(filters=dg.RunsFilter(tags={REPROCESS_TAG: DAY.isoformat()}))
        assert len(runs) == 4 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        assert connect(lake).execute("SELECT count(*) FROM silver.encounters").fetchone()[0] == encounters

        # The operator adds a transform to a source's metadata, then replays the day.
        units = "SELECT count(*) FROM silver.bed_census WHERE unit <> lower(unit)"
        assert connect(lake).execute(units).fetchone()[0] > 0, "generated units have capitals"
        rows = connect(lake).execute("SELECT count(*) FROM silver.bed_census").fetchone()[0]
        edit = ("transforms: [collapse_whitespace]", "transforms: [collapse_whitespace, lower]")
        changed = local_settings(
            home, MEDLAKE_SOURCES_DIR=str(sources_copy(tmp_path / "changed", {"bed_census.yaml": edit}))
        )
        changed_lake = open_lake(changed)

        report = reprocess_day(
            build_definitions(changed), instance, changed_lake, changed_lake.sources["bed_census"], DAY
        )

    assert report.success
    con = connect(changed_lake)
    assert con.execute(units).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM silver.bed_census").fetchone()[0] == rows


def test_cli_maintain_and_restore(small_files_lake, monkeypatch):
    from typer.testing import CliRunner

    from medlake_assets.cli import app

    settings, lake = small_files_lake
    monkeypatch.setenv("MEDLAKE_HOME", str(settings.home))
    runner = CliRunner()
    table = lake.catalog.load_table("bronze.lab_results")
    first = table.snapshots()[0]
    first_rows = lineage_keys(table.scan(snapshot_id=first.snapshot_id).to_arrow())
    all_rows = lineage_keys(table_rows(lake, "bronze.lab_results"))

    dry = runner.invoke(app, ["maintain", "--table", "bronze.lab_results", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and "bronze.lab_results" in dry.output
    assert len(lake.catalog.load_table("bronze.lab_results").inspect.files()) == 6
    done = runner.invoke(app, ["maintain", "--table", "bronze.lab_results"])
    assert done.exit_code == 0, done.output
    assert len(lake.catalog.load_table("bronze.lab_results").inspect.files()) == 1
    assert lineage_keys(table_rows(lake, "bronze.lab_results")) == all_rows

    restored = runner.invoke(app, ["restore", "bronze.lab_results", "--to", str(first.snapshot_id)])

    assert restored.exit_code == 0, restored.output
    said = " ".join(restored.output.split())  # rich wraps long lines
    assert f"-> {first.snapshot_id} in " in said
    assert "5 batch(es) are no longer in bronze.lab_results" in said
    assert lineage_keys(table_rows(lake, "bronze.lab_results")) == first_rows
    unknown = runner.invoke(app, ["restore", "bronze.lab_results", "--to", "12345"])
    assert unknown.exit_code == 2 and "has no snapshot 12345" in " ".join(unknown.output.split())
    assert runner.invoke(app, ["maintain", "--table", "bronze.nothing"]).exit_code == 2
