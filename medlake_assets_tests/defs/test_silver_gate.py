"""The silver quality gate per facility, through real runs: a facility over its threshold is held back
alone, the others publish in the same run; held rows publish once metadata makes them pass or an operator
releases them, and a held facility's later batches never undo the upsert order."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import dagster as dg
import yaml
from typer.testing import CliRunner

from medlake_assets.cli import app
from medlake_assets.definitions import build_definitions
from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.runner import ingest_once
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets.serving.sql import connect
from medlake_assets_tests.conftest import SOURCES_DIR
from medlake_assets_tests.ingest.archive_builders import gzip_bytes, zip_aes
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake

LAB_HEADER = (
    "facility_id,patient_id,order_id,test_code,test_name,value,unit,reference_range,abnormal_flag,"
    "result_status,result_ts\n"
)
LAB = dg.AssetKey(["silver", "lab_results"])


def lab_row(facility: str, order: str, *, bad: bool = False, status: str = "F", hour: int = 10) -> str:
    code = "NOT-A-LOINC" if bad else "2345-7"
    fields = [facility, f"P-{order}", order, code, "Glucose", "5.1", "mmol/L", "3.9-5.5", "N", status]
    return ",".join([*fields, f"2026-11-20T{hour:02d}:00:00Z"]) + "\n"


def land_lab(home: Path, facility: str, name: str, rows: list[str], day: date = DAY) -> None:
    LocalObjectStore(home).put(
        f"landing/lab_results/{day:%Y/%m/%d}/{facility}/{name}.csv.gz",
        gzip_bytes((LAB_HEADER + "".join(rows)).encode()),
    )


def check_result(instance: dg.DagsterInstance, key: dg.AssetKey, name: str):
    found = instance.event_log_storage.get_latest_asset_check_execution_by_key([dg.AssetCheckKey(key, name)])
    (execution,) = found.values()
    return execution.evaluation


def query(lake, sql: str) -> list[tuple]:
    return connect(lake).execute(sql).fetchall()


def test_one_facility_over_its_threshold_is_held_alone_and_the_others_publish(tmp_path, archive_password):
    """One batch, three facilities: F1 has 10 bad rows of 40 (held), F2 is clean, F3 sends a 4-row file
    with one bad row (a small sample: the bad row is quarantined, the facility is not held)."""
    home = tmp_path / "home"
    land_lab(home, "F1", "f1", [lab_row("F1", f"A{n}", bad=n % 4 == 0) for n in range(40)])
    land_lab(home, "F2", "f2", [lab_row("F2", f"B{n}") for n in range(40)])
    land_lab(home, "F3", "f3", [lab_row("F3", f"C{n}", bad=n == 0) for n in range(4)])
    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        summary = ingest_once(build_definitions(settings), instance, lake)
        assert summary.failed_runs == 0, "a partly published run succeeds"
        gate = check_result(instance, LAB, "quality_gate")
        assert gate.passed is True
        assert gate.severity == dg.AssetCheckSeverity.WARN
        assert gate.metadata["held_facilities"].value == {"F1": 30}
        assert gate.metadata["published_facilities"].value == 2
        held = check_result(instance, LAB, "held_back")
        assert held.passed is False and held.severity == dg.AssetCheckSeverity.WARN
        assert held.metadata["held_facilities"].value == {"F1": 30}

    assert lake.ledger.processed_batches("silver.lab_results", DAY), "the batch was taken in"
    assert query(lake, "SELECT facility_id, count(*) FROM silver.lab_results GROUP BY 1 ORDER BY 1") == [
        ("F2", 40),
        ("F3", 3),
    ]
    assert query(
        lake, "SELECT _facility, rule, count(*) FROM quarantine.lab_results GROUP BY ALL ORDER BY 1"
    ) == [("F1", "check.regex:test_code", 10), ("F3", "check.regex:test_code", 1)]
    assert query(
        lake, "SELECT source, facility, landing_day, status, rows, rejected, threshold FROM meta.held"
    ) == [("lab_results", "F1", DAY, "held", 40, 10, 0.05)]
    # The reason names rules and counts only, never a value.
    (rules,) = query(lake, "SELECT rules FROM meta.held")[0]
    assert yaml.safe_load(rules) == {"check.regex:test_code": 10}
    assert "NOT-A-LOINC" not in rules


def test_released_rows_publish_and_a_later_batch_never_wins_by_arriving_first(tmp_path, archive_password):
    """F1's first file is held (3 bad rows of 10) and holds order K at status F, 10:00. Its next file is
    clean and brings K's older preliminary P (09:00): it publishes at once. Releasing the first file
    publishes its passing rows, and K ends at F: the merge orders versions by result time and status,
    whatever order they were published in."""
    home = tmp_path / "home"
    first = [lab_row("F1", "K", status="F", hour=10)] + [lab_row("F1", f"A{n}", bad=n < 3) for n in range(9)]
    land_lab(home, "F1", "first", first)
    land_lab(home, "F2", "other", [lab_row("F2", f"B{n}") for n in range(20)])
    settings = local_settings(home)
    lake = open_lake(settings)
    defs = build_definitions(settings)
    env = {"MEDLAKE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    with dg.instance_for_test() as instance:
        assert ingest_once(defs, instance, lake).failed_runs == 0
        assert query(lake, "SELECT DISTINCT facility_id FROM silver.lab_results") == [("F2",)]

        land_lab(home, "F1", "second", [lab_row("F1", "K", status="P", hour=9), lab_row("F1", "L")])
        assert ingest_once(defs, instance, lake).failed_runs == 0
        assert query(
            lake, "SELECT order_id, result_status FROM silver.lab_results WHERE facility_id = 'F1' ORDER BY 1"
        ) == [("K", "P"), ("L", "F")], "the later batch published; the held one did not"

    released = CliRunner().invoke(
        app, ["release", "--source", "lab_results", "--facility", "F1", "--by", "dr.ops"], env=env
    )
    assert released.exit_code == 0, released.output
    assert "F1" in released.output and "7 rows published" in released.output
    assert query(
        lake, "SELECT order_id, result_status FROM silver.lab_results WHERE facility_id = 'F1' ORDER BY 1"
    ) == [
        ("A3", "F"),
        ("A4", "F"),
        ("A5", "F"),
        ("A6", "F"),
        ("A7", "F"),
        ("A8", "F"),
        ("K", "F"),
        ("L", "F"),
    ]
    assert query(
        lake, "SELECT status, released_by, released_at IS NOT NULL, published_at IS NOT NULL FROM meta.held"
    ) == [("published", "dr.ops", True, True)]
    # The bad rows stay in quarantine: a release publishes the rows that pass the rules, not the others.
    assert query(lake, "SELECT count(*) FROM quarantine.lab_results WHERE _facility = 'F1'") == [(3,)]

    again = CliRunner().invoke(app, ["release", "--source", "lab_results", "--facility", "F1"], env=env)
    assert again.exit_code == 1
    assert "nothing held" in again.output


def test_held_rows_publish_by_themselves_once_metadata_lets_them_pass(tmp_path, archive_password):
    """F1 is held under the shipped 5%; a metadata change raising F1's own threshold makes the catch-up
    sensor ask for one re-evaluation of the day, with no new data, and the held rows publish."""
    home = tmp_path / "home"
    land_lab(home, "F1", "f1", [lab_row("F1", f"A{n}", bad=n % 4 == 0) for n in range(40)])
    land_lab(home, "F2", "f2", [lab_row("F2", f"B{n}") for n in range(40)])
    lake = open_lake(local_settings(home))
    with dg.instance_for_test() as instance:
        assert ingest_once(build_definitions(local_settings(home)), instance, lake).failed_runs == 0
        assert query(lake, "SELECT status FROM meta.held") == [("held",)]

        def catch_up(settings) -> list[dg.RunRequest]:
            defs = build_definitions(settings)
            sensor = defs.resolve_sensor_def("silver_catch_up")
            context = dg.build_sensor_context(
                instance=instance, resources={"lake": LakeResource.from_settings(settings)}
            )
            return list(sensor(context).run_requests), defs

        requests, _ = catch_up(local_settings(home))
        assert requests == [], "nothing changed: held rows are not re-run every tick"

        sources = tmp_path / "sources"
        shutil.copytree(SOURCES_DIR, sources)
        spec = yaml.safe_load((sources / "lab_results.yaml").read_text())
        spec["quality"] = {"facilities": {"F1": {"max_error_rate": 0.3}}}
        (sources / "lab_results.yaml").write_text(yaml.safe_dump(spec))
        fixed = local_settings(home, MEDLAKE_SOURCES_DIR=str(sources))
        requests, defs = catch_up(fixed)
        assert [(r.tags["medlake/source"], r.partition_key) for r in requests] == [
            ("lab_results", DAY.isoformat())
        ]
        (request,) = requests
        result = defs.resolve_job_def("refine_lab_results").execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags
        )
        assert result.success
        assert catch_up(fixed)[0] == [], "re-evaluated once"
    assert query(lake, "SELECT facility_id, count(*) FROM silver.lab_results GROUP BY 1 ORDER BY 1") == [
        ("F1", 30),
        ("F2", 40),
    ]
    assert query(lake, "SELECT status, released_by FROM meta.held") == [("published", None)]
    assert query(lake, "SELECT count(*) FROM quarantine.lab_results WHERE _facility = 'F1'") == [(10,)]


def adt_message(facility: str, number: int, timestamp: str) -> str:
    return (
        f"MSH|^~\\&|EHR|{facility}|LAKE|X|{timestamp}||ADT^A01^ADT_A01|C{number}|P|2.5\r"
        f"PID|1||P{number}^^^{facility}^MR||Doe^Jo||19800101|F\r"
        f"PV1|1|I|ICU^1^A||||||||||||||||V{facility}{number}\r"
    )


def test_a_source_with_every_facility_held_fails_its_gate_and_release_feeds_encounters(
    tmp_path, archive_password
):
    """Nothing publishable: the blocking gate fails (ERROR) and encounters are not built; after a release
    the held ADT rows are in silver and encounters derives their visits."""
    home = tmp_path / "home"
    messages = [adt_message("F1", n, "20261120081500" if n % 4 else "2026BAD") for n in range(40)]
    LocalObjectStore(home).put(
        f"landing/adt_events/{DAY:%Y/%m/%d}/F1/adt.zip",
        zip_aes({"m.txt": "".join(messages).encode()}, archive_password),
    )
    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        assert ingest_once(build_definitions(settings), instance, lake).failed_runs == 1
        gate = check_result(instance, dg.AssetKey(["silver", "adt_events"]), "quality_gate")
        assert gate.passed is False and gate.severity == dg.AssetCheckSeverity.ERROR
        assert gate.metadata["held_facilities"].value == {"F1": 30}
    assert not lake.catalog.table_exists("silver.encounters")

    env = {"MEDLAKE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    released = CliRunner().invoke(
        app, ["release", "--source", "adt_events", "--facility", "F1", "--day", DAY.isoformat()], env=env
    )
    assert released.exit_code == 0, released.output
    assert query(lake, "SELECT count(*) FROM silver.adt_events") == [(30,)]
    assert query(lake, "SELECT count(*) FROM silver.encounters") == [(30,)]
