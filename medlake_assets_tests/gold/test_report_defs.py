"""Gold assets generated from the report headers (keys, lineage, checks, schedules, eager condition), and
reports materialized for real on a small generated lake."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.gold import (
    build_report_defs,
    load_reports,
    report_automation_sensor,
    report_run_tags,
)
from medlake_assets.defs.policies import apply_policies
from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.runner import ingest_once
from medlake_assets.serving.sql import connect
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake, table_rows
from medlake_dev.generate import write_feeds

REPORTS_DIR = Path(__file__).resolve().parents[2] / "metadata" / "reports"
# The first and last UTC day any admission, discharge or ADT message of the lake falls on.
DATA_DAYS = """
    SELECT min(day)::DATE, max(day)::DATE FROM (
        SELECT admit_ts::DATE AS day FROM silver.encounters UNION ALL
        SELECT discharge_ts::DATE FROM silver.encounters UNION ALL
        SELECT message_ts::DATE FROM silver.adt_events
    )
"""
GENERATION = {"facilities": 2, "archives": 24, "seed": 5, "bad_rate": 0.0, "day": DAY, "size_scale": 0.02}


def gold(name: str) -> dg.AssetKey:
    return dg.AssetKey(["gold", name])


def report_defs(home: Path | None = None) -> dg.Definitions:
    """The gold definitions with the project's policies; with a lake folder, standalone (the `lake`
    resource included)."""
    resources = {"lake": LakeResource.from_settings(local_settings(home))} if home else {}
    return apply_policies(
        dg.Definitions.merge(
            *[build_report_defs(report) for report in load_reports(REPORTS_DIR)],
            dg.Definitions(sensors=[report_automation_sensor()], resources=resources),
        )
    )


def test_assets_lineage_and_checks_from_headers(tmp_path):
    defs = report_defs(tmp_path)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    gold_keys = {key for key in graph.get_all_asset_keys() if key.path[0] == "gold"}
    assert gold_keys == {
        gold("abnormal_lab_rates"),
        gold("bed_availability"),
        gold("daily_admissions_discharges"),
        gold("data_quality_scorecard"),
    }
    deps = {key.path[1]: set(graph.get(key).parent_keys) for key in gold_keys}
    assert deps == {
        "abnormal_lab_rates": {dg.AssetKey(["silver", "lab_results"])},
        "bed_availability": {dg.AssetKey(["silver", "bed_census"])},
        "daily_admissions_discharges": {
            dg.AssetKey(["silver", "adt_events"]),
            dg.AssetKey(["silver", "encounters"]),
        },
        "data_quality_scorecard": set(),  # meta.files and quarantine.* are not assets
    }
    assert {key.path[1]: graph.get(key).group_name for key in gold_keys} == dict.fromkeys(deps, "gold")
    checks = {(check.asset_key.path[1], check.name) for check in graph.asset_check_keys}
    assert ("bed_availability", "unique_facility_id_unit") in checks
    assert ("bed_availability", "range_occupancy_rate") in checks
    assert len(checks) == 12
    on_update = {key.path[1] for key in gold_keys if graph.get(key).automation_condition is not None}
    assert on_update == {"bed_availability"}


def test_schedules_from_headers(tmp_path):
    defs = report_defs(tmp_path)
    schedules = {
        schedule.name: (schedule.cron_schedule, schedule.job_name, schedule.execution_timezone)
        for schedule in defs.schedules
    }
    assert schedules == {
        "report_abnormal_lab_rates_weekly": ("30 0 * * 1", "report_abnormal_lab_rates", "UTC"),
        "report_daily_admissions_discharges_daily": (
            "15 0 * * *",
            "report_daily_admissions_discharges",
            "UTC",
        ),
        "report_data_quality_scorecard_nightly": ("0 2 * * *", "report_data_quality_scorecard", "UTC"),
    }
    job = defs.resolve_job_def("report_daily_admissions_discharges")
    assert job.asset_layer.executable_asset_keys == {gold("daily_admissions_discharges")}


def test_reports_materialize_on_a_real_lake(tmp_path, archive_password):
    home = tmp_path / "home"
    manifest = write_feeds(home, **GENERATION)
    settings = local_settings(home)
    lake = open_lake(settings)
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    with dg.instance_for_test() as instance:
        # Eager never fires on its first evaluation; after silver changes, only the on_update report does.
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0
        # Without the runner's own report refresh, so the automation condition is what is tested here.
        assert ingest_once(defs, instance, lake, refresh_reports=False).failed_runs == 0
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        names = [report.name for report in load_reports(REPORTS_DIR)]
        requested = {name for name in names if second.get_num_requested(gold(name))}
        assert requested == {"bed_availability"}
        check_reports(lake, defs, instance, manifest)


def check_reports(lake, defs, instance, manifest) -> None:
    specs = load_reports(REPORTS_DIR)
    whole = [defs.resolve_assets_def(gold(report.name)) for report in specs if not report.header.partitions]
    result = dg.materialize(whole, instance=instance)
    evaluations = result.get_asset_check_evaluations()
    # The daily report over every day the data touches, in one single-run backfill of that range.
    (daily,) = [report for report in specs if report.header.partitions]
    first, last = connect(lake).execute(DATA_DAYS).fetchone()
    ranged = dg.materialize(
        [defs.resolve_assets_def(gold(daily.name))],
        instance=instance,
        tags=report_run_tags(daily, f"{first}...{last}"),
    )
    assert result.success and ranged.success
    evaluations += ranged.get_asset_check_evaluations()
    assert all(check.passed for check in evaluations)
    assert len(evaluations) == 12

    con = connect(lake)  # after the runs: views are made for the tables that exist when connecting
    one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    beds = one("SELECT count(*) FROM silver.bed_census WHERE NOT _deleted")
    assert one("SELECT sum(beds) FROM gold.bed_availability") == beds
    assert one("SELECT sum(occupied + available + cleaning + blocked) FROM gold.bed_availability") == beds
    assert one("SELECT sum(admissions) FROM gold.daily_admissions_discharges") == one(
        "SELECT count(*) FROM silver.encounters WHERE admit_ts IS NOT NULL"
    )
    assert one("SELECT sum(final_results) FROM gold.abnormal_lab_rates") == one(
        "SELECT count(*) FROM silver.lab_results WHERE NOT _deleted AND result_status IN ('F', 'C')"
    )
    scorecard = table_rows(lake, "gold.data_quality_scorecard").to_pylist()
    archives = {source: counts["archives"] for source, counts in manifest["sources"].items()}
    assert {
        source: sum(row["archives"] for row in scorecard if row["source"] == source) for source in archives
    } == archives
    records = {source: counts["records"] for source, counts in manifest["sources"].items()}
    assert {
        source: sum(row["records"] for row in scorecard if row["source"] == source) for source in records
    } == records
    assert all(
        row["quarantined_rows"] == 0 and json.loads(row["quarantined_by_rule"]) == {} for row in scorecard
    )

    spec = lake.catalog.load_table("gold.daily_admissions_discharges").spec()
    assert [(field.name, str(field.transform)) for field in spec.fields] == [("day_monthtransform", "month")]

    # A re-run replaces the table: same rows, a new snapshot.
    before = table_rows(lake, "gold.bed_availability").sort_by(
        [("facility_id", "ascending"), ("unit", "ascending")]
    )
    snapshot = lake.catalog.load_table("gold.bed_availability").metadata.current_snapshot_id
    assert dg.materialize([defs.resolve_assets_def(gold("bed_availability"))], instance=instance).success
    after = table_rows(lake, "gold.bed_availability").sort_by(
        [("facility_id", "ascending"), ("unit", "ascending")]
    )
    assert after == before
    assert lake.catalog.load_table("gold.bed_availability").metadata.current_snapshot_id != snapshot
