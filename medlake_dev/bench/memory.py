"""`medlake bench memory`: peak memory of ingest and silver runs whose batch holds the largest production
archives.

A landing day of production-shaped archives from the generator plus one 40 MB archive of each of the
largest-expanding formats (lab results CSV, ~11.5x: ~460 MB of text; ADT HL7 v2, ~7.5x), every archive its
own password-protected zip. Each stage runs in a fresh child process, as a run worker of `medlake workers`
does it (`MEDLAKE_INGEST_WORKERS=1`), and is sampled every 20 ms (the process and its children):

- bronze: the landing sensor's batches of each source loaded (`load_batch`: unpack, parse, commit, ledger);
- silver: each source's silver table brought up to date for the whole day at once (`load_silver`: type,
  check, merge), then `silver.encounters` from the day's ADT events (`load_encounters`);
- run: on a second copy of the landing day, the landing sensor's first `ingest_landed` run executed as a
  run worker executes it: the largest batch of every source (the sensor's `max_bytes_per_run`, with both
  40 MB archives), bronze, silver and encounters one step after another in one process, with the
  environment `medlake workers` gives its runs (`lake/memory.py`: Polars' allocator);
- maintenance: then each bronze and silver table's small files of the day compacted, as the nightly
  `maintain_tables` run does (`compact_table`; here from two small files, so that every table has some).

The bound (1.5 GB by default) is asserted for every stage: the command exits 1 when one is above.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import psutil
from rich.table import Table

from medlake_assets.defs.bronze import BATCH_TAG
from medlake_assets.lake.memory import allocator_environment
from medlake_dev.bench import reusable

LARGE_BYTES = 40_000_000


ENCOUNTERS = "encounters"
RUN = "run"
MAINTENANCE = "maintenance"
FLOW_SOURCES = "ingest_landed (all sources)"


@dataclass
class StageMemory:
    stage: str
    source: str
    archives: int
    megabytes_in: float
    rows: int
    peak_mb: float
    seconds: float


def _write_large_archives(home: Path, day: date, seed: int) -> list[str]:
    """One 40 MB zip each of lab results and ADT events for one facility, into `home/landing/...`."""
    from medlake_assets.lake.settings import load_settings
    from medlake_assets.spec import load_sources
    from medlake_dev.generate.feeds import ADT, LAB, ArchivePlan, build_archive, make_facilities

    specs = load_sources(load_settings().sources_dir)
    facility = make_facilities(1, seed)[0]
    keys = []
    for index, source in enumerate((LAB, ADT)):
        at = datetime(day.year, day.month, day.day, 23, 0, index)
        plan = ArchivePlan(
            9000 + index, source, facility, at, "aes", LARGE_BYTES, since=at - timedelta(hours=6)
        )
        password = specs[source].landing.password.resolve(facility.id)
        outcome = build_archive(plan, seed, password, specs[source].landing.limits)
        path = home / outcome.key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(outcome.data)
        keys.append(outcome.key)
    return keys


class _Peak:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def sample(self, pid: int) -> None:
        process = psutil.Process(pid)
        while not self._stop.is_set():
            total = 0
            try:
                for member in [process, *process.children(recursive=True)]:
                    try:
                        total += member.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()


def _stage(home: str, stage: str, source: str, day: date) -> tuple[int, float, int, float]:
    """In a child process: one source's bronze batches (or its silver) for the day;
    (archives, MB, rows, s)."""
    import time

    from medlake_assets.ingest.batch import load_batch
    from medlake_assets.lake import Lake
    from medlake_assets.lake.maintenance import CompactionPolicy, compact_table
    from medlake_assets.lake.settings import load_settings
    from medlake_assets.silver.encounters_load import load_encounters
    from medlake_assets.silver.load import load_silver

    # One process per run, as `medlake workers` runs them (MEDLAKE_INGEST_WORKERS=1): what is measured is
    # a run worker's own memory.
    os.environ["MEDLAKE_INGEST_WORKERS"] = "1"
    lake = Lake(load_settings({**os.environ, "MEDLAKE_HOME": home}))
    started = time.perf_counter()
    if stage == MAINTENANCE:  # `source` names the table
        compacted = compact_table(lake.catalog.load_table(source), CompactionPolicy(min_small_files=2))
        return compacted.files_rewritten, 0.0, compacted.rows_rewritten, time.perf_counter() - started
    if source == ENCOUNTERS:
        adt = next(spec for spec in lake.sources.values() if spec.format.kind == "hl7v2")
        visits = load_encounters(lake, adt, day)["visits"]
        return 0, 0.0, visits, time.perf_counter() - started
    spec = lake.sources[source]
    if stage == "silver":
        report = load_silver(lake, spec, day)
        return 0, 0.0, report.rows_in, time.perf_counter() - started
    archives, size, records = 0, 0, 0
    for batch in lake.ledger.unfinished_batches(source):
        files = lake.ledger.batch_files(batch.batch_id)
        report = load_batch(lake, spec, batch.batch_id, files)
        archives += report.archives
        size += report.bytes_read
        records += report.records
    return archives, size / 1e6, records, time.perf_counter() - started


def _flow_run(home: str) -> tuple[int, float, int, float]:
    """In a child process: the landing sensor's first `ingest_landed` run over `home`, executed in process as
    a run worker does; (archives, MB, bronze records, s)."""
    import time

    import dagster as dg

    from medlake_assets.definitions import build_definitions
    from medlake_assets.defs.flow import LANDING_SENSOR, sources_in_run
    from medlake_assets.defs.runner import (
        IngestSummary,
        apply_partition_requests,
        execute_request,
        tick_sensor,
    )
    from medlake_assets.lake import Lake
    from medlake_assets.lake.settings import load_settings

    os.environ["MEDLAKE_INGEST_WORKERS"] = "1"
    settings = load_settings({**os.environ, "MEDLAKE_HOME": home})
    defs = build_definitions(settings)
    sensor = defs.get_repository_def().get_sensor_def(LANDING_SENSOR)
    summary = IngestSummary()
    with dg.instance_for_test() as instance:
        result = tick_sensor(sensor, defs, instance, None)
        apply_partition_requests(instance, result)
        request = result.run_requests[0]
        started = time.perf_counter()
        execute_request(
            defs.resolve_job_def(sensor.job_name), request, instance, summary, None, label=sensor.name
        )
        seconds = time.perf_counter() - started
    if summary.failed_runs:
        raise RuntimeError("the ingest_landed run failed (see its events)")
    ledger = Lake(settings).ledger
    files = [
        file
        for source in sources_in_run(request.tags)
        for file in ledger.batch_files(request.tags[f"{BATCH_TAG}/{source}"])
    ]
    records = sum(file.records or 0 for file in files)
    return len(files), sum(file.size for file in files) / 1e6, records, seconds


def _in_child(function, *args) -> tuple[tuple, float]:
    """`function(*args)` in a fresh process, sampled (with its children) every 20 ms; (result, peak MB)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as child:
        pid = child.submit(os.getpid).result()  # the fresh worker process that runs the stage
        peak = _Peak()
        thread = threading.Thread(target=peak.sample, args=(pid,), daemon=True)
        thread.start()
        try:
            result = child.submit(function, *args).result()
        finally:
            peak.stop()
            thread.join()
    return result, peak.peak / 2**20


def _measure(home: Path, stage: str, source: str, day: date) -> StageMemory:
    if stage == RUN:
        (archives, megabytes, rows, seconds), peak = _in_child(_flow_run, str(home))
    else:
        (archives, megabytes, rows, seconds), peak = _in_child(_stage, str(home), stage, source, day)
    return StageMemory(stage, source, archives, megabytes, rows, peak, seconds)


def run_memory_benchmark(
    *, archives: int, facilities: int, seed: int, work_dir: Path | None, bound_mb: float, console
) -> tuple[list[StageMemory], Table]:
    from medlake_assets.ingest.landing import day_prefix, register_landed
    from medlake_assets.lake import Lake
    from medlake_assets.lake.settings import load_settings
    from medlake_dev.generate import write_feeds

    os.environ.setdefault("MEDLAKE_ARCHIVE_PASSWORD", secrets.token_urlsafe(12))
    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-memory-"))
    day = datetime.now(UTC).date()
    # Generated once per parameters and day, reused by later runs; every run ingests into a fresh lake.
    generated = work / "generated" / f"{day}-{archives}a-{facilities}f-{seed}s"
    if not reusable(generated, os.environ["MEDLAKE_ARCHIVE_PASSWORD"]):
        with console.status("generating a landing day with two 40 MB archives"):
            shutil.rmtree(generated, ignore_errors=True)
            _write_large_archives(generated, day, seed)
            write_feeds(generated, facilities=facilities, archives=archives, seed=seed, day=day)
    # Runs start with the environment `medlake workers` gives them (spawned children inherit it).
    os.environ.update(allocator_environment(os.environ))
    home = work / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    shutil.copytree(generated / "landing", home / "landing", copy_function=os.link)
    flow_home = home / RUN
    shutil.copytree(generated / "landing", flow_home / "landing", copy_function=os.link)
    lake = Lake(load_settings({**os.environ, "MEDLAKE_HOME": str(home)}))
    specs = list(lake.sources.values())
    register_landed(lake.store, lake.ledger, specs, [day_prefix(spec.name, day) for spec in specs])
    for spec in specs:
        lake.ledger.claim_batches(
            spec.name, max_archives=spec.ingest.max_archives_per_run, max_bytes=spec.ingest.max_bytes_per_run
        )
    results = []
    stages = [("bronze", spec.name) for spec in specs] + [("silver", spec.name) for spec in specs]
    stages.append(("silver", ENCOUNTERS))
    tables = [f"{layer}.{spec.name}" for layer in ("bronze", "silver") for spec in specs]
    stages += [(MAINTENANCE, table) for table in [*tables, f"silver.{ENCOUNTERS}"]]
    for stage, source in stages:
        with console.status(f"{stage} {source}"):
            results.append(_measure(home, stage, source, day))
    with console.status("one ingest_landed run of every source's largest batch"):
        results.append(_measure(flow_home, RUN, FLOW_SOURCES, day))
    table = Table(title=f"medlake bench memory: peak RSS, each in a fresh process (bound {bound_mb:,.0f} MB)")
    columns = ("stage", "source", "archives/files", "MB in", "rows", "peak RSS MB", "seconds", "within bound")
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "source") else "right")
    for result in results:
        table.add_row(
            result.stage,
            result.source,
            str(result.archives) if result.stage in ("bronze", RUN, MAINTENANCE) else "",
            f"{result.megabytes_in:.1f}" if result.stage in ("bronze", RUN) else "",
            f"{result.rows:,}",
            f"{result.peak_mb:,.0f}",
            f"{result.seconds:.1f}",
            "yes" if result.peak_mb <= bound_mb else "[red]no[/red]",
        )
    return results, table
