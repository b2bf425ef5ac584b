"""Partitioned reports: a run rebuilds exactly its day (or range of days) of the gold table, pages go
under `reports/<name>/<partition>/`, the schedule asks for the day that just ended, and `medlake report
--partition` validates what it is given."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from medlake_assets.cli import app
from medlake_assets.defs.gold import build_report_defs, report_run_tags
from medlake_assets.defs.resources import LakeResource
from medlake_assets.gold.spec import ReportSpecError, load_report
from medlake_assets.silver.tables import ensure_table
from medlake_assets_tests.lake_helpers import local_settings, open_lake, table_rows

REPORT = """-- description: admissions per facility and day
-- schedule: daily
-- partitions: {cadence: daily, column: day, start: 2026-11-01}
-- partition_by: [month(day)]
-- checks:
--   - {rule: unique, columns: [facility, day]}
SELECT facility, admit_ts::DATE AS day, count(*) AS admissions
FROM silver.visits
GROUP BY ALL
"""
UNPARTITIONED = """-- description: all admissions per facility
-- schedule: nightly
SELECT facility, count(*) AS admissions FROM silver.visits GROUP BY ALL
"""
VISITS = pa.schema([("facility", pa.string()), ("admit_ts", pa.timestamp("us", tz="UTC"))])


def admit(facility: str, day: int, hour: int = 12) -> dict:
    return {"facility": facility, "admit_ts": datetime(2026, 11, day, hour, tzinfo=UTC)}


@pytest.fixture
def lake_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "visits_daily.sql").write_text(REPORT)
    (reports / "visits_total.sql").write_text(UNPARTITIONED)
    home = tmp_path / "home"
    monkeypatch.setenv("MEDLAKE_HOME", str(home))
    monkeypatch.setenv("MEDLAKE_REPORTS_DIR", str(reports))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    lake = open_lake(local_settings(home, MEDLAKE_REPORTS_DIR=str(reports)))
    visits = ensure_table(lake.catalog, "silver.visits", VISITS, [])
    # The 19th's last admission is 23:30 UTC: it belongs to the 19th, not the 20th.
    visits.append(
        pa.Table.from_pylist(
            [admit("F1", 19), admit("F1", 19, 23), admit("F1", 20), admit("F2", 20), admit("F1", 21)],
            VISITS,
        )
    )
    return lake, load_report(reports / "visits_daily.sql")


def gold_rows(lake) -> list[tuple]:
    rows = table_rows(lake, "gold.visits_daily").to_pylist()
    return sorted((row["facility"], row["day"].isoformat(), row["admissions"]) for row in rows)


def report_defs(lake, report) -> dg.Definitions:
    return dg.Definitions.merge(
        build_report_defs(report),
        dg.Definitions(resources={"lake": LakeResource.from_settings(lake.settings)}),
    )


def materialize(lake, report, partition: str) -> dg.ExecuteInProcessResult:
    asset = report_defs(lake, report).resolve_assets_def(dg.AssetKey(["gold", "visits_daily"]))
    return dg.materialize([asset], tags=report_run_tags(report, partition))


def test_a_run_rebuilds_only_its_window(lake_and_report):
    lake, report = lake_and_report
    assert materialize(lake, report, "2026-11-20").success
    assert gold_rows(lake) == [("F1", "2026-11-20", 1), ("F2", "2026-11-20", 1)]
    assert (lake.settings.home / "reports" / "visits_daily" / "2026-11-20" / "report.html").is_file()

    # A range is one run (one query, one commit) that materializes each of its days.
    result = materialize(lake, report, "2026-11-19...2026-11-21")
    assert result.success
    events = result.get_asset_materialization_events()
    assert sorted(event.partition for event in events) == ["2026-11-19", "2026-11-20", "2026-11-21"]
    assert gold_rows(lake) == [
        ("F1", "2026-11-19", 2),
        ("F1", "2026-11-20", 1),
        ("F1", "2026-11-21", 1),
        ("F2", "2026-11-20", 1),
    ]
    assert (lake.settings.home / "reports" / "visits_daily" / "2026-11-19...2026-11-21").is_dir()

    # Late rows for the 20th and new ones for the 22nd: rebuilding the 20th touches the 20th only.
    lake.catalog.load_table("silver.visits").append(
        pa.Table.from_pylist([admit("F2", 20, 3), admit("F3", 20), admit("F1", 22)], VISITS)
    )
    assert materialize(lake, report, "2026-11-20").success
    assert gold_rows(lake) == [
        ("F1", "2026-11-19", 2),
        ("F1", "2026-11-20", 1),
        ("F1", "2026-11-21", 1),
        ("F2", "2026-11-20", 2),
        ("F3", "2026-11-20", 1),
    ]


def test_the_schedule_runs_the_day_that_just_ended(lake_and_report):
    lake, report = lake_and_report
    defs = report_defs(lake, report)
    (schedule,) = defs.schedules
    tick = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 26, 0, 15, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    (request,) = schedule.evaluate_tick(tick).run_requests
    assert request.partition_key == "2026-11-25"
    assert request.run_key == "2026-11-25"


def test_run_tags_validate_the_partition(lake_and_report):
    _, report = lake_and_report
    assert report_run_tags(report, "2026-11-20") == {"dagster/partition": "2026-11-20"}
    assert report_run_tags(report, "2026-11-20...2026-11-20") == {"dagster/partition": "2026-11-20"}
    assert report_run_tags(report, "2026-11-02...2026-11-05") == {
        "dagster/asset_partition_range_start": "2026-11-02",
        "dagster/asset_partition_range_end": "2026-11-05",
    }
    today = datetime.now(UTC).date().isoformat()
    assert report_run_tags(report) == {"dagster/partition": today}  # the current day, near real time
    with pytest.raises(ValueError, match="no daily partition '2026-10-31'"):
        report_run_tags(report, "2026-10-31")  # before the partitions start
    with pytest.raises(ValueError, match="no daily partition '20-11-2026'"):
        report_run_tags(report, "20-11-2026")
    with pytest.raises(ValueError, match="ends before it starts"):
        report_run_tags(report, "2026-11-05...2026-11-02")


def test_cli_report_partition_and_all(lake_and_report):
    lake, _ = lake_and_report
    runner = CliRunner()
    done = runner.invoke(app, ["report", "visits_daily", "--partition", "2026-11-19...2026-11-20"])
    assert done.exit_code == 0, done.output
    assert [row[1] for row in gold_rows(lake)] == ["2026-11-19", "2026-11-20", "2026-11-20"]

    refused = runner.invoke(app, ["report", "visits_total", "--partition", "2026-11-19"])
    assert refused.exit_code == 2
    assert "visits_total is not partitioned" in refused.output
    assert runner.invoke(app, ["report"]).exit_code == 2  # neither a name nor --all

    # --all: the partitioned report for the given day, the other one whole.
    done = runner.invoke(app, ["report", "--all", "--partition", "2026-11-21"])
    assert done.exit_code == 0, done.output
    assert ("F1", "2026-11-21", 1) in gold_rows(lake)
    totals = table_rows(lake, "gold.visits_total").to_pylist()
    assert sorted((row["facility"], row["admissions"]) for row in totals) == [("F1", 4), ("F2", 1)]


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (
            "-- schedule: on_update\n-- partitions: {cadence: daily, column: day}",
            "on_update reports are rebuilt",
        ),
        (
            "-- schedule: daily\n-- partitions: {cadence: daily, column: admit_day}",
            "partitions.column: column",
        ),
        ("-- schedule: daily\n-- partitions: {cadence: hourly, column: day}", "partitions.cadence"),
    ],
)
def test_partition_headers_are_validated(tmp_path, header, error):
    path = tmp_path / "bad.sql"
    path.write_text(f"-- description: x\n{header}\nSELECT 1 AS day")
    with pytest.raises(ReportSpecError, match=error) as raised:
        load_report(path)
    assert str(path) in str(raised.value)
