"""`medlake bench ingest`: pipeline throughput against the floor of only decrypting and decompressing.

Production: 3,500 archives an hour. The floor is the fastest decryptor we have (libarchive) reading every
member of the same archives and discarding the bytes; the ratio pipeline/floor says how much the rest
(routing, parsing, Arrow, Iceberg commits, ledger, Dagster runs) costs on top.
"""

from __future__ import annotations

import gzip
import os
import resource
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

PRODUCTION_ARCHIVES_PER_HOUR = 3500


@dataclass
class IngestBenchmark:
    archives: int
    members: int
    records: int
    megabytes: float
    floor_seconds: float
    parse_seconds: float
    pipeline_seconds: float
    runs: int
    peak_rss_mb: float

    @property
    def ratio(self) -> float:
        return self.pipeline_seconds / self.floor_seconds

    @property
    def production_hours_per_hour(self) -> float:
        return self.archives / self.pipeline_seconds * 3600 / PRODUCTION_ARCHIVES_PER_HOUR

    def __rich__(self) -> Table:
        table = Table(title="medlake bench ingest", show_header=True)
        table.add_column("measure")
        table.add_column("value", justify="right")
        seconds = self.pipeline_seconds
        rows = [
            ("archives / members / records", f"{self.archives} / {self.members} / {self.records}"),
            ("compressed input", f"{self.megabytes:.1f} MB"),
            ("floor: decrypt + decompress only", f"{self.floor_seconds:.2f} s"),
            ("unpack + parse only (no writes)", f"{self.parse_seconds:.2f} s"),
            ("pipeline: sensor -> runs -> bronze + ledger", f"{seconds:.2f} s in {self.runs} runs"),
            ("archives/s", f"{self.archives / seconds:.1f}"),
            ("members/s", f"{self.members / seconds:.0f}"),
            ("records/s", f"{self.records / seconds:.0f}"),
            ("MB/s", f"{self.megabytes / seconds:.2f}"),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MB"),
            ("ratio pipeline / floor", f"{self.ratio:.2f}"),
            ("ratio parse-only / floor", f"{self.parse_seconds / self.floor_seconds:.2f}"),
            ("hours of production traffic per wall-clock hour", f"{self.production_hours_per_hour:.1f}"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        return table


def _landed(home: Path) -> list[Path]:
    return sorted(path for path in (home / "landing").rglob("*") if path.is_file())


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

    from medlake_assets.config import load_settings
    from medlake_assets.definitions import build_definitions
    from medlake_assets.defs.resources import LakeResource
    from medlake_assets.defs.runner import ingest_once
    from medlake_assets.generate import write_feeds
    from medlake_assets.ingest.archives import decrypt_floor, detect_kind
    from medlake_assets.ingest.landing import route
    from medlake_assets.ingest.objectstore import LocalObjectStore
    from medlake_assets.ingest.pipeline import ArchiveContext, process_archive

    os.environ.setdefault("MEDLAKE_ARCHIVE_PASSWORD", secrets.token_urlsafe(12))
    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-"))
    home = work / "home"
    settings = load_settings({**os.environ, "MEDLAKE_HOME": str(home)})
    day = date(2026, 11, 26)
    with console.status(f"generating {archives} production-shaped archives"):
        write_feeds(home, facilities=facilities, archives=archives, seed=seed, day=day, size_scale=size_scale)
    files = _landed(home)
    store = LocalObjectStore(home)
    lake = LakeResource.from_settings(settings).lake()
    sources = lake.sources

    # Floor: decrypt and decompress every member, nothing else.
    payloads = [(path, path.read_bytes()) for path in files]
    started = time.perf_counter()
    for _, data in payloads:
        if detect_kind(data) == "gzip":
            gzip.decompress(data)
        else:
            decrypt_floor(data, password=os.environ["MEDLAKE_ARCHIVE_PASSWORD"])
    floor_seconds = time.perf_counter() - started

    # Unpack + parse with the pipeline's pure core, no writes: where the time goes before Iceberg.
    started = time.perf_counter()
    members = records = 0
    for path, data in payloads:
        info = next(iter(store.list(str(path.relative_to(home)))))
        routed = route(info, sources.values())
        if routed.source is None or routed.landing_day is None:
            continue
        spec = sources[routed.source]
        context = ArchiveContext(
            info.key, routed.facility or "", routed.landing_day, "bench", datetime.now(UTC)
        )
        password = spec.landing.password.resolve(context.facility) if spec.landing.password else None
        result = process_archive(data, context, spec, password=password, engine=settings.archive_engine)
        if not result.quarantined:
            members += result.members
            records += result.records
    parse_seconds = time.perf_counter() - started

    defs = build_definitions(settings)
    with (
        tempfile.TemporaryDirectory() as dagster_home,
        dg.DagsterInstance.local_temp(dagster_home) as instance,
    ):
        started = time.perf_counter()
        with console.status("ingesting through the Dagster sensors and runs"):
            summary = ingest_once(defs, instance, lake)
        pipeline_seconds = time.perf_counter() - started
    return IngestBenchmark(
        archives=len(files),
        members=members,
        records=records,
        megabytes=sum(len(data) for _, data in payloads) / 1e6,
        floor_seconds=floor_seconds,
        parse_seconds=parse_seconds,
        pipeline_seconds=pipeline_seconds,
        runs=summary.runs,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
