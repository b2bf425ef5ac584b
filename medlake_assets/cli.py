"""The `medlake` command: ingest, query, report, release, maintain; with `medlake_dev` installed beside it,
also its dev commands (generate, demo, workers, bench)."""

from __future__ import annotations

import csv
import fcntl
import importlib.util
import json
import os
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from medlake_assets.errors import MedlakeError
from medlake_assets.lake.settings import load_settings

app = typer.Typer(
    help="medlake: EMR facility feeds into Apache Iceberg, driven by metadata.", no_args_is_help=True
)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def _dagster_instance():
    import dagster as dg

    settings = load_settings()
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    # Two commands starting at once on a new home would both create Dagster's SQLite storage and one would
    # fail on its schema version row: the first creates it, the second waits and opens it.
    with open(home / ".instance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return dg.DagsterInstance.get()


def summary_table(title: str) -> Table:
    from medlake_assets.lake import Lake
    from medlake_assets.serving.sql import connect

    con = connect(Lake(load_settings()))
    rows = con.execute(
        """
        SELECT coalesce(source, '(no source)') AS source, count(*) AS archives,
               count(*) FILTER (WHERE status = 'loaded') AS loaded,
               count(*) FILTER (WHERE status = 'quarantined') AS quarantined,
               count(*) FILTER (WHERE status = 'pending') AS pending,
               coalesce(sum(records), 0) AS records, coalesce(sum(rejected_records), 0) AS rejected_records
        FROM meta.files GROUP BY ALL ORDER BY 1
        """
    ).fetchall()
    table = Table(title=title)
    for column in ("source", "archives", "loaded", "quarantined", "pending", "records", "rejected records"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for row in rows:
        table.add_row(*[str(value) for value in row])
    return table


def _print_missing_secrets(lake) -> int:
    """Say which secrets to set for the archives held pending without a password; how many are held."""
    from collections import Counter

    from medlake_assets.ingest.batch import MISSING_SECRET

    held = Counter((row.source, row.facility, row.reason) for row in lake.ledger.held(rule=MISSING_SECRET))
    for (source, facility, reason), count in sorted(held.items()):
        console.print(f"[red]{source} {facility}: {count} archives held pending: {reason}[/red]")
    return sum(held.values())


@app.command()
def ingest(
    once: Annotated[
        bool, typer.Option("--once", help="Process what is in the landing zone now, then exit")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls without --once")] = 30.0,
) -> None:
    """Run the landing sensors and their bronze runs in process (the same code the Dagster daemon runs)."""
    from medlake_assets.definitions import build_definitions
    from medlake_assets.defs.resources import LakeResource
    from medlake_assets.defs.runner import ingest_once

    settings = load_settings()
    defs = build_definitions(settings)
    instance = _dagster_instance()
    lake = LakeResource.from_settings(settings).lake()
    while True:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("polling landing", total=None)

            def on_run(sensor: str, _request: object, _success: bool, task=task) -> None:
                bar.update(
                    task, advance=1, description=f"runs: {bar.tasks[task].completed + 1:.0f} (last {sensor})"
                )

            summary = ingest_once(defs, instance, lake, on_run=on_run)
        console.print(
            summary_table(f"{summary.runs} runs ({summary.failed_runs} failed) in {summary.seconds:.1f} s")
        )
        held = _print_missing_secrets(lake)
        if once:
            raise typer.Exit(1 if summary.failed_runs or held else 0)
        time.sleep(interval)


@app.command()
def sql(
    query: Annotated[
        str | None,
        typer.Argument(help="SQL over bronze.*, silver.*, gold.*, quarantine.*, meta.*; omit for a shell"),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Read every table as of a snapshot id or an ISO timestamp (UTC if naive)"
        ),
    ] = None,
) -> None:
    """Query the lake with DuckDB (Iceberg tables as views); without a query, an interactive shell."""
    from medlake_assets.lake import Lake
    from medlake_assets.serving.catalog_info import AsOfError
    from medlake_assets.serving.sql import connect, shell

    settings = load_settings()
    try:
        con = connect(Lake(settings), as_of=as_of)
    except AsOfError as error:
        raise typer.BadParameter(str(error), param_hint="--as-of") from None
    if query is None:
        shell(con, Console(), history_file=settings.home / "sql_history")
        return
    import duckdb

    try:
        _print_query(con, query, format)
    except duckdb.Error as error:
        # One line, as psql prints it: the engine's message says what and where (no traceback).
        console.print(f"error: {str(error).splitlines()[0]}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _print_query(con, query: str, format: str) -> None:
    relation = con.sql(query)
    if relation is None:
        return
    if format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(relation.columns)
        writer.writerows(relation.fetchall())
    elif format == "json":
        columns = relation.columns
        for row in relation.fetchall():
            print(json.dumps(dict(zip(columns, row, strict=True)), default=str))
    elif format == "table":
        from medlake_assets.serving.sql import render

        Console().print(render(relation))
    else:
        raise typer.BadParameter("format must be table, csv or json")


@app.command()
def tables() -> None:
    """Every Iceberg table with its rows, snapshots, last update and data size (current snapshot)."""
    from rich.filesize import decimal

    from medlake_assets.lake import Lake
    from medlake_assets.serving.catalog_info import tables as list_tables

    table = Table(title="tables")
    for column in ("table", "rows", "snapshots", "last update (UTC)", "data files", "size"):
        table.add_column(column, justify="left" if column in ("table", "last update (UTC)") else "right")
    for info in list_tables(Lake(load_settings())):
        updated = info.last_updated.strftime("%Y-%m-%d %H:%M:%S") if info.last_updated else ""
        table.add_row(
            info.name,
            f"{info.rows:,}",
            str(info.snapshots),
            updated,
            str(info.data_files),
            decimal(info.size_bytes),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@app.command()
def report(
    name: Annotated[
        str | None, typer.Argument(help="A report in metadata/reports/ (its file name without .sql)")
    ] = None,
    partition: Annotated[
        str,
        typer.Option(
            help="A partitioned report's partition (2026-11-25) or range (2026-11-01...2026-11-25); "
            "default: its latest, the current day or week"
        ),
    ] = "",
    all_reports: Annotated[
        bool, typer.Option("--all", help="Run every report (e.g. after a demo load)")
    ] = False,
) -> None:
    """Run gold reports now: each one's SQL over the lake, written to gold.<name>, then its checks."""
    from medlake_assets.definitions import build_definitions
    from medlake_assets.defs.gold import report_job_name, report_run_tags
    from medlake_assets.defs.runner import quiet
    from medlake_assets.gold import ReportSpecError, load_reports

    settings = load_settings()
    try:
        reports = {spec.name: spec for spec in load_reports(settings.reports_dir)}
    except ReportSpecError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if all_reports == (name is not None):
        console.print("[red]name one report, or pass --all[/red]")
        raise typer.Exit(2)
    if name is not None and name not in reports:
        console.print(f"[red]unknown report {name!r}; known: {', '.join(sorted(reports))}[/red]")
        raise typer.Exit(2)
    try:
        selected = sorted(reports) if all_reports else [name]
        # With --all, --partition applies to the partitioned reports; the others are rebuilt whole.
        runs = {
            key: report_run_tags(reports[key], partition if name or reports[key].header.partitions else "")
            for key in selected
        }
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    defs, instance, ok = build_definitions(settings), _dagster_instance(), True
    for key, tags in runs.items():
        # Through the report's Dagster job, so the materialization and its checks show in the UI.
        result = defs.resolve_job_def(report_job_name(reports[key])).execute_in_process(
            run_config=quiet(None), instance=instance, tags=tags, raise_on_error=False
        )
        ok = _print_report_run(reports[key].table, result, tags) and ok
    if not ok:
        raise typer.Exit(1)


def _print_report_run(table_name: str, result, tags: dict[str, str]) -> bool:
    """A table of the run's checks; whether the run succeeded with no failed error-severity check."""
    materialization = result.asset_materializations_for_node(
        result.job_def.nodes_in_topological_order[0].name
    )
    rows = materialization[0].metadata["rows"].value if materialization else "no"
    window = "...".join(dict.fromkeys(tags.values()))
    title = f"gold.{table_name}{f' [{window}]' if window else ''}: {rows} rows, run {result.run_id}"
    table = Table(title=title)
    for column in ("check", "severity", "result"):
        table.add_column(column)
    for evaluation in result.get_asset_check_evaluations():
        outcome = "passed" if evaluation.passed else "[red]failed[/red]"
        table.add_row(evaluation.check_name, evaluation.severity.value.lower(), outcome)
    console.print(table)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed and e.severity.value == "ERROR"]
    return result.success and not failed


@app.command("serve-sql")
def serve_sql(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: all interfaces)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 5433,
) -> None:
    """Serve the lake read-only over the PostgreSQL protocol (psql, JDBC, ODBC, PowerBI, Tableau, Superset).

    Logins, roles and customers come from metadata/access/*.yaml, passwords from the secrets they name;
    TLS, limits and the read-only ledger role from MEDLAKE_SQL_* settings (docs/serving.md).
    """
    from medlake_assets.lake import Lake
    from medlake_assets.lake.settings import SettingsError
    from medlake_assets.serving.pgwire import ServeError, build_server
    from medlake_assets.spec.access import AccessError

    try:
        server = build_server(Lake(load_settings()), host, port)
    except (ServeError, SettingsError, AccessError) as error:
        console.print(f"[red]serve-sql will not start: {error}[/red]", highlight=False)
        raise typer.Exit(2) from None
    tls = "TLS" if server.tls is not None else "no TLS: keep it on loopback"
    console.print(f"serve-sql: PostgreSQL protocol on {host}:{port}, read-only, {tls}", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("serve-sql: stopped")
    finally:
        server.server_close()


@app.command()
def quality(
    source: Annotated[str, typer.Option(help="Only this source")] = "",
    day: Annotated[str, typer.Option(help="Only this landing day YYYY-MM-DD")] = "",
) -> None:
    """Rejected and warned rows per facility and rule (bronze parse rejects and silver rule failures)."""
    from medlake_assets.lake import Lake
    from medlake_assets.serving.sql import connect

    lake = Lake(load_settings())
    con = connect(lake)
    filters, params = [], []
    if source:
        filters.append("source = ?")
        params.append(source)
    if day:
        filters.append("landing_day = ?")
        params.append(date.fromisoformat(day))
    where = f"WHERE {' AND '.join(filters)}" if filters else ""
    present = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'quarantine'"
        ).fetchall()
    }
    bronze = " UNION ALL ".join(
        f"SELECT '{name}' AS source, 'bronze' AS stage, _landing_day AS landing_day, _facility AS facility, "
        f"rule, 'error' AS severity, count(*) AS rows FROM quarantine.{name} "
        "WHERE stage = 'bronze' GROUP BY ALL"
        for name in sorted(present & set(lake.sources))
    )
    silver = (
        "SELECT source, stage, landing_day, facility, rule, severity, sum(rows) AS rows "
        "FROM meta.quality GROUP BY ALL"
    )
    has_silver = con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE schema_name = 'meta' AND view_name = 'quality'"
    )
    parts = [part for part in (bronze, silver if has_silver.fetchone()[0] else "") if part]
    if not parts:
        console.print("nothing ingested yet")
        return
    union = " UNION ALL ".join(parts)
    rows = con.execute(
        f"""
        SELECT source, facility, stage, rule,
               sum(rows) FILTER (WHERE severity = 'error') AS rejected,
               sum(rows) FILTER (WHERE severity = 'warn') AS warned
        FROM ({union}) {where} GROUP BY ALL ORDER BY source, facility, stage, rule
        """,
        params,
    ).fetchall()
    table = Table(title="quality: rows rejected (error rules) and warned, per facility and rule")
    for column in ("source", "facility", "stage", "rule", "rejected", "warned"):
        table.add_column(column, justify="right" if column in ("rejected", "warned") else "left")
    for row in rows:
        table.add_row(*["" if value is None else str(value) for value in row])
    Console(width=160).print(table)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else ('es' if noun.endswith('ch') else 's')}"


def _quarantined(item) -> str:
    """`2 archives (archive.corrupt 1, ...), 10 rows (check.regex:test_code 10)`: the top 3 rules of each."""

    def by_rule(total: int, noun: str, rules: list[tuple[str, int]]) -> str:
        shown = ", ".join(f"{rule} {count}" for rule, count in rules[:3])
        more = f", +{len(rules) - 3} rules" if len(rules) > 3 else ""
        return _count(total, noun) + (f" ({shown}{more})" if rules else "")

    return (
        f"{by_rule(item.quarantined_archives, 'archive', item.archive_rules)}, "
        f"{by_rule(item.quarantined_rows, 'row', item.row_rules)}"
    )


def _last_failed_run(instance, source: str) -> str:
    """`<time> <job> run <id>: <exception class>` of the source's latest failed run, or ''. The class only:
    a third-party message can quote a value."""
    import dagster as dg

    from medlake_assets.defs.bronze import SOURCE_TAG

    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={SOURCE_TAG: source}), limit=1
    )
    if not runs:
        return ""
    run = runs[0]
    failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    error = failures[-1].dagster_event.step_failure_data.error if failures else None
    record = instance.get_run_record_by_id(run.run_id)
    when = record.end_time or record.create_timestamp.timestamp() if record else None
    stamp = datetime.fromtimestamp(when, UTC).strftime("%m-%d %H:%M") if when else ""
    return f"{stamp} {run.job_name} run {run.run_id[:8]}: {error.cls_name if error else 'failed'}"


@app.command()
def status() -> None:
    """One screen for an operator: per source what is pending, loading, waiting for silver, held back,
    quarantined, which facilities are stale, and the last error. Counts, ids and rule codes, no values."""
    from medlake_assets.lake import Lake
    from medlake_assets.serving.sql import connect
    from medlake_assets.silver.quality.status import UNROUTED, source_status

    lake = Lake(load_settings())
    now = datetime.now(UTC)
    statuses = source_status(connect(lake), lake.sources)
    instance = _dagster_instance()
    out = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"medlake status at {now:%Y-%m-%d %H:%M} UTC")
    columns = ["source", "pending", "loading", "to silver", "held back", "quarantined", "stale", "last error"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("pending", "loading", "to silver") else "left")
    for item in statuses:
        held = ", ".join(
            f"{h.facility}: {_count(h.rows, 'row')} ({_count(h.batches, 'batch')})" for h in item.held[:3]
        ) + (f" +{len(item.held) - 3} more" if len(item.held) > 3 else "")
        if not item.watched:
            stale = "-"
        elif not item.facilities_seen:
            stale = "no data yet"
        else:
            stale = ", ".join(
                f"{s.facility} ({s.lag_minutes:.0f} > {s.limit_minutes:.0f} min)" for s in item.stale[:3]
            ) + (f" +{len(item.stale) - 3} more" if len(item.stale) > 3 else "")
        errors = []
        if item.last_quarantined_at:
            errors.append(
                f"{item.last_quarantined_at:%m-%d %H:%M} {item.last_quarantined_rule} "
                f"({item.last_quarantined_key.rsplit('/', 1)[-1] if item.last_quarantined_key else ''})"
            )
        if item.source != UNROUTED and (failed := _last_failed_run(instance, item.source)):
            errors.append(failed)
        table.add_row(
            item.source,
            str(item.pending),
            str(item.loading),
            str(item.awaiting_silver),
            held or "none",
            _quarantined(item),
            stale or "none",
            "; ".join(errors),
        )
    out.print(table)
    held_rows = [(item.source, h) for item in statuses for h in item.held]
    if held_rows:
        detail = Table(title="held back by the quality gate (rows that passed every rule, waiting)")
        for column in ("source", "facility", "rows", "batches", "landing days", "held since", "released"):
            detail.add_column(
                column, justify="right" if column in ("rows", "batches", "landing days") else "left"
            )
        for source, h in held_rows:
            detail.add_row(
                source,
                h.facility,
                str(h.rows),
                str(h.batches),
                str(h.days),
                f"{h.since:%Y-%m-%d %H:%M}",
                str(h.released) if h.released else "",
            )
        out.print(detail)
        source, first = held_rows[0]
        out.print(
            f"Publish a facility's held rows: medlake release --source {source} --facility {first.facility} "
            '[--day YYYY-MM-DD]   (details: medlake sql "SELECT * FROM meta.held")',
            highlight=False,
        )
    stale_rows = [(item.source, s) for item in statuses for s in item.stale]
    if stale_rows:
        detail = Table(title="stale facilities (nothing landed within their limit)")
        for column in ("source", "facility", "last arrival", "minutes since", "limit", "limit from"):
            detail.add_column(column, justify="right" if column in ("minutes since", "limit") else "left")
        for source, s in stale_rows[:30]:
            detail.add_row(
                source,
                s.facility,
                f"{s.last_arrival:%Y-%m-%d %H:%M}",
                f"{s.lag_minutes:.0f}",
                f"{s.limit_minutes:.0f}",
                s.limit_basis,
            )
        out.print(detail)
        if len(stale_rows) > 30:
            out.print(f'{len(stale_rows) - 30} more: medlake sql "SELECT * FROM meta.freshness WHERE stale"')


@app.command()
def release(
    source: Annotated[str, typer.Option(help="The source, e.g. lab_results")],
    facility: Annotated[str, typer.Option(help="The facility whose held rows to publish")],
    day: Annotated[str, typer.Option(help="Only this landing day YYYY-MM-DD (default: every day)")] = "",
    by: Annotated[
        str, typer.Option(help="Who releases (recorded in meta.held; default: your user name)")
    ] = "",
) -> None:
    """Publish a facility's rows held back by the quality gate, as they are (rows failing a rule stay in
    quarantine), through the source's refine job; the ledger records who released them and when."""
    import getpass

    from medlake_assets.definitions import build_definitions
    from medlake_assets.defs.resources import LakeResource
    from medlake_assets.defs.silver import release_held
    from medlake_assets.silver.quality.held import held_slices

    try:
        landing_day = date.fromisoformat(day) if day else None
    except ValueError:
        raise typer.BadParameter(f"{day!r} is not a day YYYY-MM-DD", param_hint="--day") from None
    settings = load_settings()
    lake = LakeResource.from_settings(settings).lake()
    if source not in lake.sources:
        console.print(f"[red]unknown source {source!r}; known: {', '.join(sorted(lake.sources))}[/red]")
        raise typer.Exit(2)
    outcome = release_held(
        build_definitions(settings),
        _dagster_instance(),
        lake,
        lake.sources[source],
        facility,
        by or getpass.getuser(),
        landing_day,
    )
    if not outcome.released:
        waiting = sorted({item.facility for item in held_slices(lake.ledger, source)})
        console.print(
            f"nothing held for facility {facility!r} in {source}"
            + (f" on {day}" if day else "")
            + (f"; held facilities: {', '.join(waiting)}" if waiting else "; no facility is held")
        )
        raise typer.Exit(1)
    out = Table(
        title=f"released {source} facility {facility}: {outcome.rows_published} rows published in "
        f"{outcome.seconds:.1f} s (runs {', '.join(run_id[:8] for run_id in outcome.run_ids)})"
    )
    for column in ("landing day", "batch", "rows", "rejected (stay in quarantine)", "status"):
        out.add_column(column, justify="right" if column.startswith(("rows", "rejected")) else "left")
    published = {(item.batch_id, item.facility) for item in outcome.published}
    for item in outcome.released:
        state = "published" if (item.batch_id, item.facility) in published else "released, not yet published"
        out.add_row(
            item.landing_day.isoformat(), item.batch_id, str(item.held_rows), str(item.rejected), state
        )
    Console(width=None if sys.stdout.isatty() else 200).print(out)
    if not outcome.success:
        console.print(
            "[red]a refine run failed: see it in the Dagster UI; the next silver run of the day "
            "publishes the released rows[/red]"
        )
        raise typer.Exit(1)


@app.command()
def maintain(
    table: Annotated[str, typer.Option(help="Only this table, e.g. bronze.lab_results (default: all)")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and count only; change nothing")] = False,
    min_small_files: Annotated[int, typer.Option(help="Compact a partition with this many small files")] = 5,
    small_file_mb: Annotated[int, typer.Option(help="Data files below this size are small")] = 32,
    orphan_age_hours: Annotated[float, typer.Option(help="Keep unreferenced files younger than this")] = 72.0,
) -> None:
    """Compact small files, expire snapshots outside the retention window, remove old orphan files.

    The same code as the nightly `maintain_tables` Dagster job; retention from each source's metadata.
    """
    from datetime import timedelta

    from medlake_assets.defs.maintenance import maintenance_metadata
    from medlake_assets.lake import Lake
    from medlake_assets.lake.maintenance import MIB, CompactionPolicy, maintain_table, retention_for
    from medlake_assets.serving.catalog_info import table_names

    lake = Lake(load_settings())
    names = table_names(lake.catalog)
    if table and table not in names:
        console.print(f"[red]no table {table!r}; known: {', '.join(names)}[/red]")
        raise typer.Exit(2)
    policy = CompactionPolicy(small_file_bytes=small_file_mb * MIB, min_small_files=min_small_files)
    out = Table(title="maintenance (dry run: nothing changed)" if dry_run else "maintenance")
    columns = ["files_before", "files_after", "partitions_compacted", "snapshots_expired", "orphans_removed"]
    for column in ["table", *columns, "orphan_megabytes", "seconds"]:
        out.add_column(column.replace("_", " "), justify="left" if column == "table" else "right")
    for name in [table] if table else names:
        outcome = maintain_table(
            lake.catalog.load_table(name),
            retention=retention_for(name, lake.sources),
            policy=policy,
            min_orphan_age=timedelta(hours=orphan_age_hours),
            s3_endpoint_url=lake.settings.s3_endpoint_url,
            dry_run=dry_run,
        )
        counts = maintenance_metadata(outcome)
        out.add_row(name, *[str(counts[c]) for c in [*columns, "orphan_megabytes", "seconds"]])
    Console(width=None if sys.stdout.isatty() else 160).print(out)
    if not dry_run:
        from medlake_assets.gold.spec import load_reports
        from medlake_assets.lake.docs import refresh_docs

        folder = lake.settings.reports_dir
        reports = (
            [(r.identifier, r.header.description) for r in load_reports(folder)] if folder.is_dir() else []
        )
        described = refresh_docs(lake, reports)  # column docs brought up to date with the metadata
        console.print(f"column docs updated on {len(described)} tables", highlight=False)


@app.command()
def restore(
    table: Annotated[str, typer.Argument(help="The table, e.g. silver.lab_results")],
    to: Annotated[
        str,
        typer.Option(
            "--to", help="A snapshot id of the table, or an ISO time (UTC if naive): the snapshot then"
        ),
    ],
) -> None:
    """Make an earlier snapshot the table's current one (metadata only: seconds, whatever the size)."""
    from medlake_assets.lake import Lake
    from medlake_assets.lake.maintenance import RestoreError, restore_table
    from medlake_assets.serving.catalog_info import AsOfError, parse_as_of

    try:
        target = parse_as_of(to)
    except AsOfError as error:
        raise typer.BadParameter(str(error), param_hint="--to") from None
    lake = Lake(load_settings())
    if not lake.catalog.table_exists(table):
        console.print(f"[red]no table {table!r}[/red]")
        raise typer.Exit(2)
    started = time.perf_counter()
    try:
        outcome = restore_table(lake.catalog.load_table(table), target)
    except RestoreError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    seconds = time.perf_counter() - started
    Console().print(
        f"restored {table}: snapshot {outcome.from_snapshot_id} -> {outcome.to_snapshot_id} "
        f"in {seconds:.3f} s"
    )
    if outcome.undone_batches:
        shown = ", ".join(outcome.undone_batches[:5]) + (" ..." if len(outcome.undone_batches) > 5 else "")
        console.print(
            f"{len(outcome.undone_batches)} batch(es) are no longer in {table} ({shown}); the ledger still "
            "counts them as loaded: replay their landing days with `medlake reprocess --source S --day D`"
        )


@app.command()
def reprocess(
    source: Annotated[str, typer.Option(help="The source, e.g. lab_results")],
    day: Annotated[str, typer.Option(help="The landing day YYYY-MM-DD")],
) -> None:
    """Replay a landing day's raw archives through the current metadata: bronze, then silver, replaced."""
    from medlake_assets.definitions import build_definitions
    from medlake_assets.defs.maintenance import reprocess_day
    from medlake_assets.defs.resources import LakeResource

    try:
        landing_day = date.fromisoformat(day)
    except ValueError:
        raise typer.BadParameter(f"{day!r} is not a day YYYY-MM-DD", param_hint="--day") from None
    settings = load_settings()
    lake = LakeResource.from_settings(settings).lake()
    if source not in lake.sources:
        console.print(f"[red]unknown source {source!r}; known: {', '.join(sorted(lake.sources))}[/red]")
        raise typer.Exit(2)
    outcome = reprocess_day(
        build_definitions(settings), _dagster_instance(), lake, lake.sources[source], landing_day
    )
    out = Table(
        title=f"reprocessed {source} {day} in {outcome.seconds:.1f} s (runs {', '.join(outcome.run_ids)})"
    )
    for column in ("table", "rows before", "rows after"):
        out.add_column(column, justify="left" if column == "table" else "right")
    out.add_row(f"bronze.{source}", str(outcome.bronze_rows_before), str(outcome.bronze_rows_after))
    out.add_row(f"silver.{source}", str(outcome.silver_rows_before), str(outcome.silver_rows_after))
    Console(width=None if sys.stdout.isatty() else 160).print(out)
    if not outcome.success:
        console.print("[red]a run failed: see it in the Dagster UI[/red]")
        raise typer.Exit(1)


def add_dev_commands(app: typer.Typer) -> None:
    """The dev tooling's commands, when its package is installed (a checkout, not the production image)."""
    if importlib.util.find_spec("medlake_dev") is None:
        return
    from medlake_dev.cli import register

    register(app)


add_dev_commands(app)


def main() -> None:
    """The `medlake` command: any MedlakeError a command did not handle itself ends as one line, exit 2."""
    try:
        app()
    except MedlakeError as error:
        console.print(f"error: {error}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
