"""Run one report: its SQL with DuckDB over the lake's views, then `gold.<name>` replaced in one commit.

Gold tables are derived entirely from silver (and the ledger), so a run rewrites the whole table, or for a
partitioned report the rows of its window: a re-run gives the same table, and a report whose columns
changed gets its table recreated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, LessThan
from pyiceberg.schema import Schema
from pyiceberg.types import DateType

from medlake_assets.gold.render import RenderedReport, customer_prefix, partition_name, render_report
from medlake_assets.gold.spec import NotNullCheck, RangeCheck, ReportCheck, ReportSpec, check_name
from medlake_assets.ingest.bronze import ALL_ROWS, replace_rows
from medlake_assets.lake import Lake
from medlake_assets.lake.catalog import NAMESPACES
from medlake_assets.lake.objectstore import ObjectStore
from medlake_assets.serving.sql import connect
from medlake_assets.serving.tenancy import facility_rows
from medlake_assets.silver.tables import ensure_table
from medlake_assets.spec.access import FACILITY_COLUMNS, Access, facility_column, load_access

RESULT_VIEW = "report_result"


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: str
    failing_rows: int
    description: str


@dataclass(frozen=True)
class PartitionWindow:
    """The rows a partitioned run owns: `column` in [start, end), UTC; `label` names its page folder."""

    start: datetime
    end: datetime
    label: str


@dataclass(frozen=True)
class CustomerPages:
    """The page of each customer (by customer id), or why there are none."""

    pages: dict[str, RenderedReport]
    skipped: str | None = None

    def note(self) -> str:
        """The line the operator's page carries about them."""
        if self.skipped:
            return self.skipped
        return f"Customer pages (each with only its facilities' rows): {', '.join(sorted(self.pages))}."


@dataclass(frozen=True)
class ReportRun:
    report: str
    identifier: str
    rows: int
    snapshot_id: int | None
    checks: list[CheckOutcome]
    as_of: datetime
    seconds: float
    rendered: RenderedReport
    customer_pages: CustomerPages


def views_read(report: ReportSpec) -> bool | list[str]:
    """The `namespace.table` views the report's SQL reads, for `connect(tables=...)`; every view (True) when
    it names anything else, e.g. `silver_deid.*` (built over silver) or a table without its namespace."""
    reads = [(namespace, table) for namespace, table in report.reads if namespace != "meta"]
    if any(namespace not in NAMESPACES for namespace, _ in reads):  # `meta.*` is on every connection
        return True
    return [f"{namespace}.{table}" for namespace, table in reads]


def query_report(
    con: duckdb.DuckDBPyConnection, report: ReportSpec, as_of: datetime, window: PartitionWindow | None = None
) -> pa.Table:
    """The report's rows (only the window's, if given). Days and timestamps are UTC;
    `getvariable('as_of')` is the run's time."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET VARIABLE as_of = ?::TIMESTAMPTZ", [as_of.astimezone(UTC)])
    if window is None:
        return con.execute(report.sql).to_arrow_table()
    column = report.header.partitions.column
    return con.execute(
        f'SELECT * FROM ({report.sql}) WHERE "{column}" >= ?::TIMESTAMPTZ AND "{column}" < ?::TIMESTAMPTZ',
        [window.start, window.end],
    ).to_arrow_table()


def _failing_rows_sql(check: ReportCheck) -> str:
    if isinstance(check, NotNullCheck):
        condition = " OR ".join(f'"{column}" IS NULL' for column in check.columns)
        return f"SELECT count(*) FROM {RESULT_VIEW} WHERE {condition}"
    if isinstance(check, RangeCheck):
        bounds = []
        if check.min is not None:
            bounds.append(f'"{check.column}" < {check.min!r}')
        if check.max is not None:
            bounds.append(f'"{check.column}" > {check.max!r}')
        return f"SELECT count(*) FROM {RESULT_VIEW} WHERE {' OR '.join(bounds)}"
    # unique: every row of a key that occurs more than once fails (nulls compare equal).
    columns = ", ".join(f'"{column}"' for column in check.columns)
    return (
        f"SELECT coalesce(sum(n), 0)::BIGINT FROM "
        f"(SELECT count(*) AS n FROM {RESULT_VIEW} GROUP BY {columns} HAVING count(*) > 1)"
    )


def _describe_check(check: ReportCheck) -> str:
    if isinstance(check, RangeCheck):
        return f"{check.column} within [{check.min}, {check.max}]"
    joined = ", ".join(check.columns)
    return f"no null in {joined}" if isinstance(check, NotNullCheck) else f"one row per ({joined})"


def evaluate_checks(rows: pa.Table, checks: list[ReportCheck]) -> list[CheckOutcome]:
    """Each header check over the report's rows: the number of failing rows (counts, never values)."""
    con = duckdb.connect()
    con.register(RESULT_VIEW, rows)
    outcomes = []
    for check in checks:
        failing = con.execute(_failing_rows_sql(check)).fetchone()[0]
        outcomes.append(
            CheckOutcome(
                name=check_name(check),
                passed=failing == 0,
                severity=check.severity,
                failing_rows=int(failing),
                description=_describe_check(check),
            )
        )
    return outcomes


def write_gold(
    catalog: Catalog, report: ReportSpec, rows: pa.Table, window: PartitionWindow | None = None
) -> int | None:
    """Replace the gold table's contents (or the window's rows) with `rows` in one commit; recreate the
    table if its columns changed (a partitioned report then needs its other partitions backfilled)."""
    identifier = report.identifier
    if catalog.table_exists(identifier):
        existing = catalog.load_table(identifier).schema().column_names
        if existing != rows.column_names:
            catalog.drop_table(identifier)
    table = ensure_table(catalog, identifier, rows.schema, report.header.partition_by)
    rows = rows.cast(pa.schema([field.with_nullable(True) for field in rows.schema]))
    # Always a replacement, redone on fresh metadata if another writer committed meanwhile (two runs of
    # the report at once): an append on a first write would land twice when two writers both saw it empty.
    row_filter = ALL_ROWS if window is None else window_filter(table.schema(), report, window)
    replace_rows(table, rows, row_filter, {})
    return catalog.load_table(identifier).metadata.current_snapshot_id


def window_filter(schema: Schema, report: ReportSpec, window: PartitionWindow) -> BooleanExpression:
    """The Iceberg row filter of a window, in the partition column's own type (date or timestamp)."""
    column = report.header.partitions.column
    is_date = isinstance(schema.find_field(column).field_type, DateType)

    def bound(moment: datetime) -> str:
        return moment.date().isoformat() if is_date else moment.isoformat()

    return And(GreaterThanOrEqual(column, bound(window.start)), LessThan(column, bound(window.end)))


def render_customer_pages(
    store: ObjectStore,
    report: ReportSpec,
    rows: pa.Table,
    as_of: datetime,
    access: Access,
    partition: str,
) -> CustomerPages:
    """One page per customer under `customers/<customer>/reports/<name>/<partition>/`, with only the rows
    of its facilities and the header checks evaluated over those rows (counts of other customers' rows
    never show). A report without a facility column cannot be split, so it gets none."""
    column = facility_column(rows.column_names)
    if column is None:
        return CustomerPages(
            {},
            f"No customer pages: {report.identifier} has no facility column "
            f"({', '.join(FACILITY_COLUMNS)}), so its rows cannot be split by customer.",
        )
    if not access.customers:
        return CustomerPages({}, "No customer pages: the access metadata declares no customers.")
    pages = {}
    for customer in access.customers.values():
        mine = facility_rows(rows, column, customer.facilities)
        pages[customer.id] = render_report(
            store,
            report,
            mine,
            as_of,
            evaluate_checks(mine, report.header.checks),
            partition,
            prefix=customer_prefix(customer.id),
            note=f"For {customer.name} ({customer.id}): facilities {', '.join(customer.facilities)}.",
        )
    return CustomerPages(pages)


def run_report(
    lake: Lake, report: ReportSpec, as_of: datetime | None = None, window: PartitionWindow | None = None
) -> ReportRun:
    """Query the lake, check the rows, write `gold.<name>` (or its window), then render its page under the
    lake's home, and one page per customer of `metadata/access/`; checks never stop the write (gold is
    derived)."""
    if (window is None) != (report.header.partitions is None):
        raise ValueError(f"report {report.name}: a partitioned report runs for a window, any other without")
    started = time.perf_counter()
    as_of = as_of or datetime.now(UTC)
    rows = query_report(connect(lake, tables=views_read(report)), report, as_of, window)
    checks = evaluate_checks(rows, report.header.checks)
    snapshot_id = write_gold(lake.catalog, report, rows, window)
    partition = window.label if window else partition_name(as_of)
    access = load_access(lake.settings.access_dir)
    customer_pages = render_customer_pages(lake.store, report, rows, as_of, access, partition)
    rendered = render_report(lake.store, report, rows, as_of, checks, partition, note=customer_pages.note())
    return ReportRun(
        report=report.name,
        identifier=report.identifier,
        rows=rows.num_rows,
        snapshot_id=snapshot_id,
        checks=checks,
        as_of=as_of,
        seconds=time.perf_counter() - started,
        rendered=rendered,
        customer_pages=customer_pages,
    )
