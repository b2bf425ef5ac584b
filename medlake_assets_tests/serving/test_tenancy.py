"""`read(..., customer=...)` on a real generated lake: every table (bronze, silver, quarantine, gold), now and
as of an earlier moment, gives a customer exactly the rows of its facilities, never another customer's;
the filter is pushed down to Iceberg; a table without a facility column and an unknown customer are
refused. The report runs of the same lake write each customer's page with its facilities only.

Customers are the shipped `metadata/access/demo.yaml`: northwind (F0001, F0002, F0005) and riverside
(F0003, F0004, F0006); the lake is `medlake generate` output for six facilities over two landing days
(with planted bad files, so quarantine tables have rows), loaded with the real pipeline, and the shipped
reports run after each day.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from medlake_assets.gold.run import PartitionWindow, run_report
from medlake_assets.gold.spec import load_reports
from medlake_assets.lake import Lake
from medlake_assets.serving.catalog_info import AsOfError, table_names
from medlake_assets.serving.read import plan_read, read
from medlake_assets.serving.tenancy import TenancyError, facility_rows
from medlake_assets.spec.access import facility_column, load_access
from medlake_assets_tests.lake_helpers import load_landed, local_settings
from medlake_dev.generate import write_feeds

DAYS = [date(2026, 11, 18), date(2026, 11, 20)]
GENERATION = {"facilities": 6, "archives": 20, "bad_rate": 0.3, "size_scale": 0.02}
CUSTOMERS = ["northwind", "riverside"]


def _run_reports(lake: Lake) -> list:
    runs = []
    for report in load_reports(lake.settings.reports_dir):
        window = None
        if report.header.partitions is not None:
            start = datetime.combine(DAYS[0] - timedelta(days=2), datetime.min.time(), UTC)
            end = datetime.combine(DAYS[-1] + timedelta(days=1), datetime.min.time(), UTC)
            window = PartitionWindow(start, end, f"{start:%Y-%m-%d}...{end:%Y-%m-%d}")
        runs.append(run_report(lake, report, window=window))
    return runs


@pytest.fixture(scope="module")
def tenancy_lake(tmp_path_factory):
    """(lake, the moment between the two days' loads, the report runs of the second day)."""
    home = tmp_path_factory.mktemp("tenancy") / "home"
    lake = Lake(local_settings(home))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDLAKE_ARCHIVE_PASSWORD", "synthetic-tenancy-archive-password")
        env.setenv("MEDLAKE_INGEST_WORKERS", "1")
        write_feeds(home, seed=21, day=DAYS[0], **GENERATION)
        load_landed(lake)
        _run_reports(lake)
        time.sleep(0.01)  # the moment lies strictly between the two days' commits
        between = datetime.now(UTC)
        time.sleep(0.01)
        write_feeds(home, seed=22, day=DAYS[1], **GENERATION)
        load_landed(lake)
        runs = _run_reports(lake)
    return lake, between, runs


@pytest.fixture(scope="module")
def access(tenancy_lake):
    lake, _, _ = tenancy_lake
    return load_access(lake.settings.access_dir)


def _sorted_rows(rows: pa.Table) -> list[str]:
    return sorted(repr(row) for row in rows.to_pylist())


def _check_every_table(lake: Lake, access, as_of: datetime | None) -> dict[str, dict[str, int]]:
    """Per table, rows per customer; asserts each customer's read is exactly its facilities' rows."""
    counts: dict[str, dict[str, int]] = {}
    for table in table_names(lake.catalog):
        try:
            full = read(table, lake=lake, as_of=as_of)
        except AsOfError:  # created after `as_of`
            assert as_of is not None, table
            continue
        column = facility_column(full.column_names)
        assert column is not None, table
        counts[table] = {}
        for customer in CUSTOMERS:
            facilities = set(access.customers[customer].facilities)
            scoped = read(table, lake=lake, as_of=as_of, customer=customer)
            assert scoped.snapshot_id == full.snapshot_id, table
            assert set(scoped.arrow.column(column).to_pylist()) <= facilities, (table, customer)
            expected = facility_rows(full.arrow, column, facilities)
            assert scoped.num_rows == expected.num_rows, (table, customer)
            assert _sorted_rows(scoped.arrow) == _sorted_rows(expected), (table, customer)
            counts[table][customer] = scoped.num_rows
        # Every facility belongs to a customer, so the two customers' rows are all the rows.
        unowned = pc.sum(pc.is_null(full.arrow.column(column))).as_py() or 0
        assert sum(counts[table].values()) + unowned == full.num_rows, table
    return counts


def test_every_table_gives_each_customer_exactly_its_facilities_rows(tenancy_lake, access):
    lake, _, _ = tenancy_lake
    counts = _check_every_table(lake, access, as_of=None)
    namespaces = {table.split(".")[0] for table in counts}
    assert namespaces == {"bronze", "silver", "quarantine", "gold"}
    assert len(counts) >= 17  # 4 bronze, 5 silver, 4 quarantine, 4 gold
    for table in ["bronze.lab_results", "silver.adt_events", "silver.encounters", "gold.bed_availability"]:
        assert all(count > 0 for count in counts[table].values()), (table, counts[table])
    for customer in CUSTOMERS:
        assert sum(per[customer] for table, per in counts.items() if table.startswith("quarantine.")) > 0


def test_time_travel_gives_each_customer_its_rows_as_they_were(tenancy_lake, access):
    lake, between, _ = tenancy_lake
    then = _check_every_table(lake, access, as_of=between)
    now = _check_every_table(lake, access, as_of=None)
    for table in ["bronze.adt_events", "silver.lab_results", "gold.daily_admissions_discharges"]:
        for customer in CUSTOMERS:
            assert 0 < then[table][customer] < now[table][customer], (table, customer)


def test_customer_filter_is_pushed_down_and_cannot_be_widened(tenancy_lake, access):
    lake, _, _ = tenancy_lake
    full = plan_read("silver.lab_results", lake=lake)
    northwind = plan_read("silver.lab_results", lake=lake, customer="northwind")
    all_files = {task.file.file_path for task in full.scan.plan_files()}
    northwind_files = {task.file.file_path for task in northwind.scan.plan_files()}
    # Files of riverside's facility buckets are pruned at planning: they are never opened.
    assert northwind_files < all_files
    riverside = access.customers["riverside"].facilities[0]
    assert read("silver.lab_results", where=f"facility_id = '{riverside}'", lake=lake).num_rows > 0
    widened = read(
        "silver.lab_results", where=f"facility_id = '{riverside}'", lake=lake, customer="northwind"
    )
    assert widened.num_rows == 0
    # Without the facility column among the columns read, the rows are still scoped.
    projected = read("silver.lab_results", columns=["patient_id"], lake=lake, customer="northwind")
    assert projected.column_names == ["patient_id"]
    assert projected.num_rows == read("silver.lab_results", lake=lake, customer="northwind").num_rows


def test_a_table_without_a_facility_column_is_refused_for_a_customer(tenancy_lake):
    lake, _, _ = tenancy_lake
    totals = pa.table({"day": [date(2026, 11, 20)], "admissions": [12]})
    lake.catalog.create_table("gold.network_totals", schema=totals.schema).append(totals)
    lake.catalog.create_table("gold.network_empty", schema=totals.schema)
    try:
        assert read("gold.network_totals", lake=lake).num_rows == 1  # an operator read still works
        for table in ["gold.network_totals", "gold.network_empty"]:
            with pytest.raises(TenancyError, match=rf"^{table} has no facility column \(_facility, "):
                read(table, lake=lake, customer="northwind")
    finally:  # the other tests check every table of the lake
        lake.catalog.drop_table("gold.network_totals")
        lake.catalog.drop_table("gold.network_empty")


def test_an_unknown_customer_is_refused(tenancy_lake):
    lake, _, _ = tenancy_lake
    with pytest.raises(
        TenancyError, match=r"^unknown customer 'acme'; the access metadata declares: northwind, riverside$"
    ):
        read("silver.lab_results", lake=lake, customer="acme")
    with pytest.raises(TenancyError, match="unknown customer"):
        read("silver.no_such_table", lake=lake, customer="acme")  # before the table is even looked up


def _page_rows(url: str) -> tuple[str, list[list[str]]]:
    page = Path(urlparse(url).path).read_text(encoding="utf-8")
    body = page.split("<h2>Rows</h2>", 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return page, [
        re.findall(r"<td>(.*?)</td>", line) for line in body.splitlines() if line.startswith("<tr>")
    ]


def test_report_runs_write_each_customer_a_page_of_its_facilities(tenancy_lake, access):
    lake, _, runs = tenancy_lake
    assert {run.report for run in runs} == {
        "abnormal_lab_rates",
        "bed_availability",
        "daily_admissions_discharges",
        "data_quality_scorecard",
    }
    for run in runs:
        assert sorted(run.customer_pages.pages) == CUSTOMERS, run.report
        gold = read(run.identifier, lake=lake)
        column = facility_column(gold.column_names)
        position = gold.column_names.index(column)
        for customer in CUSTOMERS:
            facilities = access.customers[customer].facilities
            page, rows = _page_rows(run.customer_pages.pages[customer].html)
            expected = facility_rows(gold.arrow, column, facilities)
            assert expected.num_rows > 0, (run.report, customer)
            assert f"of {expected.num_rows} rows" in page, (run.report, customer)
            assert len(rows) == min(expected.num_rows, 500), (run.report, customer)
            assert {cells[position] for cells in rows} == set(expected.column(column).to_pylist())
            assert {cells[position] for cells in rows} <= set(facilities)
