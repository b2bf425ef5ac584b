"""Silver through the real runs: typed and merged tables equal a reference computed from bronze, re-runs
change nothing, and a batch whose only facility is over the error threshold is held back with silver and
encounters untouched."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.flow import FLOW_JOB, LANDING_SENSOR
from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.runner import apply_partition_requests, ingest_once
from medlake_assets.defs.silver import SilverLoadConfig, refine_job_name
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets.serving.sql import connect
from medlake_assets_tests.ingest.archive_builders import zip_aes
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake
from medlake_dev.generate import write_feeds

GENERATION = {"facilities": 3, "archives": 36, "seed": 8, "bad_rate": 0.0, "day": DAY, "size_scale": 0.02}


@pytest.fixture
def refined(tmp_path, archive_password):
    home = tmp_path / "home"
    manifest = write_feeds(home, **GENERATION)
    settings = local_settings(home)
    lake = open_lake(settings)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        summary = ingest_once(defs, instance, lake)
        yield lake, defs, instance, manifest, summary


def snapshot_ids(lake) -> dict[str, int | None]:
    names = ["adt_events", "bed_census", "lab_results", "patient_documents", "encounters"]
    return {name: lake.catalog.load_table(f"silver.{name}").metadata.current_snapshot_id for name in names}


def test_silver_equals_reference_from_bronze(refined):
    lake, _, _, manifest, summary = refined
    assert summary.failed_runs == 0
    con = connect(lake)
    one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    # append: every bronze message, typed
    assert one("SELECT count(*) FROM silver.adt_events") == manifest["sources"]["adt_events"]["records"]
    assert one("SELECT count(*) FROM silver.adt_events WHERE message_ts IS NULL") == 0
    # upsert: one row per key, the latest by result_ts then status rank P < F < C
    reference = con.execute(
        """
        SELECT facility_id, order_id, test_code, result_status, value FROM (
          SELECT *, row_number() OVER (
            PARTITION BY facility_id, order_id, test_code
            ORDER BY result_ts DESC, CASE result_status WHEN 'C' THEN 3 WHEN 'F' THEN 2 ELSE 1 END DESC,
                     _archive DESC, _member DESC, _record DESC) AS n
          FROM bronze.lab_results) WHERE n = 1 ORDER BY ALL
        """
    ).fetchall()
    silver = con.execute(
        "SELECT facility_id, order_id, test_code, result_status, value FROM silver.lab_results "
        "WHERE NOT _deleted ORDER BY ALL"
    ).fetchall()
    assert silver == reference
    assert len(silver) < manifest["sources"]["lab_results"]["records"], "orders got P then F updates"
    beds = one("SELECT count(DISTINCT (facility_id, bed_id)) FROM bronze.bed_census")
    assert one("SELECT count(*) FROM silver.bed_census WHERE NOT _deleted") == beds
    # scd2: every document a version, one current version per patient
    documents = manifest["sources"]["patient_documents"]["records"]
    assert one("SELECT count(*) FROM silver.patient_documents") == documents
    patients = one("SELECT count(DISTINCT patient_id) FROM bronze.patient_documents")
    assert one("SELECT count(*) FROM silver.patient_documents WHERE _is_current") == patients
    # encounters: one per visit seen in ADT
    visits = one(
        "SELECT count(DISTINCT (_facility, visit_number)) FROM bronze.adt_events "
        "WHERE visit_number IS NOT NULL"
    )
    assert one("SELECT count(*) FROM silver.encounters") == visits
    assert (
        one("SELECT count(*) FROM silver.encounters WHERE status = 'discharged' AND discharge_ts IS NULL")
        == 0
    )
    # `ingest --once` also rebuilt the on_update report from the new silver rows.
    assert one("SELECT sum(beds) FROM gold.bed_availability") == beds


def test_rerun_and_backfill_change_nothing(refined):
    lake, defs, instance, _, _ = refined
    before = snapshot_ids(lake)
    con = connect(lake)
    rows_before = con.execute(
        "SELECT * EXCLUDE (_ingested_at) FROM silver.lab_results ORDER BY ALL"
    ).fetchall()
    assert ingest_once(defs, instance, lake).runs == 0
    assert snapshot_ids(lake) == before
    spec = lake.sources["lab_results"]
    op = "silver__lab_results"
    result = defs.resolve_job_def(refine_job_name(spec)).execute_in_process(
        instance=instance,
        partition_key=DAY.isoformat(),
        run_config=dg.RunConfig(ops={op: SilverLoadConfig(full=True)}),
    )
    assert result.success
    con = connect(lake)
    assert (
        con.execute("SELECT * EXCLUDE (_ingested_at) FROM silver.lab_results ORDER BY ALL").fetchall()
        == rows_before
    )


def adt_message(number: int, timestamp: str) -> str:
    return (
        f"MSH|^~\\&|EHR|F1|LAKE|X|{timestamp}||ADT^A01^ADT_A01|C{number}|P|2.5\r"
        f"PID|1||P{number}^^^F1^MR||Doe^Jo||19800101|F\r"
        f"PV1|1|I|ICU^1^A||||||||||||||||V{number}\r"
    )


def test_batch_over_threshold_is_held_back(tmp_path, archive_password):
    home = tmp_path / "home"
    messages = [adt_message(n, "20261120081500" if n % 4 else "2026BAD") for n in range(40)]
    LocalObjectStore(home).put(
        f"landing/adt_events/{DAY:%Y/%m/%d}/F1/adt.zip",
        zip_aes({"m.txt": "".join(messages).encode()}, archive_password),
    )
    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        summary = ingest_once(build_definitions(settings), instance, lake)
        # The one run (bronze, then silver): its silver step's blocking quality gate failed.
        assert summary.failed_runs == 1
        evaluations = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(["silver", "adt_events"]), "quality_gate")]
        )
        (execution,) = evaluations.values()
        assert execution.evaluation.passed is False
        assert execution.evaluation.metadata["rejected_rows"].value == 10
    assert lake.catalog.load_table("bronze.adt_events").scan().to_arrow().num_rows == 40
    assert not lake.catalog.table_exists("silver.adt_events"), "nothing published"
    assert not lake.catalog.table_exists("silver.encounters"), "downstream did not build on it"
    rejects = lake.catalog.load_table("quarantine.adt_events").scan().to_arrow().to_pylist()
    assert len(rejects) == 10
    assert {row["rule"] for row in rejects} == {"cast.timestamp"}
    assert all(row["stage"] == "silver" and "2026BAD" not in row["reason"] for row in rejects)
    # The batch was taken in: its only facility's rows wait in meta.held, not in the batch's pending state.
    assert len(lake.ledger.processed_batches("silver.adt_events", DAY)) == 1
    (held,) = connect(lake).execute("SELECT facility, status, rows, rejected FROM meta.held").fetchall()
    assert held == ("F1", "held", 40, 10)

    # `medlake quality` shows the held-back rows per facility and rule.
    from typer.testing import CliRunner

    from medlake_assets.cli import app

    shown = CliRunner().invoke(app, ["quality", "--source", "adt_events"], env={"MEDLAKE_HOME": str(home)})
    assert shown.exit_code == 0, shown.output
    line = next(line for line in shown.output.splitlines() if "cast.timestamp" in line)
    assert line.split("│")[1:6] == [
        " adt_events ",
        " F1       ",
        " silver ",
        " cast.timestamp ",
        "       10 ",
    ]


def test_catch_up_sensor_refines_batches_silver_missed(tmp_path, archive_password, monkeypatch):
    """Bronze loaded, silver never ran (as when eager counted an already-running silver run as handling a
    new batch): once the grace period has passed, the sensor asks for each day's refine, once per set of
    pending batches, and after those runs nothing is pending."""
    from medlake_assets.defs import silver as silver_defs

    home = tmp_path / "home"
    generation = {**GENERATION, "archives": 12, "facilities": 2}
    manifest = write_feeds(home, **generation)
    loaded = {name for name, counts in manifest["sources"].items() if counts["archives"]}
    settings = local_settings(home)
    lake = open_lake(settings)
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("silver_catch_up")
    with dg.instance_for_test() as instance:

        def tick() -> dg.SensorEvaluationContext:
            return dg.build_sensor_context(
                instance=instance, resources={"lake": LakeResource.from_settings(settings)}
            )

        # Bronze only: the landing sensor's run with its silver steps left out.
        landing = defs.resolve_sensor_def(LANDING_SENSOR)
        cursor = json.dumps({"since": DAY.isoformat()})
        ticked = landing(
            dg.build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
            )
        )
        apply_partition_requests(instance, ticked)
        for request in ticked.run_requests:
            result = defs.resolve_job_def(FLOW_JOB).execute_in_process(
                run_config=request.run_config,
                instance=instance,
                partition_key=request.partition_key,
                asset_selection=[key for key in request.asset_selection if key.path[0] == "bronze"],
                tags=request.tags,
            )
            assert result.success
        assert sensor(tick()).run_requests == []  # just loaded: eager automation's turn

        monkeypatch.setattr(silver_defs, "CATCH_UP_GRACE", silver_defs.timedelta(0))
        requests = sensor(tick()).run_requests
        assert {(r.tags["medlake/source"], r.partition_key) for r in requests} == {
            (name, DAY.isoformat()) for name in loaded
        }
        assert len(loaded) >= 3
        adt = next(r for r in requests if r.tags["medlake/source"] == "adt_events")
        assert set(adt.asset_selection) == {
            dg.AssetKey(["silver", "adt_events"]),
            dg.AssetKey(["silver", "encounters"]),
        }
        again = sensor(tick()).run_requests
        assert [r.run_key for r in again] == [r.run_key for r in requests]  # one run per pending set

        for request in requests:
            assets = [defs.resolve_assets_def(key) for key in request.asset_selection]
            result = dg.materialize(assets, instance=instance, partition_key=request.partition_key)
            assert result.success
        assert sensor(tick()).run_requests == []
        con = connect(lake)
        assert con.execute("SELECT count(*) FROM silver.lab_results").fetchone()[0] > 0
