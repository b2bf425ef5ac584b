"""`medlake bench scan`: what one landing-sensor scan costs as a day's archives accumulate in its open days.

A landing-sensor tick lists every object of today's folders (`ingest/landing.py: plan_listing`) and registers
the new ones (`register_landed`). Objects of one byte are put into today's folders of every source
(facilities interleaved, as they land) on an S3 endpoint (moto's server on loopback unless
`MEDLAKE_S3_ENDPOINT_URL` is set), the ledger on PostgreSQL when a server is given (as deployed), else
SQLite. At each count, one scan registers what is new, then `repeats` scans find nothing new: the tick of a
quiet minute late in the day. Per count: the median scan's wall time, this process's CPU (the sensor's: the
listing's parsing and the ledger), and the S3 server's CPU when the bench started it (in production that is
the object store's, not ours).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
from rich.table import Table as RichTable

from medlake_dev.bench.scale import DUMMY_AWS, s3_endpoint
from medlake_dev.bench.soak import ProcessSampler
from medlake_dev.workers import ensure_bucket, scratch_database


@dataclass
class Scan:
    objects: int  # objects in the open days
    registered: int  # what the untimed scan before them registered (the objects put since the last count)
    listed_new: int  # the most any timed scan found new (0: nothing landed between them)
    wall_seconds: float
    sensor_cpu_seconds: float
    s3_cpu_seconds: float | None  # None: an endpoint the bench did not start


@dataclass
class ScanBench:
    scans: list[Scan]
    ledger: str

    def __rich__(self) -> RichTable:
        table = RichTable(
            title=f"medlake bench scan: one landing-sensor tick, median of the repeats ({self.ledger})"
        )
        for column in (
            "objects in the open days",
            "new",
            "wall s",
            "sensor CPU s",
            "S3 server CPU s",
            "CPU ms per 1,000 objects",
        ):
            table.add_column(column, justify="right")
        for scan in self.scans:
            s3 = "" if scan.s3_cpu_seconds is None else f"{scan.s3_cpu_seconds:.2f}"
            table.add_row(
                f"{scan.objects:,}",
                str(scan.listed_new),
                f"{scan.wall_seconds:.2f}",
                f"{scan.sensor_cpu_seconds:.2f}",
                s3,
                f"{1000 * 1000 * scan.sensor_cpu_seconds / scan.objects:.0f}",
            )
        return table


def _started_server() -> psutil.Process | None:
    """The S3 server the bench started (its child, as `bench soak`'s sampler tells the kinds apart)."""
    return next((child for child in psutil.Process().children() if ProcessSampler.kind(child) == "s3"), None)


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def run_scan_benchmark(
    objects: list[int], *, repeats: int = 3, postgres_url: str | None = None, work_dir: Path | None = None
) -> ScanBench:
    from medlake_assets.defs.resources import LakeResource
    from medlake_assets.ingest.landing import day_prefix, plan_listing, register_landed
    from medlake_assets.lake.settings import load_settings

    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-scan-"))
    given = os.environ.get("MEDLAKE_S3_ENDPOINT_URL")
    with ExitStack() as stack:
        endpoint = stack.enter_context(s3_endpoint(given))
        env = {
            **os.environ,
            **{name: os.environ.get(name) or value for name, value in DUMMY_AWS.items()},
            "MEDLAKE_HOME": str(work / f"home-{uuid.uuid4().hex[:6]}"),
            "MEDLAKE_STORE_URL": f"s3://scan-{uuid.uuid4().hex[:10]}/lake",
            "MEDLAKE_S3_ENDPOINT_URL": endpoint,
        }
        if postgres_url:
            env |= {"MEDLAKE_PROFILE": "production"}
            env["MEDLAKE_CATALOG_URL"] = stack.enter_context(scratch_database(postgres_url, "medlake_scan"))
        os.environ.update({name: env[name] for name in DUMMY_AWS})
        settings = load_settings(env)
        ensure_bucket(settings)
        lake = LakeResource.from_settings(settings).lake()
        specs = sorted(lake.sources.values(), key=lambda spec: spec.name)
        now = datetime.now(UTC)
        today = now.date()
        # What a tick lists when every source can take new archives and the days before today are not due.
        prefixes = plan_listing(specs, [spec.name for spec in specs], today, now, now).prefixes
        server = None if given else _started_server()

        def put(number: int) -> None:
            spec = specs[number % len(specs)]
            facility = f"F{number // len(specs) % 2000:04d}"
            lake.store.put(f"{day_prefix(spec.name, today)}{facility}/{spec.name}_{number:08d}.zip", b"x")

        scans, landed = [], 0
        with ThreadPoolExecutor(8) as pool:
            for count in sorted(objects):
                list(pool.map(put, range(landed, count)))
                landed = count
                registered = register_landed(lake.store, lake.ledger, specs, prefixes, today=today).registered
                timings, new = [], 0
                for _ in range(repeats):
                    s3_before, cpu_before, started = _cpu(server), time.process_time(), time.perf_counter()
                    found = register_landed(lake.store, lake.ledger, specs, prefixes, today=today)
                    new = max(new, found.listed)
                    timings.append(
                        (
                            time.perf_counter() - started,
                            time.process_time() - cpu_before,
                            _cpu(server) - s3_before,
                        )
                    )
                wall, cpu, s3 = (statistics.median(values) for values in zip(*timings, strict=True))
                scans.append(Scan(count, registered, new, wall, cpu, None if server is None else s3))
    return ScanBench(scans, "PostgreSQL" if postgres_url else "SQLite")
