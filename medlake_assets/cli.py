"""The `medlake` command: generate feeds, ingest them, query the lake, benchmark."""

from __future__ import annotations

import csv
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

from medlake_assets.config import load_settings

app = typer.Typer(
    help="medlake: EMR facility feeds into Apache Iceberg, driven by metadata.", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks on production-shaped data.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def _dagster_instance():
    import dagster as dg

    settings = load_settings()
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder to write landing/<source>/... and manifest.json into")],
    facilities: int = 8,
    archives: int = 200,
    seed: int = 0,
    bad_rate: Annotated[float, typer.Option(help="Share of archives that are bad on purpose")] = 0.0,
    day: Annotated[str, typer.Option(help="Landing day YYYY-MM-DD (default: today, UTC)")] = "",
    size_scale: Annotated[float, typer.Option(help="Multiplies production archive sizes")] = 1.0,
) -> None:
    """Write a synthetic, production-shaped landing tree of password-protected facility archives."""
    from medlake_assets.generate import MissingPasswordError, write_feeds

    landing_day = date.fromisoformat(day) if day else datetime.now(UTC).date()
    started = time.perf_counter()
    try:
        with console.status(f"generating {archives} archives for {facilities} facilities"):
            manifest = write_feeds(
                out,
                facilities=facilities,
                archives=archives,
                seed=seed,
                bad_rate=bad_rate,
                day=landing_day,
                size_scale=size_scale,
            )
    except MissingPasswordError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    table = Table(title=f"generated into {out} in {time.perf_counter() - started:.1f} s")
    for column in ("source", "archives", "quarantined (planned)", "records", "rejected records (planned)"):
        table.add_column(column, justify="right" if column != "source" else "left")
    for source, counts in sorted(manifest["sources"].items()):
        table.add_row(
            source,
            str(counts["archives"]),
            str(counts["archives_quarantined"]),
            str(counts["records"]),
            str(counts["rejected_records"]),
        )
    console.print(table)


def _summary_table(title: str) -> Table:
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
            _summary_table(f"{summary.runs} runs ({summary.failed_runs} failed) in {summary.seconds:.1f} s")
        )
        if once:
            raise typer.Exit(1 if summary.failed_runs else 0)
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
    from medlake_assets.serving.sql import connect, render, shell

    settings = load_settings()
    try:
        con = connect(Lake(settings), as_of=as_of)
    except AsOfError as error:
        raise typer.BadParameter(str(error), param_hint="--as-of") from None
    if query is None:
        shell(con, Console(), history_file=settings.home / "sql_history")
        return
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
    from medlake_assets.defs.reports import report_job_name, report_run_tags
    from medlake_assets.reports import ReportSpecError, load_reports

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
            instance=instance, tags=tags, raise_on_error=False
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
    from medlake_assets.config import SettingsError
    from medlake_assets.lake import Lake
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

    from medlake_assets.defs.maintenance import report_metadata
    from medlake_assets.lake import Lake
    from medlake_assets.serving.catalog_info import table_names
    from medlake_assets.tables.maintenance import MIB, CompactionPolicy, maintain_table, retention_for

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
        report = maintain_table(
            lake.catalog.load_table(name),
            retention=retention_for(name, lake.sources),
            policy=policy,
            min_orphan_age=timedelta(hours=orphan_age_hours),
            s3_endpoint_url=lake.settings.s3_endpoint_url,
            dry_run=dry_run,
        )
        counts = report_metadata(report)
        out.add_row(name, *[str(counts[c]) for c in [*columns, "orphan_megabytes", "seconds"]])
    Console(width=None if sys.stdout.isatty() else 160).print(out)
    if not dry_run:
        from medlake_assets.tables.docs import refresh_docs

        described = refresh_docs(lake)  # column docs brought up to date with the metadata's descriptions
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
    from medlake_assets.serving.catalog_info import AsOfError, parse_as_of
    from medlake_assets.tables.maintenance import RestoreError, restore_table

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
        report = restore_table(lake.catalog.load_table(table), target)
    except RestoreError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    seconds = time.perf_counter() - started
    Console().print(
        f"restored {table}: snapshot {report.from_snapshot_id} -> {report.to_snapshot_id} in {seconds:.3f} s"
    )
    if report.undone_batches:
        shown = ", ".join(report.undone_batches[:5]) + (" ..." if len(report.undone_batches) > 5 else "")
        console.print(
            f"{len(report.undone_batches)} batch(es) are no longer in {table} ({shown}); the ledger still "
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
    report = reprocess_day(
        build_definitions(settings), _dagster_instance(), lake, lake.sources[source], landing_day
    )
    out = Table(
        title=f"reprocessed {source} {day} in {report.seconds:.1f} s (runs {', '.join(report.run_ids)})"
    )
    for column in ("table", "rows before", "rows after"):
        out.add_column(column, justify="left" if column == "table" else "right")
    out.add_row(f"bronze.{source}", str(report.bronze_rows_before), str(report.bronze_rows_after))
    out.add_row(f"silver.{source}", str(report.silver_rows_before), str(report.silver_rows_after))
    Console(width=None if sys.stdout.isatty() else 160).print(out)
    if not report.success:
        console.print("[red]a run failed: see it in the Dagster UI[/red]")
        raise typer.Exit(1)


@app.command()
def workers(
    workers: Annotated[int, typer.Option("--workers", "-n", help="Runs at once, each its own process")] = 2,
    feed: Annotated[
        Path | None,
        typer.Option(help="A generated day slice (`medlake generate --out DIR`) to put into landing"),
    ] = None,
    rate: Annotated[
        float, typer.Option(help="Archives per hour to put the slice at (0: all at once)")
    ] = 3500,
    speedup: Annotated[float, typer.Option(help="Multiplies --rate")] = 1.0,
    sensor_interval: Annotated[int, typer.Option(help="Seconds between sensor evaluations")] = 30,
    until_settled: Annotated[
        bool, typer.Option("--until-settled", help="Exit once the fed slice is in silver and no run is left")
    ] = False,
    create_storage: Annotated[
        bool,
        typer.Option("--create-storage", help="Create the catalog's database and the S3 bucket if missing"),
    ] = False,
) -> None:
    """Run the Dagster daemon with N run workers on this machine (PostgreSQL + S3: the production profile).

    Needs MEDLAKE_CATALOG_URL (postgresql://...), MEDLAKE_STORE_URL (s3://...), MEDLAKE_S3_ENDPOINT_URL for a
    local S3 endpoint, and DAGSTER_PG_URL for Dagster's storage (default: the catalog's database). Writes
    the instance config into DAGSTER_HOME (default MEDLAKE_HOME/dagster-workers).
    """
    from medlake_assets.config import SettingsError
    from medlake_assets.workers import Workers, ensure_bucket, ensure_database, replay, wait_until_settled

    settings = load_settings()
    home = Path(os.environ.get("DAGSTER_HOME") or settings.home / "dagster-workers")
    try:
        if create_storage:
            ensure_database(os.environ.get("MEDLAKE_CATALOG_URL", ""))
        runner = Workers(os.environ, home, workers, sensor_interval_seconds=sensor_interval)
    except SettingsError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if create_storage:
        ensure_bucket(runner.settings)
    with runner:
        console.print(f"{workers} workers: dagster-daemon running, instance {home / 'dagster.yaml'}")
        landed = 0
        if feed is not None:
            for item in replay(feed, runner.lake.store, rate_per_hour=rate, speedup=speedup):
                landed += 1
                console.print(f"landed {item.key}", highlight=False)
        if until_settled:
            state = wait_until_settled(runner, landed, timeout_seconds=3600)
            console.print(_summary_table(f"settled: {state.loaded} loaded, {state.quarantined} quarantined"))
            return
        try:
            runner.process.wait()
        except KeyboardInterrupt:
            console.print("stopping the workers")


@bench_app.command("ingest")
def bench_ingest(
    archives: int = 300,
    facilities: int = 20,
    seed: int = 7,
    size_scale: float = 1.0,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Generate a production-shaped batch, ingest it, and compare with the decrypt+decompress floor."""
    from medlake_assets.bench.ingest import run_ingest_benchmark

    report = run_ingest_benchmark(
        archives=archives,
        facilities=facilities,
        seed=seed,
        size_scale=size_scale,
        work_dir=work_dir,
        console=console,
    )
    Console().print(report)


@bench_app.command("merge")
def bench_merge(
    rows: int = 10_000_000,
    changes: int = 100_000,
    baseline_rows: Annotated[
        int, typer.Option(help="Rows of the Table.upsert baseline table (0: skip)")
    ] = 1_000_000,
    facilities: int = 1000,
    touched_facilities: Annotated[int, typer.Option(help="Facilities (partitions) the batch touches")] = 100,
    baseline_limit: Annotated[float, typer.Option(help="Seconds before Table.upsert is stopped")] = 600.0,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Upsert one production-sized batch into a silver table; compare with pyiceberg's Table.upsert."""
    from medlake_assets.bench.merge import run_merge_benchmark

    report = run_merge_benchmark(
        rows=rows,
        changes=changes,
        baseline_rows=baseline_rows,
        work_dir=work_dir,
        facilities=facilities,
        touched_facilities=touched_facilities,
        baseline_limit_seconds=baseline_limit,
        console=console,
    )
    Console().print(report)


@bench_app.command("query")
def bench_query(
    lab_results: Annotated[int, typer.Option(help="Rows of silver.lab_results in the history")] = 20_000_000,
    facilities: int = 1000,
    days: int = 365,
    seed: int = 7,
    repeats: Annotated[int, typer.Option(help="Timed runs per query and engine (after one warm-up)")] = 3,
    postgres_url: Annotated[
        str | None,
        typer.Option(envvar="MEDLAKE_TEST_POSTGRES_URL", help="PostgreSQL server to compare with"),
    ] = None,
    database: Annotated[str, typer.Option(help="Database created on that server for the copy")] = (
        "medlake_bench_query"
    ),
    work_dir: Annotated[
        Path | None, typer.Option(help="Lake folder (default: a temp dir; reused when it holds this scale)")
    ] = None,
    reports_dir: Annotated[
        Path | None, typer.Option(help="Report SQL files to time (default: the shipped metadata/reports)")
    ] = None,
) -> None:
    """Reports and ad-hoc queries over a year of silver history: medlake against PostgreSQL."""
    from medlake_assets.bench.query import BenchQueryError, Scale, run_query_bench

    try:
        report = run_query_bench(
            Scale(lab_results=lab_results, facilities=facilities, days=days, seed=seed),
            postgres_url,
            work_dir,
            database=database,
            repeats=repeats,
            reports_dir=reports_dir,
            console=console,
        )
    except BenchQueryError as error:
        console.print(str(error), style="red", markup=False)
        raise typer.Exit(2) from error
    Console(width=None if sys.stdout.isatty() else 140).print(report)
    if report.mismatches:
        raise typer.Exit(1)


@bench_app.command("scale")
def bench_scale(
    workers: Annotated[str, typer.Option(help="Worker counts to run, comma-separated")] = "1,2,4",
    archives: Annotated[
        int, typer.Option(help="Archives in the day slice (120 = ~2 min at production rate)")
    ] = 120,
    facilities: int = 20,
    seed: int = 7,
    size_scale: float = 1.0,
    speedup: Annotated[float, typer.Option(help="Multiplies the production arrival rate (3,500/h)")] = 1.0,
    # 5 s ticks cut a slice into many tiny runs whose process start dominates (docs/benchmarks.md).
    sensor_interval: Annotated[int, typer.Option(help="Seconds between sensor evaluations")] = 30,
    postgres_url: Annotated[
        str,
        typer.Option(
            envvar="MEDLAKE_BENCH_POSTGRES_URL", help="A PostgreSQL server to create scratch databases on"
        ),
    ] = "",
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Throughput and landing-to-silver latency of 1, 2 and 4 run workers on the same day slice."""
    from medlake_assets.bench.scale import run_scale_benchmark

    if not postgres_url:
        console.print(
            "[red]--postgres-url or MEDLAKE_BENCH_POSTGRES_URL is required (scripts/start_postgres.sh)[/red]"
        )
        raise typer.Exit(2)
    report = run_scale_benchmark(
        worker_counts=[int(count) for count in workers.split(",")],
        postgres_url=postgres_url,
        archives=archives,
        facilities=facilities,
        seed=seed,
        size_scale=size_scale,
        speedup=speedup,
        sensor_interval_seconds=sensor_interval,
        work_dir=work_dir,
        console=console,
    )
    Console(width=200).print(report)


if __name__ == "__main__":
    app()
