"""Generate -> ingest through the real sensors and Dagster runs -> tables, ledger and quarantine agree."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest
from pyiceberg.table import Transaction

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.bronze import batch_run_config, batch_run_request, batch_tag, job_name
from medlake_assets.defs.flow import FLOW_JOB, LANDING_SENSOR, release_parked_batches, sources_in_run
from medlake_assets.defs.runner import apply_partition_requests, ingest_once
from medlake_assets.defs.silver import pending_silver, refine_job_name
from medlake_assets.lake.ledger import Ledger
from medlake_assets.serving.sql import connect
from medlake_assets_tests.conftest import SOURCES_DIR
from medlake_assets_tests.lake_helpers import (
    DAY,
    ledger_by_key,
    lineage_keys,
    local_settings,
    open_lake,
    table_rows,
)
from medlake_dev.bench.soak import run_profiles
from medlake_dev.generate import write_feeds

GENERATION = {"facilities": 4, "archives": 48, "seed": 11, "bad_rate": 0.35, "day": DAY, "size_scale": 0.02}


@pytest.fixture
def landed(tmp_path, archive_password):
    home = tmp_path / "home"
    manifest = write_feeds(home, **GENERATION)
    settings = local_settings(home)
    return settings, manifest


def assert_lake_matches_manifest(lake, manifest) -> None:
    ledger = ledger_by_key(lake)
    for source, expected in manifest["sources"].items():
        bronze = table_rows(lake, f"bronze.{source}")
        assert bronze.num_rows == expected["records"], source
        keys = lineage_keys(bronze)
        assert len(set(keys)) == len(keys), f"{source}: duplicate records"
        rejected = table_rows(lake, f"quarantine.{source}").to_pylist()
        assert sum(row["stage"] == "bronze" for row in rejected) == expected["rejected_records"], source
        silver_rejected = {
            (r["_archive"], r["_member"], r["_record"]) for r in rejected if r["stage"] == "silver"
        }
        assert len(silver_rejected) == expected.get("silver_rejected_records", 0), source
        rows = [row for row in ledger.values() if row["source"] == source]
        assert sum(row["status"] == "loaded" for row in rows) == expected["archives_loaded"], source
        assert sum(row["status"] == "quarantined" for row in rows) == expected["archives_quarantined"], source
        assert sum(row["records"] or 0 for row in rows if row["status"] == "loaded") == expected["records"]
    for bad in manifest["bad_files"]:
        if bad.get("stage") == "silver":
            rows = table_rows(lake, f"quarantine.{bad['source']}").to_pylist()
            assert bad["rule"] in {
                r["rule"] for r in rows if r["_archive"] == bad["key"] and r["stage"] == "silver"
            }
            continue
        row = ledger[bad["key"]]
        assert row["status"] == bad["expect"], bad
        assert row["rule"] == bad["rule"], bad
        reason = json.loads(lake.store.get(f"quarantine/{bad['key']}.reason.json"))
        assert lake.store.get(f"quarantine/{bad['key']}") == lake.store.get(bad["key"])
        if bad["expect"] == "quarantined":
            assert reason["rule"] == bad["rule"]
        else:
            assert bad["rule"] in {item["rule"] for item in reason["rejected_records"]}


def test_generate_ingest_matches_manifest_and_rerun_changes_nothing(landed):
    settings, manifest = landed
    lake = open_lake(settings)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        summary = ingest_once(defs, instance, lake)
        assert summary.failed_runs == 0
        assert summary.sensors["landing"] == 1  # one run: every source of the day, bronze and silver
        assert_lake_matches_manifest(lake, manifest)
        # Every step of the run gave its memory back before the next one (`lake/memory.py`).
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name=FLOW_JOB))
        events = [record.dagster_event for record in instance.all_logs(run.run_id) if record.dagster_event]
        kinds = dg.DagsterEventType
        steps = {event.step_key for event in events if event.event_type == kinds.STEP_SUCCESS}
        hooked = {event.step_key for event in events if event.event_type == kinds.HOOK_COMPLETED}
        assert len(steps) >= 9 and hooked == steps
        # ...and logged its peak, which `bench soak` reads back per step.
        (profile,) = [profile for profile in run_profiles(instance) if profile["run_id"] == run.run_id]
        assert set(profile["step_peak_mb"]) == steps
        assert all(peak > 50 for peak in profile["step_peak_mb"].values())
        # ...and names each source's ledger batch, which it loaded (the soak's latency stages).
        assert set(profile["batches"]) == set(manifest["sources"])
        for source, batch in profile["batches"].items():
            assert {row.source for row in lake.ledger.batch_files(batch)} == {source}
            assert {row.status for row in lake.ledger.batch_files(batch)} <= {"loaded", "quarantined"}
        snapshots = {
            source: lake.catalog.load_table(f"bronze.{source}").metadata.current_snapshot_id
            for source in manifest["sources"]
        }

        again = ingest_once(defs, instance, lake)
        assert again.runs == 0
        assert_lake_matches_manifest(lake, manifest)
        assert snapshots == {
            source: lake.catalog.load_table(f"bronze.{source}").metadata.current_snapshot_id
            for source in manifest["sources"]
        }


def test_duckdb_reads_the_same_rows_as_pyiceberg(landed):
    settings, manifest = landed
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        ingest_once(build_definitions(settings), instance, lake)
    con = connect(lake)
    for source, expected in manifest["sources"].items():
        assert con.execute(f"SELECT count(*) FROM bronze.{source}").fetchone()[0] == expected["records"]
        location = lake.catalog.load_table(f"bronze.{source}").metadata_location.removeprefix("file://")
        direct = con.execute(f"SELECT count(*) FROM iceberg_scan('{location}')").fetchone()[0]
        assert direct == table_rows(lake, f"bronze.{source}").num_rows
    statuses = dict(con.execute("SELECT status, count(*) FROM meta.files GROUP BY 1").fetchall())
    assert statuses["quarantined"] == sum(
        1 for bad in manifest["bad_files"] if bad["expect"] == "quarantined"
    )


def _tick(defs, instance, cursor=None):
    sensor = defs.get_repository_def().get_sensor_def(LANDING_SENSOR)
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    )
    return sensor(context)


def batch_ids(request: dg.RunRequest) -> set[str]:
    return {value for key, value in request.tags.items() if key.startswith("medlake/batch/")}


def test_landing_sensor_sizes_batches_by_backlog_one_run_per_cycle(tmp_path, archive_password):
    sources_dir = tmp_path / "sources"
    shutil.copytree(SOURCES_DIR, sources_dir)
    defaults = (
        (sources_dir / "_defaults.yaml")
        .read_text()
        .replace("max_archives_per_run: 500", "max_archives_per_run: 3")
    )
    (sources_dir / "_defaults.yaml").write_text(defaults)
    home = tmp_path / "home"
    manifest = write_feeds(home, **{**GENERATION, "bad_rate": 0.0})
    settings = local_settings(home, MEDLAKE_SOURCES_DIR=str(sources_dir))
    defs = build_definitions(settings)
    lake = open_lake(settings)
    job = defs.resolve_job_def(FLOW_JOB)
    with dg.instance_for_test() as instance:
        result = _tick(defs, instance, json.dumps({"since": DAY.isoformat()}))
        # One run for the landing day, carrying the oldest batch (<= 3 archives) of every source, into
        # bronze and silver (and silver.encounters for ADT).
        [request] = result.run_requests
        assert request.partition_key == DAY.isoformat()
        assert request.tags["dagster/priority"] == "10"  # dequeued before report runs
        batches = {
            key.removeprefix("medlake/batch/"): value
            for key, value in request.tags.items()
            if key.startswith("medlake/batch/")
        }
        assert set(batches) == set(manifest["sources"])
        assert {key.to_user_string() for key in request.asset_selection} == {
            f"{layer}/{source}" for layer in ("bronze", "silver") for source in manifest["sources"]
        } | {"silver/encounters"}
        ops = request.run_config["ops"]
        assert {ops[f"bronze__{source}"]["config"]["batch_id"] for source in batches} == set(batches.values())
        assert all(1 <= len(lake.ledger.batch_files(batch_id)) <= 3 for batch_id in batches.values())
        assert json.loads(result.cursor)["since"] > DAY.isoformat()

        # While that run is in flight, its sources are busy: nothing more is claimed or requested.
        claimed = {source: lake.ledger.unfinished_batches(source) for source in manifest["sources"]}
        queued = instance.create_run_for_job(
            job, run_config=request.run_config, tags=request.tags, status=dg.DagsterRunStatus.NOT_STARTED
        )
        assert _tick(defs, instance, result.cursor).run_requests == []
        assert {source: lake.ledger.unfinished_batches(source) for source in manifest["sources"]} == claimed

        # When it failed, its batches are pending still: the next run retries them under a new run key.
        # Every archive was claimed at the first tick, in batches of at most 3 per source.
        instance.report_run_failed(queued, "simulated")
        [retry] = _tick(defs, instance, result.cursor).run_requests
        assert retry.run_key != request.run_key
        assert {key: value for key, value in retry.tags.items()} == request.tags
        for source in manifest["sources"]:
            pending = lake.ledger.unfinished_batches(source)
            assert sum(len(batch.file_ids) for batch in pending) == manifest["sources"][source]["archives"]

        # After MAX_ATTEMPTS runs a batch is parked and the source's next batch goes ahead.
        for _ in range(2):
            instance.create_run_for_job(
                job, run_config=retry.run_config, tags=retry.tags, status=dg.DagsterRunStatus.FAILURE
            )
        [after] = _tick(defs, instance, result.cursor).run_requests
        assert not batch_ids(after) & batch_ids(request)

        # An operator's "try again" (`ingest --once`) releases the parked batches: the sensor requests them
        # again, under a run key none of their runs had.
        instance.create_run_for_job(  # `after`'s run is in flight, so its sources wait
            job, run_config=after.run_config, tags=after.tags, status=dg.DagsterRunStatus.FAILURE
        )
        assert release_parked_batches(instance, lake.ledger, lake.sources.values()) == len(batch_ids(request))
        [again] = _tick(defs, instance, result.cursor).run_requests
        assert batch_ids(again) == batch_ids(request)
        earlier_keys = {run.tags.get("dagster/run_key") for run in instance.get_runs()} | {request.run_key}
        assert again.run_key not in earlier_keys | {retry.run_key}


def test_archives_landing_while_a_run_is_in_flight_wait_unclaimed_and_go_into_one_batch(
    tmp_path, archive_password
):
    """A source absent from the run in flight is not claimed tick by tick. A run takes one batch per source,
    so a batch per tick would keep that source as many runs behind as it had batches (soak: minutes)."""
    home = tmp_path / "home"
    write_feeds(home, **{**GENERATION, "bad_rate": 0.0})
    settings = local_settings(home)
    lake = open_lake(settings)
    defs = build_definitions(settings)
    job = defs.resolve_job_def(FLOW_JOB)
    landing, later = home / "landing" / "bed_census", tmp_path / "bed_census later"
    shutil.move(landing, later)  # bed_census lands after the first run was requested
    cursor = json.dumps({"since": DAY.isoformat()})
    with dg.instance_for_test() as instance:
        [first] = _tick(defs, instance, cursor).run_requests
        assert "bed_census" not in sources_in_run(first.tags)
        in_flight = instance.create_run_for_job(
            job, run_config=first.run_config, tags=first.tags, status=dg.DagsterRunStatus.NOT_STARTED
        )
        archives = sorted(path for path in later.rglob("*.zip"))
        assert len(archives) >= 2
        for part in (archives[: len(archives) // 2], archives[len(archives) // 2 :]):
            for path in part:
                (landing / path.relative_to(later)).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, landing / path.relative_to(later))
            assert _tick(defs, instance, cursor).run_requests == []  # no run can start
        bed = {row.key: row for row in lake.ledger.day_files("bed_census", DAY)}
        assert len(bed) == len(archives) and {row.batch_id for row in bed.values()} == {None}

        # That run ends (here it fails, and its batches are retried): bed_census goes into the next run,
        # every archive of it in one batch.
        instance.report_run_failed(in_flight, "simulated")
        [second] = _tick(defs, instance, cursor).run_requests
        assert batch_ids(second) > batch_ids(first)
        [waiting] = lake.ledger.unfinished_batches("bed_census")
        assert second.tags[batch_tag("bed_census")] == waiting.batch_id
        assert {row.key for row in lake.ledger.batch_files(waiting.batch_id)} == set(bed)


def test_the_sensor_lists_today_when_a_run_can_take_it_and_the_days_before_every_few_minutes(
    tmp_path, archive_password
):
    """A listing costs what the listed days hold. The open days before today take only late files: listed
    once in `ingest.earlier_days_every_minutes` (5). Today's folder of a source is listed when a run can
    take what it finds (backpressure): not while a batch of the source waits for a run."""
    if (seconds_left := 86_400 - datetime.now(UTC).timestamp() % 86_400) < 180:
        time.sleep(seconds_left + 1)  # a day's first tick lists every open day: not this test's ticks
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    home = tmp_path / "home"
    write_feeds(home, **{**GENERATION, "archives": 8, "bad_rate": 0.0, "day": today})
    settings = local_settings(home)
    lake = open_lake(settings)
    defs = build_definitions(settings)

    def land_copy(day: date, name: str) -> str:
        """One of today's archives once more, under a new name in `day`'s folder of its source."""
        original = next((home / "landing" / "bed_census").rglob("*.zip"))
        parts = original.relative_to(home).parts  # landing, source, yyyy, mm, dd, facility, file
        target = home.joinpath(*parts[:2], f"{day:%Y/%m/%d}", parts[5], name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, target)
        return target.relative_to(home).as_posix()

    def known(day: date) -> set[str]:
        return {row.key for row in lake.ledger.day_files("bed_census", day)}

    with dg.instance_for_test() as instance:
        assert ingest_once(defs, instance, lake, refresh_reports=False).failed_runs == 0
        loaded = known(today)
        first = _tick(defs, instance)  # no cursor: every open day
        listed_at = datetime.fromisoformat(json.loads(first.cursor)["earlier_days_listed_at"])
        assert abs(listed_at - datetime.now(UTC)) < timedelta(minutes=1)

        late, fresh = land_copy(yesterday, "late.zip"), land_copy(today, "fresh.zip")
        second = _tick(defs, instance, first.cursor)
        assert known(today) == loaded | {fresh} and known(yesterday) == set()  # today only
        assert second.cursor == first.cursor  # the days before today still wait for their listing
        [request] = second.run_requests  # fresh's batch, waiting for its run
        assert sources_in_run(request.tags) == {"bed_census"}

        after = land_copy(today, "after.zip")
        assert _tick(defs, instance, first.cursor).run_requests == [request]  # the same batch, no listing
        assert after not in known(today)

        cursor = json.loads(first.cursor)
        cursor["earlier_days_listed_at"] = (listed_at - timedelta(minutes=5)).isoformat()
        third = _tick(defs, instance, json.dumps(cursor))  # every open day, whatever waits
        assert known(yesterday) == {late} and after in known(today)
        assert json.loads(third.cursor)["earlier_days_listed_at"] > listed_at.isoformat()


def test_one_run_loads_every_source_into_bronze_and_silver(landed):
    settings, manifest = landed
    lake = open_lake(settings)
    defs = build_definitions(settings)
    labels = []
    with dg.instance_for_test() as instance:
        summary = ingest_once(
            defs, instance, lake, on_run=lambda label, *_: labels.append(label), refresh_reports=False
        )
        assert summary.failed_runs == 0
        assert labels == [LANDING_SENSOR]  # no refine run: silver came in the same run
        [run] = instance.get_runs(filters=dg.RunsFilter(job_name=FLOW_JOB))
        materialized = {
            record.asset_key.to_user_string()
            for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(["silver", "lab_results"])), limit=10
            ).records
        }
        assert materialized == {"silver/lab_results"}
        assert all(
            not pending_silver(lake.ledger, spec) for spec in lake.sources.values()
        ), "every loaded batch is in silver"
        assert run.status == dg.DagsterRunStatus.SUCCESS
    assert_lake_matches_manifest(lake, manifest)


def test_bronze_loaded_before_automation_first_evaluates_is_refined_once(landed):
    """Bronze loaded by the bronze jobs (a backfill, another worker) on an instance whose automation never
    evaluated: eager conditions request nothing on a first evaluation, so `ingest --once` refines it through
    silver's catch-up, and a second call finds nothing to run."""
    settings, manifest = landed
    lake = open_lake(settings)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        claim = _tick(defs, instance, json.dumps({"since": DAY.isoformat()}))  # claims the landed files
        apply_partition_requests(instance, claim)
        for spec in lake.sources.values():
            for batch in lake.ledger.unfinished_batches(spec.name):
                request = batch_run_request(spec, batch)
                assert (
                    defs.resolve_job_def(job_name(spec))
                    .execute_in_process(
                        run_config=request.run_config,
                        instance=instance,
                        partition_key=request.partition_key,
                        tags=request.tags,
                    )
                    .success
                )
        waiting = sorted(
            refine_job_name(spec)
            for spec in lake.sources.values()
            for _day in pending_silver(lake.ledger, spec)
        )
        assert waiting, "the bronze jobs load bronze only"

        labels = []
        summary = ingest_once(
            defs, instance, lake, on_run=lambda label, *_: labels.append(label), refresh_reports=False
        )
        assert summary.failed_runs == 0
        assert sorted(labels) == waiting  # one refine run per (source, day), nothing loaded twice
        assert all(not pending_silver(lake.ledger, spec) for spec in lake.sources.values())
        assert ingest_once(defs, instance, lake, refresh_reports=False).runs == 0
    assert_lake_matches_manifest(lake, manifest)


def test_crash_after_commit_before_ledger_is_repaired(landed, monkeypatch):
    settings, manifest = landed
    lake = open_lake(settings)
    real_mark_loaded = Ledger.mark_loaded
    crashed = []

    def crash_once(self, results):
        if not crashed:
            crashed.append(True)
            raise RuntimeError("simulated crash between the Iceberg commit and the ledger update")
        return real_mark_loaded(self, results)

    monkeypatch.setattr(Ledger, "mark_loaded", crash_once)
    with dg.instance_for_test() as instance:
        summary = ingest_once(build_definitions(settings), instance, lake)
    assert crashed and summary.failed_runs == 1
    assert_lake_matches_manifest(lake, manifest)


def test_backfill_of_a_day_reloads_it_idempotently(landed):
    settings, manifest = landed
    lake = open_lake(settings)
    defs = build_definitions(settings)
    spec = lake.sources["adt_events"]
    with dg.instance_for_test() as instance:
        ingest_once(defs, instance, lake)
        before = lineage_keys(table_rows(lake, "bronze.adt_events"))
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat(), run_config=batch_run_config(spec, "")
        )
        assert result.success
        materialization = result.asset_materializations_for_node("bronze__adt_events")[0]
        assert materialization.metadata["records"].value == manifest["sources"]["adt_events"]["records"]
        checks = {
            evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()
        }
        assert checks["ledger_matches_table"] is True
    assert lineage_keys(table_rows(lake, "bronze.adt_events")) == before
    assert_lake_matches_manifest(lake, manifest)


def silver_stage_rejects(lake) -> list[tuple]:
    rows = table_rows(lake, "quarantine.adt_events")
    return sorted(
        (row["_archive"], row["_member"], row["_record"], row["rule"])
        for row in rows.to_pylist()
        if row["stage"] == "silver"
    )


def expected_silver_keys(lake) -> list[tuple]:
    """Bronze's records of adt_events less those rejected in silver and those of held slices."""
    held = set(
        connect(lake)
        .execute("SELECT batch_id, facility FROM meta.held WHERE source = 'adt_events' AND status = 'held'")
        .fetchall()
    )
    rejected = {row[:3] for row in silver_stage_rejects(lake)}
    bronze = table_rows(lake, "bronze.adt_events").to_pylist()
    return sorted(
        key
        for row in bronze
        if (key := (row["_archive"], row["_member"], row["_record"])) not in rejected
        and (row["_batch"], row["_facility"]) not in held
    )


def test_silver_appends_hold_each_record_once_through_a_crash_and_a_backfill(landed, monkeypatch):
    """`silver.adt_events` (an append) and its silver-stage rejects: a first load issues no filtered delete
    (which reads every file of the day it cannot rule out, to find rows to replace); a crash between the
    silver commit and the ledger, and a bronze backfill of the day, do replace the archives' earlier rows,
    so every record is there once."""
    settings, manifest = landed
    lake = open_lake(settings)
    defs = build_definitions(settings)
    spec = lake.sources["adt_events"]
    real_mark_processed, real_delete = Ledger.mark_processed, Transaction.delete
    crashed, deletes = [], []

    def crash_once(self, consumer, source, day, batch_ids):
        if consumer == "silver.adt_events" and not crashed:
            crashed.append(batch_ids)
            raise RuntimeError("simulated crash between the silver commit and the ledger update")
        return real_mark_processed(self, consumer, source, day, batch_ids)

    def recorded_delete(self, *args, **kwargs):
        deletes.append(".".join(self.table_metadata.location.rstrip("/").split("/")[-2:]))
        return real_delete(self, *args, **kwargs)

    monkeypatch.setattr(Transaction, "delete", recorded_delete)
    with dg.instance_for_test() as instance:
        monkeypatch.setattr(Ledger, "mark_processed", crash_once)
        ingest_once(defs, instance, lake)
        monkeypatch.setattr(Ledger, "mark_processed", real_mark_processed)
        assert len(crashed) == 1
        loaded = lineage_keys(table_rows(lake, "silver.adt_events"))
        assert loaded and loaded == expected_silver_keys(lake)
        rejects = silver_stage_rejects(lake)
        assert rejects and len(set(rejects)) == len(rejects)  # the generator plants silver-stage faults
        # Only the crashed batch's second load replaced rows (in the table and in its quarantine).
        assert sorted(name for name in deletes if "adt_events" in name) == [
            "quarantine.adt_events",
            "silver.adt_events",
        ]
        deletes.clear()

        result = defs.resolve_job_def(job_name(spec)).execute_in_process(
            instance=instance, partition_key=DAY.isoformat(), run_config=batch_run_config(spec, "")
        )
        assert result.success
        ingest_once(defs, instance, lake)
    assert "silver.adt_events" in deletes  # the backfilled archives' earlier rows were replaced
    assert lineage_keys(table_rows(lake, "silver.adt_events")) == loaded
    assert silver_stage_rejects(lake) == rejects
