"""Report headers: the shipped files load with schedules and lineage; invalid ones name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlake_assets.gold.spec import (
    ReportSpecError,
    load_report,
    load_reports,
    parse_query,
    split_header,
    tables_read,
)
from medlake_assets_tests.conftest import SOURCES_DIR

REPORTS_DIR = Path(__file__).resolve().parents[2] / "metadata" / "reports"


def test_shipped_reports_schedules_and_reads():
    reports = {report.name: report for report in load_reports(REPORTS_DIR)}
    assert {name: (report.header.schedule, report.cron) for name, report in reports.items()} == {
        "abnormal_lab_rates": ("weekly", "30 0 * * 1"),
        "bed_availability": ("on_update", None),
        "daily_admissions_discharges": ("daily", "15 0 * * *"),
        "data_quality_scorecard": ("nightly", "0 2 * * *"),
    }
    assert reports["bed_availability"].reads == (("silver", "bed_census"),)
    assert reports["daily_admissions_discharges"].reads == (
        ("silver", "adt_events"),
        ("silver", "encounters"),
    )
    assert reports["abnormal_lab_rates"].reads == (("silver", "lab_results"),)
    assert {report.identifier for report in reports.values()} == {f"gold.{name}" for name in reports}


def test_scorecard_reads_every_source_quarantine():
    scorecard = load_report(REPORTS_DIR / "data_quality_scorecard.sql")
    sources = {path.stem for path in SOURCES_DIR.glob("*.yaml") if not path.stem.startswith("_")}
    assert {table for namespace, table in scorecard.reads if namespace == "quarantine"} == sources
    assert ("meta", "files") in scorecard.reads


def test_split_header_and_ctes_are_not_tables():
    header, sql = split_header("-- a: 1\n--b: 2\nWITH x AS (SELECT 1)\n-- trailing\nSELECT * FROM x\n")
    assert header == "a: 1\nb: 2"
    assert sql == "WITH x AS (SELECT 1)\n-- trailing\nSELECT * FROM x"
    assert tables_read(
        parse_query(
            "WITH x AS (SELECT * FROM silver.a) SELECT * FROM x JOIN gold.b USING (k), range(3) "
            "WHERE k IN (SELECT k FROM meta.files)"
        )
    ) == (("gold", "b"), ("meta", "files"), ("silver", "a"))


GOOD_HEADER = "-- description: d\n-- schedule: daily\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- description: d\n-- schedule: monthly\nSELECT 1", "schedule: Input should be 'hourly', 'daily'"),
        ("-- schedule: daily\nSELECT 1", "description: Field required"),
        (GOOD_HEADER + "-- colour: red\nSELECT 1", "colour: Extra inputs are not permitted"),
        (GOOD_HEADER + "-- target: silver.x\nSELECT 1", "target: String should match pattern"),
        (
            GOOD_HEADER + "-- checks:\n--   - {rule: range, column: x}\nSELECT 1",
            "a range check needs min, max",
        ),
        (
            GOOD_HEADER + "-- checks:\n--   - {rule: sorted, column: x}\nSELECT 1",
            "checks.0: Input tag 'sorted'",
        ),
        (
            GOOD_HEADER
            + "-- checks:\n--   - {rule: range, column: x, min: 0}\n--   - {rule: range, column: x, max: 1}\n"
            "SELECT 1",
            "checks: two checks would be named 'range_x'",
        ),
        (
            GOOD_HEADER + "-- partition_by: [week(day)]\nSELECT 1",
            "partition_by: Value error, partition field",
        ),
        ("-- description: [unclosed\nSELECT 1", "header: not valid YAML"),
        ("-- just text\nSELECT 1", "header: must be a YAML mapping"),
        (GOOD_HEADER, "sql: no query after the header"),
        (GOOD_HEADER + "SELECT * FROM encounters", "sql: table 'encounters' has no namespace"),
        (GOOD_HEADER + "SELECT 1; SELECT 2", "sql: the SQL must be exactly one query"),
        (GOOD_HEADER + "DELETE FROM silver.x", "sql: the SQL must be exactly one query"),
        (GOOD_HEADER + "SELECT FROM WHERE (", "sql: "),
    ],
)
def test_invalid_report_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "broken.sql"
    path.write_text(text)
    with pytest.raises(ReportSpecError) as error:
        load_report(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_file_name_must_be_an_identifier(tmp_path):
    path = tmp_path / "Bad-Name.sql"
    path.write_text(GOOD_HEADER + "SELECT 1")
    with pytest.raises(ReportSpecError, match=r"Bad-Name\.sql: name: String should match pattern"):
        load_report(path)


def test_two_reports_writing_one_table(tmp_path):
    (tmp_path / "a.sql").write_text(GOOD_HEADER + "-- target: gold.shared\nSELECT 1")
    (tmp_path / "b.sql").write_text(GOOD_HEADER + "-- target: gold.shared\nSELECT 1")
    with pytest.raises(ReportSpecError, match=r"b\.sql: target: gold.shared is also written by .*a\.sql"):
        load_reports(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(ReportSpecError, match="report metadata folder not found"):
        load_reports(tmp_path / "nope")
