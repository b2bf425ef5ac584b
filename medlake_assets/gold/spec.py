"""Report metadata: `metadata/reports/<name>.sql`, a YAML header in the leading `-- ` comment block.

```
-- description: Beds by status per facility and unit.
-- schedule: on_update            # hourly | daily | weekly | nightly | on_update
-- target: gold.bed_availability  # optional, default gold.<file name>
-- partition_by: []               # optional Iceberg partition spec of the gold table
-- partitions: {cadence: daily, column: day}  # optional: a Dagster-partitioned report (not on_update)
-- chart: {kind: bar, x: unit, y: occupancy_rate, group: facility_id}  # optional PNG next to the HTML page
-- checks:
--   - {rule: not_null, columns: [facility_id, unit]}
--   - {rule: unique, columns: [facility_id, unit]}
--   - {rule: range, column: occupancy_rate, min: 0, max: 1}
SELECT ...
```

A partitioned report's run rebuilds only its window (one partition or a range): the rows whose
`column` falls in the window replace that window's rows of the gold table; the SQL stays window-free.

The header is every line from the top that starts with `--`; the SQL is the rest. The tables a report
reads are found by parsing the SQL with sqlglot (DuckDB dialect), so lineage never drifts from the query.
Reports may use `getvariable('as_of')`: the run sets it to its start time (UTC), tests to a fixed one.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import sqlglot
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlglot import exp

from medlake_assets.errors import MedlakeError
from medlake_assets.lake.partitions import parse_partition
from medlake_assets.spec.loader import parse_yaml

IDENTIFIER = r"^[a-z][a-z0-9_]*$"
Schedule = Literal["hourly", "daily", "weekly", "nightly", "on_update"]
CRON: dict[str, str] = {
    "hourly": "0 * * * *",
    "daily": "15 0 * * *",
    "weekly": "30 0 * * 1",
    "nightly": "0 2 * * *",
}


class ReportSpecError(MedlakeError, ValueError):
    """A report file is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NotNullCheck(_Strict):
    rule: Literal["not_null"]
    columns: list[str] = Field(min_length=1)
    severity: Literal["error", "warn"] = "error"


class UniqueCheck(_Strict):
    rule: Literal["unique"]
    columns: list[str] = Field(min_length=1)
    severity: Literal["error", "warn"] = "error"


class RangeCheck(_Strict):
    rule: Literal["range"]
    column: str
    min: float | None = None
    max: float | None = None
    severity: Literal["error", "warn"] = "error"

    @model_validator(mode="after")
    def _bounded(self) -> RangeCheck:
        if self.min is None and self.max is None:
            raise ValueError("a range check needs min, max or both")
        return self


ReportCheck = Annotated[NotNullCheck | UniqueCheck | RangeCheck, Field(discriminator="rule")]


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or '(top level)'}: {item['msg']}"
        for item in error.errors()
    )


def check_name(check: ReportCheck) -> str:
    """A stable check name: rule plus the columns it covers, e.g. `unique_facility_id_unit`."""
    columns = [check.column] if isinstance(check, RangeCheck) else check.columns
    return "_".join([check.rule, *columns])


class ChartSpec(_Strict):
    """A bar chart of `y` per `x` (one bar series per `group` value) rendered next to the report's page."""

    kind: Literal["bar"]
    x: str
    y: str
    group: str | None = None

    @property
    def columns(self) -> list[str]:
        return [column for column in (self.x, self.y, self.group) if column is not None]


class PartitionSpec(_Strict):
    """Dagster partitions of a scheduled report: one per day or week (UTC) of `column` since `start`."""

    cadence: Literal["daily", "weekly"]
    column: str = Field(pattern=IDENTIFIER)
    start: date = date(2024, 1, 1)


class ReportHeader(_Strict):
    description: str = Field(min_length=1)
    schedule: Schedule
    target: str | None = Field(default=None, pattern=r"^gold\.[a-z][a-z0-9_]*$")
    partition_by: list[str] = []
    owner: str | None = None
    checks: list[ReportCheck] = []
    chart: ChartSpec | None = None
    partitions: PartitionSpec | None = None

    @field_validator("partition_by")
    @classmethod
    def _partition_fields(cls, fields: list[str]) -> list[str]:
        for field in fields:
            parse_partition(field)  # the same grammar as silver's write.partition_by
        return fields

    @model_validator(mode="after")
    def _unique_check_names(self) -> ReportHeader:
        names = [check_name(check) for check in self.checks]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"checks: two checks would be named {duplicates[0]!r} (same rule and columns)")
        if self.partitions is not None and self.schedule == "on_update":
            raise ValueError("partitions: on_update reports are rebuilt whole, not partitioned")
        return self


class ReportSpec(_Strict):
    """One report: its header, its SQL and the (namespace, table) pairs the SQL reads."""

    name: str = Field(pattern=IDENTIFIER)
    header: ReportHeader
    sql: str
    reads: tuple[tuple[str, str], ...]
    path: str

    @property
    def table(self) -> str:
        """The gold table's name (without namespace)."""
        return self.header.target.split(".", 1)[1] if self.header.target else self.name

    @property
    def identifier(self) -> str:
        return f"gold.{self.table}"

    @property
    def cron(self) -> str | None:
        return CRON.get(self.header.schedule)


def split_header(text: str) -> tuple[str, str]:
    """The leading `--` comment block (comment markers removed) and the SQL after it."""
    lines = text.splitlines()
    count = next((index for index, line in enumerate(lines) if not line.startswith("--")), len(lines))
    header = "\n".join(line[3:] if line.startswith("-- ") else line[2:] for line in lines[:count])
    return header, "\n".join(lines[count:]).strip()


def parse_query(sql: str) -> exp.Query:
    """The SQL's one query, parsed once for every check of it (a report's parse is most of its load)."""
    statements = [statement for statement in sqlglot.parse(sql, dialect="duckdb") if statement is not None]
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise ValueError("the SQL must be exactly one query (SELECT / WITH ... SELECT)")
    return statements[0]


def tables_read(query: exp.Query) -> tuple[tuple[str, str], ...]:
    """Every `namespace.table` the query reads, sorted; CTE names and table functions are not tables."""
    ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    reads = set()
    for table in query.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # a table function such as range(...)
        if not table.db:
            if table.name in ctes:
                continue
            raise ValueError(f"table {table.name!r} has no namespace (write e.g. silver.{table.name})")
        reads.add((table.db, table.name))
    return tuple(sorted(reads))


def check_output_columns(field: str, columns: list[str], query: exp.Query) -> None:
    """Columns a header field names must be output columns of the query (unknowable for `SELECT *`)."""
    selected = query.named_selects
    if "*" in selected:
        return
    if missing := [column for column in columns if column not in selected]:
        raise ValueError(f"{field}: column {missing[0]!r} is not an output column of the query")


def load_report(path: Path) -> ReportSpec:
    """Validate one report file; errors name the file and the field."""
    header_text, sql = split_header(path.read_text(encoding="utf-8"))
    try:
        data = parse_yaml(header_text) or {}
    except yaml.YAMLError as error:
        raise ReportSpecError(f"{path}: header: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ReportSpecError(f"{path}: header: must be a YAML mapping in the leading '-- ' comment lines")
    try:
        header = ReportHeader.model_validate(data)
    except ValidationError as error:
        raise ReportSpecError(f"{path}: {_describe(error)}") from None
    if not sql:
        raise ReportSpecError(f"{path}: sql: no query after the header")
    try:
        query = parse_query(sql)
        reads = tables_read(query)
    except (sqlglot.errors.ParseError, ValueError) as error:
        raise ReportSpecError(f"{path}: sql: {str(error).splitlines()[0]}") from None
    named = [("chart", header.chart.columns if header.chart else [])]
    named.append(("partitions.column", [header.partitions.column] if header.partitions else []))
    try:
        for field, columns in named:
            check_output_columns(field, columns, query)
    except ValueError as error:
        raise ReportSpecError(f"{path}: {error}") from None
    try:
        return ReportSpec(name=path.stem, header=header, sql=sql, reads=reads, path=str(path))
    except ValidationError as error:
        raise ReportSpecError(f"{path}: {_describe(error)}") from None


def load_reports(directory: Path) -> list[ReportSpec]:
    """Every `*.sql` report in the folder, sorted by name; a missing folder is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportSpecError(f"{directory}: report metadata folder not found")
    reports = [load_report(path) for path in sorted(directory.glob("*.sql"))]
    targets: dict[str, str] = {}
    for report in reports:
        if report.identifier in targets:
            raise ReportSpecError(
                f"{report.path}: target: {report.identifier} is also written by {targets[report.identifier]}"
            )
        targets[report.identifier] = report.path
    return reports
