"""Report pages per customer: each customer's page holds only its facilities' rows, its own check counts
and chart, under its own prefix of the lake's object store (a folder or an S3 bucket); a report without a
facility column gets none, and the operator's page says which."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from medlake_assets.gold.render import chart_series
from medlake_assets.gold.run import render_customer_pages, run_report
from medlake_assets.gold.spec import ChartSpec, load_report
from medlake_assets.lake import Lake
from medlake_assets.lake.objectstore import LocalObjectStore, ObjectStore, open_store
from medlake_assets.silver.tables import ensure_table
from medlake_assets.spec.access import Access, Customer
from medlake_assets_tests.lake_helpers import local_settings

AS_OF = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = """-- description: Occupancy by unit
-- schedule: daily
{chart}-- checks:
--   - {{rule: unique, columns: [facility, unit]}}
--   - {{rule: range, column: rate, min: 0, max: 1, severity: warn}}
SELECT {columns} FROM silver.beds
"""
CHART = "-- chart: {kind: bar, x: unit, y: rate, group: facility}\n"
# F1 and F3 belong to acme, F2 to globex, F4 to no customer; initech has no rows at all.
ROWS = pa.table(
    {
        "facility": ["F1", "F1", "F2", "F2", "F3", "F4"],
        "unit": ["ICU", "ED", "ICU", "ICU", "ICU", "ICU"],
        "rate": [0.5, 1.25, 0.25, 0.75, 0.5, 0.9],
    }
)
ACCESS = Access(
    customers={
        "acme": Customer(id="acme", name="Acme Care", facilities=["F1", "F3"]),
        "globex": Customer(id="globex", name="Globex Health", facilities=["F2"]),
        "initech": Customer(id="initech", name="Initech Clinics", facilities=["F9"]),
    }
)
ACCESS_YAML = """customers:
  - {id: acme, name: Acme Care, facilities: [F1, F3]}
  - {id: globex, name: Globex Health, facilities: [F2]}
"""


def report(tmp_path: Path, columns: str = "facility, unit, rate", chart: str = CHART):
    path = tmp_path / "occupancy.sql"
    path.write_text(HEADER.format(chart=chart, columns=columns))
    return load_report(path)


def page_rows(page: str) -> list[list[str]]:
    """The cells of the page's row table (the last table on the page)."""
    body = page.rsplit("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", line) for line in body.splitlines() if line.startswith("<tr>")]


def check_cells(page: str, check: str) -> list[str]:
    row = re.search(rf"<tr><td>{check}</td>(.*?)</tr>", page)
    assert row is not None, check
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def read_page(store: ObjectStore, key: str) -> str:
    return store.get(key).decode("utf-8")


def test_each_customer_page_has_only_its_rows_checks_and_chart(tmp_path):
    store = LocalObjectStore(tmp_path / "home")
    spec = report(tmp_path)
    pages = render_customer_pages(store, spec, ROWS, AS_OF, ACCESS, "2026-11-20")
    assert pages.skipped is None
    assert sorted(pages.pages) == ["acme", "globex", "initech"]
    folder = "customers/{}/reports/occupancy/2026-11-20"
    acme = read_page(store, f"{folder.format('acme')}/report.html")
    assert page_rows(acme) == [["F1", "ICU", "0.5"], ["F1", "ED", "1.25"], ["F3", "ICU", "0.5"]]
    assert "<p>For Acme Care (acme): facilities F1, F3.</p>" in acme
    assert "showing 3 of 3 rows" in acme
    # Checks count only the customer's rows: globex's duplicate (F2, ICU) is not acme's failure.
    assert check_cells(acme, "unique_facility_unit")[-2:] == ['<span class="passed">passed</span>', "0"]
    assert check_cells(acme, "range_rate")[-2:] == ['<span class="failed">failed</span>', "1"]
    globex = read_page(store, f"{folder.format('globex')}/report.html")
    assert page_rows(globex) == [["F2", "ICU", "0.25"], ["F2", "ICU", "0.75"]]
    assert check_cells(globex, "unique_facility_unit")[-2:] == ['<span class="failed">failed</span>', "2"]
    assert check_cells(globex, "range_rate")[-2:] == ['<span class="passed">passed</span>', "0"]
    initech = read_page(store, f"{folder.format('initech')}/report.html")
    assert page_rows(initech) == [] and "showing 0 of 0 rows" in initech
    # No page shows another customer's facility, nor F4, which belongs to nobody.
    for customer, page in [("acme", acme), ("globex", globex), ("initech", initech)]:
        shown = {cells[0] for cells in page_rows(page)}
        assert shown <= set(ACCESS.customers[customer].facilities), customer
        assert "F4" not in page
    # Each chart is drawn from the customer's rows only.
    assert store.get(f"{folder.format('acme')}/chart.png")[:8] == PNG_MAGIC
    assert pages.pages["acme"].chart == store.url(f"{folder.format('acme')}/chart.png")
    acme_rows = ROWS.filter(pa.compute.is_in(ROWS["facility"], pa.array(["F1", "F3"])))
    assert set(chart_series(acme_rows, spec.header.chart)[1]) == {"F1", "F3"}
    assert pages.pages["globex"].html == store.url(f"{folder.format('globex')}/report.html")


def test_a_report_without_a_facility_column_gets_no_customer_page(tmp_path):
    store = LocalObjectStore(tmp_path / "home")
    spec = report(tmp_path, columns="unit, rate", chart="-- chart: {kind: bar, x: unit, y: rate}\n")
    pages = render_customer_pages(store, spec, ROWS.drop(["facility"]), AS_OF, ACCESS, "2026-11-20")
    assert pages.pages == {}
    assert pages.skipped == (
        "No customer pages: gold.occupancy has no facility column (_facility, facility_id, facility), "
        "so its rows cannot be split by customer."
    )
    assert not (tmp_path / "home" / "customers").exists()
    assert ChartSpec(kind="bar", x="unit", y="rate") == spec.header.chart


@pytest.mark.s3
def test_customer_pages_go_to_the_s3_bucket(tmp_path, s3_bucket):
    store = open_store(f"s3://{s3_bucket}/lake")
    pages = render_customer_pages(store, report(tmp_path), ROWS, AS_OF, ACCESS, "2026-11-20")
    key = "customers/globex/reports/occupancy/2026-11-20/report.html"
    assert pages.pages["globex"].html == f"s3://{s3_bucket}/lake/{key}"
    assert page_rows(store.get(key).decode()) == [["F2", "ICU", "0.25"], ["F2", "ICU", "0.75"]]


def test_run_report_writes_the_operator_page_and_one_per_customer(tmp_path):
    access_dir = tmp_path / "access"
    access_dir.mkdir()
    (access_dir / "customers.yaml").write_text(ACCESS_YAML)
    home = tmp_path / "home"
    # Lake(...), not open_lake: LakeResource (defs/resources.py) does not carry access_dir.
    lake = Lake(local_settings(home, MEDLAKE_ACCESS_DIR=str(access_dir)))
    lake.catalog.create_namespace_if_not_exists("silver")
    ensure_table(lake.catalog, "silver.beds", ROWS.schema, []).append(ROWS)
    run = run_report(lake, report(tmp_path), AS_OF)
    operator = (home / "reports" / "occupancy" / "2026-11-26T0700Z" / "report.html").read_text()
    assert len(page_rows(operator)) == ROWS.num_rows
    assert "<p>Customer pages (each with only its facilities&#x27; rows): acme, globex.</p>" in operator
    assert sorted(run.customer_pages.pages) == ["acme", "globex"]
    acme = home / "customers" / "acme" / "reports" / "occupancy" / "2026-11-26T0700Z"
    assert run.customer_pages.pages["acme"].html == (acme / "report.html").as_uri()
    assert {cells[0] for cells in page_rows((acme / "report.html").read_text())} == {"F1", "F3"}
    assert sorted(path.name for path in acme.iterdir()) == ["chart.png", "report.html"]
