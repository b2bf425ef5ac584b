"""`medlake bench ingest`: pipeline throughput against the floor of only decrypting and decompressing.

Production: 3,500 archives an hour. The floor is the fastest decryptor we have (libarchive) reading every
member of the same archives and discarding the bytes, on one process; when the pipeline parses on several
worker processes, the same floor spread over as many processes is shown too, so that the ratio
pipeline/floor compares like with like. The ratio says how much the rest (routing, parsing, Arrow, Iceberg
commits, ledger, Dagster runs) costs on top. Since the landing flow (issue 11) its runs take each batch on
to silver, so the pipeline is landing to silver; runs before it stopped at bronze.

The generated landing is kept under the work folder, keyed by the generation parameters, and reused by the
next run with the same ones (generation takes longer than the ingest); every run ingests into a fresh lake.
Generation runs in a child process, and peak memory is sampled per phase over this process and its
children (the ingest workers), so it is the pipeline's, not the generator's.
"""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from multiprocessing import get_context
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from medlake_dev.bench import reusable

PRODUCTION_ARCHIVES_PER_HOUR = 3500


@dataclass
class IngestBenchmark:
    archives: int
    members: int
    records: int
    megabytes: float
    workers: int
    floor_seconds: float
    parallel_floor_seconds: float
    parse_seconds: float
    pipeline_seconds: float
    runs: int
    step_seconds: dict[str, float]
    """The pipeline's runs' step time summed per layer (`bronze`, `silver`, ...), from the event log."""
    parse_peak_rss_mb: float
    pipeline_peak_rss_mb: float
    silver_seconds: float
    silver_runs: int
    silver_peak_rss_mb: float

    @property
    def ratio(self) -> float:
        return self.pipeline_seconds / self.floor_seconds

    @property
    def parallel_ratio(self) -> float:
        return self.pipeline_seconds / self.parallel_floor_seconds

    @property
    def bronze_ratio(self) -> float:
        """Bronze's share of the pipeline against the floor: what the ratio measured before the landing
        flow's runs took each batch on to silver (2026-11-26 and earlier)."""
        return self.step_seconds.get("bronze", 0.0) / self.floor_seconds

    @property
    def production_hours_per_hour(self) -> float:
        return self.archives / self.pipeline_seconds * 3600 / PRODUCTION_ARCHIVES_PER_HOUR

    def __rich__(self) -> Table:
        table = Table(title="medlake bench ingest", show_header=True)
        table.add_column("measure")
        table.add_column("value", justify="right")
        seconds = self.pipeline_seconds
        workers = self.workers
        rows = [
            ("archives / members / records", f"{self.archives} / {self.members} / {self.records}"),
            ("compressed input", f"{self.megabytes:.1f} MB"),
            ("ingest worker processes (MEDLAKE_INGEST_WORKERS)", f"{workers}"),
            ("floor: decrypt + decompress only, libarchive, 1 process", f"{self.floor_seconds:.2f} s"),
            (f"floor: the same on {workers} processes", f"{self.parallel_floor_seconds:.2f} s"),
            (f"unpack + parse only (no writes), {workers} processes", f"{self.parse_seconds:.2f} s"),
            ("pipeline: sensor -> runs -> bronze + silver + ledger", f"{seconds:.2f} s in {self.runs} runs"),
            *(
                (f"  of which {layer} steps (summed over the runs)", f"{spent:.2f} s")
                for layer, spent in sorted(self.step_seconds.items())
            ),
            ("archives/s", f"{self.archives / seconds:.1f}"),
            ("members/s", f"{self.members / seconds:.0f}"),
            ("records/s", f"{self.records / seconds:.0f}"),
            ("MB/s", f"{self.megabytes / seconds:.2f}"),
            ("peak RSS, unpack + parse (this process + workers)", f"{self.parse_peak_rss_mb:.0f} MB"),
            ("peak RSS, pipeline (this process + workers)", f"{self.pipeline_peak_rss_mb:.0f} MB"),
            ("ratio pipeline / floor (1 process)", f"{self.ratio:.2f}"),
            (f"ratio pipeline / floor ({workers} processes)", f"{self.parallel_ratio:.2f}"),
            (
                "ratio bronze steps / floor (1 process): the ratio before silver joined the runs",
                f"{self.bronze_ratio:.2f}",
            ),
            ("ratio parse-only / floor (1 process)", f"{self.parse_seconds / self.floor_seconds:.2f}"),
            (
                f"ratio parse-only / floor ({workers} processes)",
                f"{self.parse_seconds / self.parallel_floor_seconds:.2f}",
            ),
            ("hours of production traffic per wall-clock hour", f"{self.production_hours_per_hour:.1f}"),
            (
                "then silver's automation: the runs it still asks for (none when every run took its "
                "batches to silver; not in the ratios)",
                f"{self.silver_seconds:.2f} s in {self.silver_runs} runs, "
                f"peak RSS {self.silver_peak_rss_mb:.0f} MB",
            ),
        ]
        for name, value in rows:
            table.add_row(name, value)
        return table


class PeakRss:
    """Peak resident memory of this process plus its children, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # a child that just exited
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    @contextmanager
    def watch(self) -> Iterator[PeakRss]:
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    @property
    def megabytes(self) -> float:
        return self.peak / 2**20


def seconds_per_layer(profiles: Sequence[Mapping]) -> dict[str, float]:
    """Step seconds of runs (`soak.run_profiles`) summed per layer, the step key's part before `__`
    (`bronze__lab_results` -> `bronze`); steps of no layer (`freshness_checks`) under their own name."""
    totals: dict[str, float] = defaultdict(float)
    for profile in profiles:
        for step, seconds in profile["steps"].items():
            totals[step.split("__", 1)[0]] += seconds
    return dict(totals)


def _landed(home: Path) -> list[Path]:
    return sorted(path for path in (home / "landing").rglob("*") if path.is_file())


def _generated_landing(work: Path, console: Console, password: str, **generation: object) -> Path:
    """A folder holding `landing/` for these parameters: generated in a child process, or reused."""
    key = "-".join(f"{name}={value}" for name, value in sorted(generation.items()))
    folder = work / "generated" / key
    if reusable(folder, password):
        console.print(f"reusing the generated landing in {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    from medlake_dev.generate import write_feeds

    with (
        console.status(f"generating {generation['archives']} production-shaped archives"),
        ProcessPoolExecutor(1, mp_context=get_context("spawn")) as child,
    ):
        child.submit(write_feeds, folder, **generation).result()
    return folder


def _floor_one(item: tuple[bytes, str]) -> int:
    from medlake_assets.ingest.archives import decrypt_floor, detect_kind

    data, password = item
    if detect_kind(data) == "gzip":
        return len(gzip.decompress(data))
    return decrypt_floor(data, password=password)


def run_ingest_benchmark(
    *,
    archives: int,
    facilities: int,
    seed: int,
    size_scale: float,
    work_dir: Path | None,
    console: Console,
) -> IngestBenchmark:
    import dagster as dg

    from medlake_assets.definitions import build_definitions
    from medlake_assets.defs.resources import LakeResource
    from medlake_assets.defs.runner import IngestSummary, bring_up_to_date, ingest_once
    from medlake_assets.ingest.landing import route
    from medlake_assets.ingest.pipeline import ArchiveContext, ArchiveWork
    from medlake_assets.ingest.pool import ingest_workers, process_archives
    from medlake_assets.lake.objectstore import LocalObjectStore
    from medlake_assets.lake.settings import load_settings
    from medlake_dev.bench.soak import run_profiles

    os.environ.setdefault("MEDLAKE_ARCHIVE_PASSWORD", secrets.token_urlsafe(12))
    password = os.environ["MEDLAKE_ARCHIVE_PASSWORD"]
    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-"))
    day = date(2026, 11, 26)
    generated = _generated_landing(
        work,
        console,
        password,
        facilities=facilities,
        archives=archives,
        seed=seed,
        day=day,
        size_scale=size_scale,
    )
    # A fresh lake every run; the landing files are hard links to the generated ones (never modified).
    home = work / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    shutil.copytree(generated / "landing", home / "landing", copy_function=os.link)
    files = _landed(home)
    settings = load_settings({**os.environ, "MEDLAKE_HOME": str(home)})
    store = LocalObjectStore(home)
    lake = LakeResource.from_settings(settings).lake()
    sources = lake.sources
    workers = ingest_workers()

    # Floor: decrypt and decompress every member, nothing else; one process, then `workers` processes.
    payloads = [(path, path.read_bytes()) for path in files]
    items = [(data, password) for _, data in payloads]
    started = time.perf_counter()
    for item in items:
        _floor_one(item)
    floor_seconds = time.perf_counter() - started
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_floor_one, items[:workers]))  # start the workers outside the measurement
        started = time.perf_counter()
        list(pool.map(_floor_one, items, chunksize=4))
        parallel_floor_seconds = time.perf_counter() - started

    # Unpack + parse with the pipeline's core and workers, no writes: where the time goes before Iceberg.
    def parse_work() -> Iterator[ArchiveWork]:
        for path, data in payloads:
            info = next(iter(store.list(str(path.relative_to(home)))))
            routed = route(info, sources.values())
            if routed.source is None or routed.landing_day is None:
                continue
            spec = sources[routed.source]
            context = ArchiveContext(
                info.key, routed.facility or "", routed.landing_day, "bench", datetime.now(UTC)
            )
            secret = spec.landing.password.resolve(context.facility) if spec.landing.password else None
            yield ArchiveWork(data, context, spec, secret, settings.archive_engine)

    list(process_archives(iter([]), workers=workers))  # start the pool outside the measurement
    members = records = 0
    with PeakRss().watch() as parse_rss:
        started = time.perf_counter()
        for _, result in process_archives(parse_work(), workers=workers):
            if not result.quarantined:
                members += result.members
                records += result.records
        parse_seconds = time.perf_counter() - started

    defs = build_definitions(settings)
    with (
        tempfile.TemporaryDirectory() as dagster_home,
        dg.DagsterInstance.local_temp(dagster_home) as instance,
    ):
        with PeakRss().watch() as pipeline_rss:
            started = time.perf_counter()
            with console.status("ingesting through the Dagster sensors and runs"):
                summary = ingest_once(defs, instance, lake, refine_silver=False)
            pipeline_seconds = time.perf_counter() - started
        step_seconds = seconds_per_layer(run_profiles(instance))
        # What silver's automation still requests afterwards (the flow's runs refine silver themselves).
        with PeakRss().watch() as silver_rss:
            started = time.perf_counter()
            with console.status("bringing silver up to date"):
                silver = IngestSummary()
                bring_up_to_date(defs, instance, lake, silver, groups=("silver",))
            silver_seconds = time.perf_counter() - started
    return IngestBenchmark(
        archives=len(files),
        members=members,
        records=records,
        megabytes=sum(len(data) for _, data in payloads) / 1e6,
        workers=workers,
        floor_seconds=floor_seconds,
        parallel_floor_seconds=parallel_floor_seconds,
        parse_seconds=parse_seconds,
        pipeline_seconds=pipeline_seconds,
        runs=summary.runs,
        step_seconds=step_seconds,
        parse_peak_rss_mb=parse_rss.megabytes,
        pipeline_peak_rss_mb=pipeline_rss.megabytes,
        silver_seconds=silver_seconds,
        silver_runs=silver.runs,
        silver_peak_rss_mb=silver_rss.megabytes,
    )
