"""Reports people can look at: an HTML page, a PNG bar chart when the header asks for one, and a markdown
preview for the Dagster materialization.

Pages go to the lake's object store under `reports/<name>/<partition>/` (`report.html`, `chart.png`): in the
embedded default that is `MEDLAKE_HOME/reports/...`, in production the S3 bucket, so a page outlives the
run's pod. An unpartitioned report's partition is its run time in UTC, e.g. `2026-11-26T0700Z`, so each run
keeps its own page. Each customer's page (only its facilities' rows) goes under its own prefix,
`customers/<customer>/reports/<name>/<partition>/` (see `reports.run.render_customer_pages`). Gold reports
are aggregates, so showing their values is fine (no record-level PHI reaches a gold table).
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
from tabulate import tabulate

from medlake_assets.gold.spec import ChartSpec, ReportSpec
from medlake_assets.lake.objectstore import ObjectStore

if TYPE_CHECKING:  # run.py imports this module to render after its write
    from medlake_assets.gold.run import CheckOutcome

HTML_ROWS = 500
PREVIEW_ROWS = 20
CHART_MAX_X = 60  # bars per series; beyond this a chart is unreadable, so it shows the last (sorted) x values
HTML_FILE = "report.html"
CHART_FILE = "chart.png"
OPERATOR_PREFIX = "reports"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f2f2f2; }
.passed { color: #1a7f37; } .failed { color: #c62828; }
img { max-width: 100%; }
"""


@dataclass(frozen=True)
class RenderedReport:
    """Where the page (and chart) went, as the store's URLs, and the markdown preview."""

    html: str
    chart: str | None
    preview: str


def partition_name(as_of: datetime) -> str:
    """The folder of an unpartitioned report's run: its time in UTC to the minute, e.g. `2026-11-26T0700Z`."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    return as_of.astimezone(UTC).strftime("%Y-%m-%dT%H%MZ")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _row_values(rows: pa.Table, limit: int) -> list[tuple]:
    head = rows.slice(0, limit)
    return list(zip(*(column.to_pylist() for column in head.columns), strict=True))


def markdown_preview(rows: pa.Table, limit: int = PREVIEW_ROWS) -> str:
    """The first `limit` rows as a GitHub markdown table, then a line with how many rows there are in all."""

    def cell(value: Any) -> str:
        # A pipe or newline inside a value would break the table's row.
        return _text(value).replace("|", "\\|").replace("\n", " ")

    table = tabulate(
        [[cell(value) for value in row] for row in _row_values(rows, limit)],
        headers=[cell(name) for name in rows.column_names],
        tablefmt="github",
        disable_numparse=True,  # keep values as the report wrote them ("007" stays "007")
    )
    shown = min(limit, rows.num_rows)
    return f"{table}\n\n{shown} of {rows.num_rows} rows"


def _html_table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in headers)
    lines = ["".join(f"<td>{cell}</td>" for cell in row) for row in body]
    rows = "\n".join(f"<tr>{line}</tr>" for line in lines)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def _checks_table(checks: Sequence[CheckOutcome]) -> str:
    if not checks:
        return "<p>No checks.</p>"
    results = {True: '<span class="passed">passed</span>', False: '<span class="failed">failed</span>'}
    body = [
        (
            html.escape(check.name),
            html.escape(check.description),
            html.escape(check.severity),
            results[check.passed],
            str(check.failing_rows),
        )
        for check in checks
    ]
    return _html_table(["check", "rule", "severity", "result", "failing rows"], body)


def render_html(
    report: ReportSpec,
    rows: pa.Table,
    as_of: datetime,
    checks: Sequence[CheckOutcome],
    chart_file: str | None = None,
    limit: int = HTML_ROWS,
    note: str | None = None,
) -> str:
    """A self-contained page: title, description, who it is for (`note`), as-of time, checks, chart (if any)
    and the first rows."""
    title = html.escape(report.identifier)
    shown = min(limit, rows.num_rows)
    body = [[html.escape(_text(value)) for value in row] for row in _row_values(rows, limit)]
    chart = (
        f'<img src="{html.escape(chart_file)}" alt="{html.escape(report.name)} chart">' if chart_file else ""
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            f'<head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>',
            "<body>",
            f"<h1>{title}</h1>",
            f"<p>{html.escape(report.header.description)}</p>",
            f"<p>{html.escape(note)}</p>" if note else "",
            f"<p>As of {html.escape(as_of.astimezone(UTC).isoformat())}; "
            f"showing {shown} of {rows.num_rows} rows.</p>",
            "<h2>Checks</h2>",
            _checks_table(checks),
            chart,
            "<h2>Rows</h2>",
            _html_table(rows.column_names, body),
            "</body>",
            "</html>",
            "",
        ]
    )


def chart_series(rows: pa.Table, chart: ChartSpec) -> tuple[list[str], dict[str, list[float]]]:
    """The x labels (sorted, the last `CHART_MAX_X`) and one list of y values per group (0 where missing);
    y is summed over rows sharing x and group, so an ungrouped chart of a per-facility report is the total."""
    frame = pl.from_arrow(rows.select(chart.columns)).drop_nulls(chart.x)
    xs = frame.get_column(chart.x).unique().sort().tail(CHART_MAX_X)
    frame = frame.filter(pl.col(chart.x).is_in(xs.implode()))
    if chart.group is None:
        wide = frame.group_by(chart.x).agg(pl.col(chart.y).sum())
    else:
        frame = frame.with_columns(pl.col(chart.group).cast(pl.String).fill_null("(none)"))
        wide = frame.pivot(on=chart.group, index=chart.x, values=chart.y, aggregate_function="sum")
    wide = wide.sort(chart.x).fill_null(0)
    labels = [_text(value) for value in wide.get_column(chart.x).to_list()]
    series = {
        name: wide.get_column(name).cast(pl.Float64).to_list() for name in wide.columns if name != chart.x
    }
    return labels, series


def render_chart(rows: pa.Table, chart: ChartSpec, title: str) -> bytes:
    """A grouped bar chart as PNG bytes (Agg, no display)."""
    # Imported here so loading the Dagster definitions does not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, series = chart_series(rows, chart)
    figure = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # the object API without pyplot: no global state, safe in a server process
    axes = figure.add_subplot()
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        positions = [x + (index - (len(series) - 1) / 2) * width for x in range(len(labels))]
        axes.bar(positions, values, width, label=name)
    axes.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 12 else 0)
    axes.set_xlabel(chart.x)
    axes.set_ylabel(chart.y)
    axes.set_title(title)
    if chart.group is not None and series:
        axes.legend(title=chart.group, fontsize="small")
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()


def render_report(
    store: ObjectStore,
    report: ReportSpec,
    rows: pa.Table,
    as_of: datetime,
    checks: Sequence[CheckOutcome],
    partition: str | None = None,
    prefix: str = OPERATOR_PREFIX,
    note: str | None = None,
) -> RenderedReport:
    """Put `report.html` (and `chart.png` if the header has a chart) under
    `<prefix>/<name>/<partition>/` of the store; the partition defaults to the run time."""
    folder = f"{prefix}/{report.name}/{partition or partition_name(as_of)}"
    chart = report.header.chart
    chart_url = None
    if chart is not None:
        title = f"{report.identifier}: {chart.y} by {chart.x}"
        store.put(f"{folder}/{CHART_FILE}", render_chart(rows, chart, title))
        chart_url = store.url(f"{folder}/{CHART_FILE}")
    page = render_html(report, rows, as_of, checks, CHART_FILE if chart_url else None, note=note)
    store.put(f"{folder}/{HTML_FILE}", page.encode("utf-8"))
    return RenderedReport(
        html=store.url(f"{folder}/{HTML_FILE}"), chart=chart_url, preview=markdown_preview(rows)
    )


def customer_prefix(customer: str) -> str:
    """Where a customer's pages go: one prefix per customer, so one grant (a bucket policy, a signed
    listing) covers exactly its pages and a listing never shows another customer's."""
    return f"customers/{customer}/{OPERATOR_PREFIX}"
