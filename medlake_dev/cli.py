"""The dev tooling's `medlake` commands (generate, demo, workers, bench ...), added to the product's command
by `medlake_assets.cli` when this package is installed beside it."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medlake_assets.lake.settings import load_settings

bench_app = typer.Typer(help="Benchmarks on production-shaped data.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `generate`, `demo`, `workers` and `bench ...` to the `medlake` command."""
    for command in (generate, demo, workers):
        app.command()(command)
    app.add_typer(bench_app, name="bench")


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
    from medlake_assets.cli import console
    from medlake_dev.generate import MissingPasswordError, write_feeds

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


def demo(
    port: Annotated[int, typer.Option(help="Port of the Dagster UI")] = 3000,
    exit_when_ready: Annotated[
        bool, typer.Option("--exit-when-ready", help="Stop Dagster once the lake is ingested (for checks)")
    ] = False,
) -> None:
    """Serve the lake under `dagster dev`: its daemon ingests the landing zone, then every report runs."""
    from medlake_assets.cli import console, summary_table
    from medlake_assets.defs.gold import report_job_name, report_run_tags
    from medlake_assets.gold import load_reports
    from medlake_assets.lake import Lake
    from medlake_dev.demo import DagsterDev, DemoError, wait_until_ingested

    settings = load_settings()
    os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster"))
    lake = Lake(settings)
    try:
        with DagsterDev(settings, port=port) as dev:
            with console.status(f"starting Dagster (log: {dev.log_path})"):
                dev.wait_until_serving()
            with console.status("the landing sensor is ingesting") as status:

                def show(state) -> None:
                    status.update(
                        f"ingesting: {state.done} of {state.landed} archives loaded or quarantined, "
                        f"{state.silver_pending} batches on their way to silver"
                    )

                wait_until_ingested(lake, dev, on_progress=show)
            reports = Table(title="gold reports (runs launched through Dagster)")
            for column in ("report", "run", "status"):
                reports.add_column(column)
            for report in load_reports(settings.reports_dir):
                with console.status(f"report {report.name}"):
                    run_id = dev.submit(report_job_name(report), report_run_tags(report))
                    outcome = dev.wait_for_run(run_id)
                reports.add_row(report.name, f"{dev.url}/runs/{run_id}", outcome)
            console.print(summary_table("ingested by the landing sensor"))
            console.print(reports)
            if (manifest_path := settings.home / "manifest.json").exists():
                console.print(planted_faults(json.loads(manifest_path.read_text())), highlight=False)
            console.print(
                f"Dagster UI: {dev.url} (runs under their jobs: {dev.url}/runs, assets: {dev.url}/assets)\n"
                f"Report pages: {settings.home / 'reports'}/<report>/<partition or run time>/report.html\n"
                'SQL: .venv/bin/medlake sql "SELECT * FROM meta.files LIMIT 5"\n'
                f"Dagster's own log: {dev.log_path}",
                highlight=False,
            )
            if exit_when_ready:
                return
            console.print("Ctrl-C stops Dagster.")
            try:
                assert dev.process is not None
                dev.process.wait()
            except KeyboardInterrupt:
                console.print("stopping Dagster")
    except DemoError as error:
        console.print(f"error: {error}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None


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
    sensor_interval: Annotated[int, typer.Option(help="Seconds between sensor evaluations")] = 5,
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
    from medlake_assets.cli import console, summary_table
    from medlake_assets.lake.settings import SettingsError
    from medlake_dev.workers import Workers, ensure_bucket, ensure_database, replay, wait_until_settled

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
            console.print(summary_table(f"settled: {state.loaded} loaded, {state.quarantined} quarantined"))
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
    from medlake_assets.cli import console
    from medlake_dev.bench.ingest import run_ingest_benchmark

    outcome = run_ingest_benchmark(
        archives=archives,
        facilities=facilities,
        seed=seed,
        size_scale=size_scale,
        work_dir=work_dir,
        console=console,
    )
    Console().print(outcome)


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
    from medlake_assets.cli import console
    from medlake_dev.bench.merge import run_merge_benchmark

    outcome = run_merge_benchmark(
        rows=rows,
        changes=changes,
        baseline_rows=baseline_rows,
        work_dir=work_dir,
        facilities=facilities,
        touched_facilities=touched_facilities,
        baseline_limit_seconds=baseline_limit,
        console=console,
    )
    Console().print(outcome)


@bench_app.command("merge-day")
def bench_merge_day(
    batches: int = 24,
    orders: Annotated[int, typer.Option(help="New orders per batch (5 results each)")] = 20_000,
    facilities: int = 20,
    buckets: Annotated[int, typer.Option(help="bucket(N, facility_id), as silver.lab_results")] = 16,
    window: Annotated[int, typer.Option(help="Batches averaged at each end for the last/first ratio")] = 3,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Upsert a day of lab_results batches in arrival order into one table; time each merge as it grows."""
    from medlake_dev.bench.merge import run_day_benchmark

    outcome = run_day_benchmark(
        batches=batches,
        orders=orders,
        facilities=facilities,
        buckets=buckets,
        window=window,
        work_dir=work_dir,
    )
    Console().print(outcome)


@bench_app.command("encounters")
def bench_encounters(
    batches: int = 20,
    events: Annotated[int, typer.Option(help="ADT events per batch")] = 5000,
    facilities: int = 50,
    seed: int = 7,
    window: Annotated[int, typer.Option(help="Runs averaged at each end for the last/first ratio")] = 3,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Time `silver.encounters` after each of `batches` ADT batches of one landing day (last/first ratio)."""
    from medlake_dev.bench.encounters import run_encounters_benchmark

    outcome = run_encounters_benchmark(
        batches=batches, events=events, facilities=facilities, seed=seed, window=window, work_dir=work_dir
    )
    Console().print(outcome)


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
    from medlake_assets.cli import console
    from medlake_dev.bench.query import BenchQueryError, Scale, run_query_bench

    try:
        outcome = run_query_bench(
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
    Console(width=None if sys.stdout.isatty() else 140).print(outcome)
    if outcome.mismatches:
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
    sensor_interval: Annotated[int, typer.Option(help="Seconds between sensor evaluations")] = 5,
    postgres_url: Annotated[
        str,
        typer.Option(
            envvar="MEDLAKE_BENCH_POSTGRES_URL", help="A PostgreSQL server to create scratch databases on"
        ),
    ] = "",
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Throughput and landing-to-silver latency of 1, 2 and 4 run workers on the same day slice."""
    from medlake_assets.cli import console
    from medlake_dev.bench.scale import run_scale_benchmark

    if not postgres_url:
        console.print(
            "[red]--postgres-url or MEDLAKE_BENCH_POSTGRES_URL is required (scripts/start_postgres.sh)[/red]"
        )
        raise typer.Exit(2)
    outcome = run_scale_benchmark(
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
    Console(width=200).print(outcome)


@bench_app.command("manifests")
def bench_manifests(
    runs: Annotated[int, typer.Option(help="Runs, each one commit to every table")] = 240,
    every: Annotated[int, typer.Option(help="Runs between checkpoints")] = 60,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Scan planning and commits as a day of runs adds manifests: tables that merge them against tables that
    do not, in the same run."""
    from medlake_dev.bench.manifests import run_manifest_benchmark

    Console(width=160).print(run_manifest_benchmark(runs=runs, every=every, work_dir=work_dir))


@bench_app.command("commits")
def bench_commits(
    rounds: Annotated[int, typer.Option(help="Rounds, each a bronze-like and a silver-like commit")] = 300,
    every: Annotated[int, typer.Option(help="Rounds between checkpoints")] = 50,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
    baseline_rounds: Annotated[
        int | None, typer.Option(help="Rounds the pyiceberg baseline takes (default: all)")
    ] = None,
) -> None:
    """A commit's and a table load's cost as a table's history grows: medlake's transaction and catalog
    against pyiceberg's, in the same run."""
    from medlake_dev.bench.commits import run_commit_benchmark

    bench = run_commit_benchmark(
        rounds=rounds, every=every, work_dir=work_dir, baseline_rounds=baseline_rounds
    )
    Console(width=160).print(bench)


@bench_app.command("scan")
def bench_scan(
    objects: Annotated[
        list[int] | None, typer.Option(help="Objects in the open days at each measurement (repeatable)")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed scans per count (the median is shown)")] = 3,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            help="A PostgreSQL server for the ledger (else SQLite)", envvar="MEDLAKE_BENCH_POSTGRES_URL"
        ),
    ] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """A landing-sensor scan as a day's archives accumulate: wall time, the sensor's CPU, the S3 server's."""
    from medlake_dev.bench.scan import run_scan_benchmark

    outcome = run_scan_benchmark(
        objects or [2_000, 8_000, 20_000], repeats=repeats, postgres_url=postgres_url, work_dir=work_dir
    )
    Console(width=160).print(outcome)


@bench_app.command("memory")
def bench_memory(
    archives: Annotated[int, typer.Option(help="Generated archives besides the two 40 MB ones")] = 100,
    facilities: int = 20,
    seed: int = 7,
    bound_mb: Annotated[float, typer.Option(help="Peak RSS a bronze or silver run may reach")] = 1536,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch folder (default: a temp dir)")] = None,
) -> None:
    """Peak memory of bronze, silver and maintenance runs of a day holding 40 MB archives; exits 1 above the
    bound."""
    from medlake_assets.cli import console
    from medlake_dev.bench.memory import run_memory_benchmark

    results, table = run_memory_benchmark(
        archives=archives,
        facilities=facilities,
        seed=seed,
        work_dir=work_dir,
        bound_mb=bound_mb,
        console=console,
    )
    Console(width=160).print(table)
    over = [r for r in results if r.peak_mb > bound_mb]
    if over:
        console.print(
            f"[red]{len(over)} run(s) above {bound_mb:,.0f} MB: "
            + ", ".join(f"{r.stage} {r.source} {r.peak_mb:,.0f} MB" for r in over)
            + "[/red]"
        )
        raise typer.Exit(1)


@bench_app.command("soak")
def bench_soak(
    normal_minutes: Annotated[float, typer.Option(help="Minutes at the production rate first")] = 60,
    surge_minutes: Annotated[float, typer.Option(help="Minutes of the surge")] = 10,
    surge_factor: Annotated[float, typer.Option(help="The surge's rate, times the production rate")] = 10,
    after_minutes: Annotated[
        float, typer.Option(help="Minutes at the production rate after the surge (the drain window)")
    ] = 20,
    rate: Annotated[float, typer.Option(help="The production rate, archives per hour")] = 3500,
    workers: Annotated[int, typer.Option(help="Run workers (runs at once)")] = 1,
    sensor_interval: Annotated[int, typer.Option(help="Seconds between sensor evaluations")] = 5,
    window_minutes: Annotated[float, typer.Option(help="Report window")] = 5,
    drain_limit_minutes: Annotated[
        float, typer.Option(help="After the last arrival, wait at most this long for silver")
    ] = 30,
    facilities: int = 20,
    seed: int = 7,
    size_scale: Annotated[
        float, typer.Option(help="Multiplies production archive sizes (1 = production)")
    ] = 1.0,
    postgres_url: Annotated[
        str,
        typer.Option(
            envvar="MEDLAKE_BENCH_POSTGRES_URL", help="A PostgreSQL server to create a scratch database on"
        ),
    ] = "",
    work_dir: Annotated[
        Path | None, typer.Option(help="Scratch folder; the generated archives are reused from it")
    ] = None,
) -> None:
    """The deployed mode (daemon, queued runs, a process per run) at the production rate, then a surge."""
    from medlake_assets.cli import console
    from medlake_dev.bench.soak import render, run_soak, soak_phases

    if not postgres_url:
        console.print(
            "[red]--postgres-url or MEDLAKE_BENCH_POSTGRES_URL is required (scripts/start_postgres.sh)[/red]"
        )
        raise typer.Exit(2)
    result = run_soak(
        phases=soak_phases(normal_minutes, surge_minutes, after_minutes, rate, surge_factor),
        workers_count=workers,
        sensor_interval=sensor_interval,
        postgres_url=postgres_url,
        facilities=facilities,
        seed=seed,
        size_scale=size_scale,
        window_seconds=window_minutes * 60,
        drain_limit_seconds=drain_limit_minutes * 60,
        work_dir=work_dir,
        console=console,
    )
    out = Console(width=220)
    for table in render(result):
        out.print(table)
    if not result.ok:
        raise typer.Exit(1)


def planted_faults(manifest: dict) -> str:
    """What the generator made bad on purpose, so a red check in the demo reads as the fault it shows."""
    totals = {key: sum(counts[key] for counts in manifest["sources"].values()) for key in PLANTED}
    return (
        f"Planted faults (generate --bad-rate): {totals['archives_quarantined']} archives meant for "
        f"quarantine, {totals['rejected_records']} records meant to be rejected in bronze and "
        f"{totals['silver_rejected_records']} in silver. They are in quarantine.* and meta.files with their "
        "rules (`medlake status`); the quarantine_rate and quality_gate checks that warn or fail in the UI "
        "show these faults."
    )


PLANTED = ("archives_quarantined", "rejected_records", "silver_rejected_records")
