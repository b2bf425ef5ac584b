"""Report pages: the markdown preview, the HTML page (escaped values, check results), the PNG chart and
its series, chart headers validated against the query, and a real run putting its files in the lake's
object store (the home folder by default, an S3 bucket in production)."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from medlake_assets.gold.render import (
    chart_series,
    markdown_preview,
    partition_name,
    render_html,
    render_report,
)
from medlake_assets.gold.run import CheckOutcome, evaluate_checks, run_report
from medlake_assets.gold.spec import ChartSpec, ReportSpecError, load_report, load_reports
from medlake_assets.lake.objectstore import LocalObjectStore, open_store
from medlake_assets.silver.tables import ensure_table
from medlake_assets_tests.lake_helpers import local_settings, open_lake

REPORTS_DIR = Path(__file__).resolve().parents[2] / "metadata" / "reports"
AS_OF = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HEADER = """-- description: Occupancy <by> unit & "facility"
-- schedule: daily
{chart}-- checks:
--   - {{rule: unique, columns: [facility, unit]}}
--   - {{rule: range, column: rate, min: 0, max: 1, severity: warn}}
SELECT facility, unit, rate FROM silver.beds
"""
CHART = "-- chart: {kind: bar, x: unit, y: rate, group: facility}\n"

ROWS = pa.table(
    {
        "facility": ["F1", "F1", "F2"],
        "unit": ["ICU", "<ED>", "ICU"],
        "rate": [0.5, 1.25, None],
    }
)


def report(tmp_path: Path, chart: str = CHART):
    path = tmp_path / "occupancy.sql"
    path.write_text(HEADER.format(chart=chart))
    return load_report(path)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (right after the 8-byte signature and chunk header)."""
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_partition_name_is_utc_minute():
    assert partition_name(AS_OF) == "2026-11-26T0700Z"
    assert partition_name(datetime.fromisoformat("2026-11-26T09:05:59+02:00")) == "2026-11-26T0705Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        partition_name(datetime(2026, 11, 26, 7, 0))


def test_markdown_preview_exact():
    assert markdown_preview(ROWS) == (
        "| facility   | unit   | rate   |\n"
        "|------------|--------|--------|\n"
        "| F1         | ICU    | 0.5    |\n"
        "| F1         | <ED>   | 1.25   |\n"
        "| F2         | ICU    |        |\n"
        "\n"
        "3 of 3 rows"
    )


def test_markdown_preview_limits_rows_and_escapes_pipes():
    rows = pa.table({"name": ["a|b", "c\nd", "e"], "n": [1, 2, 3]})
    assert markdown_preview(rows, limit=2) == (
        "| name   | n   |\n|--------|-----|\n| a\\|b   | 1   |\n| c d    | 2   |\n\n2 of 3 rows"
    )


def test_html_escapes_values_and_shows_checks(tmp_path):
    spec = report(tmp_path)
    checks = evaluate_checks(ROWS, spec.header.checks)
    page = render_html(spec, ROWS, AS_OF, checks, chart_file="chart.png")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>gold.occupancy</title>" in page
    assert "<p>Occupancy &lt;by&gt; unit &amp; &quot;facility&quot;</p>" in page
    assert "<p>As of 2026-11-26T07:00:00+00:00; showing 3 of 3 rows.</p>" in page
    assert "<tr><td>F1</td><td>&lt;ED&gt;</td><td>1.25</td></tr>" in page
    assert "<tr><td>F2</td><td>ICU</td><td></td></tr>" in page
    assert "<ED>" not in page
    assert (
        "<tr><td>unique_facility_unit</td><td>one row per (facility, unit)</td><td>error</td>"
        '<td><span class="passed">passed</span></td><td>0</td></tr>'
    ) in page
    assert (
        "<tr><td>range_rate</td><td>rate within [0.0, 1.0]</td><td>warn</td>"
        '<td><span class="failed">failed</span></td><td>1</td></tr>'
    ) in page
    assert '<img src="chart.png" alt="occupancy chart">' in page


def test_html_shows_at_most_the_limit_and_says_so(tmp_path):
    rows = pa.table({"facility": [f"F{i}" for i in range(7)], "unit": ["U"] * 7, "rate": [0.1] * 7})
    page = render_html(report(tmp_path, chart=""), rows, AS_OF, [], limit=5)
    assert page.count("<tr><td>F") == 5
    assert "<td>F4</td>" in page and "<td>F5</td>" not in page
    assert "showing 5 of 7 rows" in page
    assert "<p>No checks.</p>" in page
    assert "<img" not in page


def test_chart_series_grouped_and_ungrouped():
    rows = pa.table(
        {
            "facility": ["F1", "F1", "F2", "F2", "F2"],
            "day": [date(2026, 11, 2), date(2026, 11, 1), date(2026, 11, 1), date(2026, 11, 3), None],
            "admissions": [4, 3, 5, 2, 9],
        }
    )
    labels, series = chart_series(rows, ChartSpec(kind="bar", x="day", y="admissions", group="facility"))
    assert labels == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert series == {"F1": [3.0, 4.0, 0.0], "F2": [5.0, 0.0, 2.0]}
    labels, series = chart_series(rows, ChartSpec(kind="bar", x="day", y="admissions"))
    assert labels == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert series == {"admissions": [8.0, 4.0, 2.0]}


def test_chart_series_keeps_the_last_60_x_values():
    rows = pa.table({"n": list(range(100)), "y": [1] * 100})
    labels, series = chart_series(rows, ChartSpec(kind="bar", x="n", y="y"))
    assert labels == [str(n) for n in range(40, 100)]
    assert series == {"y": [1.0] * 60}


def test_render_report_writes_page_and_png(tmp_path):
    spec = report(tmp_path)
    checks = [CheckOutcome("unique_facility_unit", True, "error", 0, "one row per (facility, unit)")]
    rendered = render_report(LocalObjectStore(tmp_path / "home"), spec, ROWS, AS_OF, checks)
    folder = tmp_path / "home" / "reports" / "occupancy" / "2026-11-26T0700Z"
    assert rendered.html == (folder / "report.html").as_uri()
    assert rendered.chart == (folder / "chart.png").as_uri()
    assert sorted(path.name for path in folder.iterdir()) == ["chart.png", "report.html"]
    assert "<td>&lt;ED&gt;</td>" in (folder / "report.html").read_text(encoding="utf-8")
    png = folder / "chart.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 5_000  # axes, bars, labels and legend, not an empty image
    assert png_size(png) == (1000, 500)  # 10 x 5 inches at 100 dpi
    assert rendered.preview == markdown_preview(ROWS)


@pytest.mark.s3
def test_render_report_puts_pages_in_s3(tmp_path, s3_bucket):
    store = open_store(f"s3://{s3_bucket}/lake")
    rendered = render_report(store, report(tmp_path), ROWS, AS_OF, [], partition="2026-11-20")
    assert rendered.html == f"s3://{s3_bucket}/lake/reports/occupancy/2026-11-20/report.html"
    assert "<td>&lt;ED&gt;</td>" in store.get("reports/occupancy/2026-11-20/report.html").decode()
    assert store.get("reports/occupancy/2026-11-20/chart.png")[:8] == PNG_MAGIC


def test_render_report_without_chart_and_with_a_partition(tmp_path):
    spec = report(tmp_path, chart="")
    rendered = render_report(LocalObjectStore(tmp_path), spec, ROWS, AS_OF, [], partition="2026-11-20")
    assert rendered.chart is None
    folder = tmp_path / "reports" / "occupancy" / "2026-11-20"
    assert rendered.html == (folder / "report.html").as_uri()
    assert sorted(path.name for path in folder.iterdir()) == ["report.html"]


def test_shipped_charts():
    charts = {report.name: report.header.chart for report in load_reports(REPORTS_DIR)}
    assert charts == {
        "abnormal_lab_rates": None,
        "bed_availability": ChartSpec(kind="bar", x="unit", y="occupancy_rate", group="facility_id"),
        "daily_admissions_discharges": ChartSpec(kind="bar", x="day", y="admissions", group="facility"),
        "data_quality_scorecard": None,
    }


@pytest.mark.parametrize(
    ("chart", "message"),
    [
        ("{kind: line, x: unit, y: rate}", "chart.kind: Input should be 'bar'"),
        ("{kind: bar, x: unit}", "chart.y: Field required"),
        ("{kind: bar, x: unit, y: rate, colour: red}", "chart.colour: Extra inputs are not permitted"),
        ("{kind: bar, x: unit, y: beds}", "chart: column 'beds' is not an output column of the query"),
        ("{kind: bar, x: unit, y: rate, group: site}", "chart: column 'site' is not an output column"),
    ],
)
def test_invalid_chart_headers_name_file_and_field(tmp_path, chart, message):
    with pytest.raises(ReportSpecError, match="occupancy.sql: ") as error:
        report(tmp_path, chart=f"-- chart: {chart}\n")
    assert message in str(error.value)


def test_run_report_renders_after_the_write(tmp_path):
    lake = open_lake(local_settings(tmp_path / "home"))
    lake.catalog.create_namespace_if_not_exists("silver")
    beds = pa.table({"facility": ["F1", "F2"], "unit": ["ICU", "ED"], "rate": [0.25, 0.75]})
    ensure_table(lake.catalog, "silver.beds", beds.schema, []).append(beds)
    run = run_report(lake, report(tmp_path), AS_OF)
    folder = tmp_path / "home" / "reports" / "occupancy" / "2026-11-26T0700Z"
    assert (run.rendered.html, run.rendered.chart) == (
        (folder / "report.html").as_uri(),
        (folder / "chart.png").as_uri(),
    )
    assert run.rendered.preview == (
        "| facility   | unit   | rate   |\n"
        "|------------|--------|--------|\n"
        "| F1         | ICU    | 0.25   |\n"
        "| F2         | ED     | 0.75   |\n"
        "\n"
        "2 of 2 rows"
    )
    assert (folder / "chart.png").read_bytes()[:8] == PNG_MAGIC
    assert "<tr><td>F2</td><td>ED</td><td>0.75</td></tr>" in (folder / "report.html").read_text()
