"""`medlake bench soak`: the deployed mode at the production arrival rate for a long time, through a surge.

`medlake workers` (Dagster daemon, `QueuedRunCoordinator`, a process per run, PostgreSQL + a loopback S3
endpoint) with N run workers is fed a generated day of production-shaped archives (the generator's size
mix, 1% of them 1.5-40 MB) in real time: `normal` minutes at the production rate (3,500 archives/h), then
`surge` minutes at `factor` times that, then `after` minutes at the production rate again. After the
last put it waits until every archive is in silver (or `drain_limit` runs out), then reports per window
(5 minutes by default): arrivals, archives reaching silver, backlog at the window's end, landing-to-silver
latency of the window's arrivals (p50 / p95 / max), peak RSS per kind of process (daemon, code server,
run worker), CPU cores used (run workers, the S3 server, the rest) and runs finished / failed; and at the
end compares the lake with the generator's manifest: every archive loaded, bronze rows per source equal
to the manifest's records with no duplicate record, silver equal to bronze (append: the same rows; upsert:
one row per distinct key; scd2: one current row per distinct key).

Latency: from the archive's put completing to its batch's `processed_at` for `silver.<source>` in the
ledger (written right after the silver commit: the rows are queryable from then on). A second table cuts
it into stages per phase (`STAGES`: until registered, until its run was requested, queued, in the run),
with what the slowest 5% spent in each, and `archives-<time>.json` keeps each archive's times.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from multiprocessing import get_context
from pathlib import Path

import dagster as dg
import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from medlake_assets.defs.bronze import batch_tag
from medlake_assets.defs.flow import sources_in_run
from medlake_assets.ingest.landing import LANDING, day_prefix
from medlake_assets.lake.ledger.tables import files
from medlake_assets.lake.memory import StepMemory
from medlake_dev.bench.scale import DUMMY_AWS, s3_endpoint, silver_times
from medlake_dev.workers import (
    Workers,
    WorkersError,
    ensure_bucket,
    scratch_database,
    wait_until_settled,
)

# The mission's feeds: about 15 million records a day in about 77,000 archives.
MISSION_RECORDS_PER_ARCHIVE = 15_000_000 / 77_000


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rate_per_hour: float

    @property
    def archives(self) -> int:
        return round(self.seconds * self.rate_per_hour / 3600)


def soak_phases(
    normal_minutes: float, surge_minutes: float, after_minutes: float, rate_per_hour: float, factor: float
) -> list[Phase]:
    phases = [
        Phase("normal", normal_minutes * 60, rate_per_hour),
        Phase("surge", surge_minutes * 60, rate_per_hour * factor),
        Phase("after", after_minutes * 60, rate_per_hour),
    ]
    return [phase for phase in phases if phase.archives > 0]


def arrival_plan(phases: Sequence[Phase]) -> list[tuple[float, str]]:
    """(seconds after the start, phase) of every arrival: evenly spaced within each phase."""
    plan, start = [], 0.0
    for phase in phases:
        interval = phase.seconds / phase.archives
        plan += [(start + number * interval, phase.name) for number in range(phase.archives)]
        start += phase.seconds
    return plan


ProcessKey = tuple[int, float]
"""A sampled process: its pid and its start (epoch seconds)."""


class ProcessSampler:
    """Samples the RSS and CPU time of a process tree every second: the bench's own children (the daemon,
    its code server, the run workers, and the S3 server when the bench started it)."""

    def __init__(self, root_pids: Sequence[int], interval: float = 1.0):
        self.root_pids = list(root_pids)
        self.interval = interval
        # A process is its pid and its start: this machine's pids wrap at 32,768 within an hour's soak, and a
        # pid taken again counted a run's CPU as another kind's, and a window's CPU below zero.
        self.samples: list[tuple[float, ProcessKey, int]] = []  # (time, process, rss bytes)
        self.cpu: dict[ProcessKey, list[tuple[float, float]]] = defaultdict(list)  # (time, CPU seconds)
        self.kinds: dict[ProcessKey, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(process: psutil.Process) -> str | None:
        """The process's kind by its command line; None when it shows none (a process exiting: Linux empties
        its command line once its memory is gone, which for a run worker freeing a GB takes a while)."""
        command = " ".join(process.cmdline())
        if not command:
            return None
        if "dagster-daemon" in command:
            return "daemon"
        if "api grpc" in command or "code-server" in command or "dagster._grpc" in command:
            return "code server"
        if "multiprocessing" in command or "execute_run" in command:
            return "run worker"
        if "moto_server" in command:
            return "s3"
        return "other"

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            processes: dict[int, psutil.Process] = {}
            for pid in self.root_pids:
                try:
                    root = psutil.Process(pid)
                    processes |= {child.pid: child for child in root.children(recursive=True)}
                except psutil.Error:
                    continue
            for pid, process in processes.items():
                try:
                    key = (pid, process.create_time())
                    self.classify(key, process)
                    used = process.cpu_times()
                    self.samples.append((now, key, process.memory_info().rss))
                    self.cpu[key].append((now, used.user + used.system))
                except psutil.Error:
                    continue
            self._stop.wait(self.interval)

    def classify(self, key: ProcessKey, process: psutil.Process) -> None:
        """Classified at every sample: a run worker first seen between its fork and its exec shows its
        parent's command line and was counted as another kind for its whole life. One seen as it exits shows
        none and keeps its kind: its last sample moved a run's CPU and peak to "the rest"."""
        kind = self.kind(process)
        if kind is not None or key not in self.kinds:
            self.kinds[key] = kind or "other"

    @contextmanager
    def watch(self) -> Iterator[ProcessSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def peaks(self, start: float, end: float) -> dict[str, float]:
        """Peak RSS (MB) of one process of each kind within [start, end)."""
        peaks: dict[str, float] = defaultdict(float)
        for at, key, rss in self.samples:
            if start <= at < end:
                peaks[self.kinds[key]] = max(peaks[self.kinds[key]], rss / 2**20)
        return dict(peaks)

    def cores(self, start: float, end: float) -> dict[str, float]:
        """CPU cores each kind of process used on average within [start, end), from the samples: a process
        started within it counts from zero, one gone within it up to its last sample."""
        used: dict[str, float] = defaultdict(float)
        for key, samples in self.cpu.items():
            before = [cpu for at, cpu in samples if at < start]
            within = [cpu for at, cpu in samples if start <= at < end]
            if not within:
                continue
            # Not sampled before the window: from zero if it started within it, else from its first sample.
            started_within = key[1] >= start
            baseline = before[-1] if before else 0.0 if started_within else within[0]
            used[self.kinds[key]] += within[-1] - baseline
        return {kind: seconds / (end - start) for kind, seconds in used.items()}


@dataclass
class Window:
    start: float
    end: float
    phases: str
    arrivals: int = 0
    in_silver: int = 0
    backlog: int = 0
    latencies: list[float] = field(default_factory=list)
    not_in_silver: int = 0
    rss: dict[str, float] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)
    runs: int = 0
    failed_runs: int = 0


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class SoakResult:
    phases: list[Phase]
    workers: int
    sensor_interval: int
    windows: list[Window]
    landed: int
    in_silver: int
    normal_p95: float
    normal_backlogs: list[int]
    surge_end_backlog: int
    drain_seconds: float | None
    failed_runs: int
    runs: int
    checks: list[tuple[str, bool, str]]
    profiles: list[dict]
    load_average: float
    records: int
    machine: str = ""
    stages: dict[str, tuple[float, ...]] = field(default_factory=dict)  # key -> `STAGES` seconds
    phase_of: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every target met but the stretch, and every check: what the command's exit code says."""
        return all(verdict.passed for verdict in verdicts(self) if verdict.required)


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    measured: str
    required: bool = True  # the stretch target is reported, not required


def verdicts(result: SoakResult) -> list[Verdict]:
    """The issue's targets (backlog, p95, surge drain, no failed run) and the end checks, each met or not."""
    backlogs = result.normal_backlogs
    grows = len(backlogs) >= 2 and backlogs[-1] > max(backlogs[0], 1) * 2
    p95 = f"{result.normal_p95:.1f} s"
    found = [
        Verdict(
            "backlog does not grow at the production rate",
            not grows,
            f"end of normal windows: {backlogs}",
        ),
        Verdict("landing-to-silver p95 <= 60 s at the production rate", result.normal_p95 <= 60, p95),
        Verdict("(stretch) p95 <= 30 s", result.normal_p95 <= 30, p95, required=False),
    ]
    if any(phase.name == "surge" for phase in result.phases):
        drained = result.drain_seconds
        found.append(
            Verdict(
                "surge backlog drained within 15 min of its end",
                drained is not None and drained <= 900,
                f"backlog {result.surge_end_backlog} at the surge's end; drained after "
                + (f"{drained:.0f} s" if drained is not None else "never (within the run)"),
            )
        )
    failed = f"{result.failed_runs} failed of {result.runs}"
    found.append(Verdict("no failed run", result.failed_runs == 0, failed))
    everything = result.in_silver == result.landed
    found.append(Verdict("every archive in silver", everything, f"{result.in_silver} of {result.landed}"))
    return found + [Verdict(name, passed, measured) for name, passed, measured in result.checks]


def _run_records(workers: Workers) -> list[tuple[float, float | None, str, str]]:
    """(created, ended, status, job) of every run."""
    return [
        (
            record.create_timestamp.timestamp(),
            record.end_time,
            record.dagster_run.status.value,
            record.dagster_run.job_name,
        )
        for record in workers.instance().get_run_records()
    ]


_CUT = re.compile(r"_(\d{6})_(\d+)\.[^/]*$")  # `<source>_<facility>_<HHMMSS>_<index>.zip`


def on_landing_day(key: str, day: date) -> str:
    """A generated archive's key in the landing folder of `day`: a feed puts a file into the folder of the day
    it sends it, so a soak running past midnight (UTC) lands the rest of its archives in the next day's."""
    source, _year, _month, _day, name = key.removeprefix(LANDING).split("/", 4)
    return day_prefix(source, day) + name


def cut_order(key: str) -> tuple[str, str]:
    """An archive's place in the feed: the time of day its facility cut it (from its generated name).

    Feeds land in the order they are cut, facilities interleaved; a uniform shuffle of the day would land
    late-evening archives first, so that every batch held orders from all over the day, which no feed does.
    """
    match = _CUT.search(key)
    return (match.group(1) if match else "", key)


def run_profiles(instance: dg.DagsterInstance) -> list[dict]:
    """Every run's timeline and steps, from the event log, kept before the soak drops its database.

    Per run: job, status, seconds from created to started (the queue wait and the run process's start),
    from started to its first step, from started to its end; per step its seconds and its peak RSS (the
    line the step's release hook logs); per materialization its numeric metadata (counts and seconds only:
    no record value is ever in metadata).
    """
    wanted = {
        dg.DagsterEventType.RUN_START,
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.ASSET_MATERIALIZATION,
    }
    profiles = []
    for record in instance.get_run_records():
        run = record.dagster_run
        started = first_step = None
        steps: dict[str, float] = {}
        materializations: dict[str, dict[str, float]] = {}
        step_peaks: dict[str, int] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                if (described := StepMemory.parse(entry.user_message)) is not None:
                    step_peaks[described[0]] = described[1].peak_mb
                continue
            if event.event_type not in wanted:
                continue
            if event.event_type == dg.DagsterEventType.RUN_START:
                started = entry.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_START:
                first_step = min(first_step or entry.timestamp, entry.timestamp)
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                duration = getattr(event.event_specific_data, "duration_ms", None)
                if duration is not None:
                    steps[event.step_key or "?"] = duration / 1000
            elif (materialization := entry.asset_materialization) is not None:
                materializations[materialization.asset_key.to_user_string()] = {
                    name: value.value
                    for name, value in materialization.metadata.items()
                    if isinstance(value.value, int | float) and not isinstance(value.value, bool)
                }
        created = record.create_timestamp.timestamp()
        profiles.append(
            {
                "run_id": run.run_id,
                "job": run.job_name,
                "batches": {source: run.tags[batch_tag(source)] for source in sources_in_run(run.tags)},
                "status": run.status.value,
                "created": created,
                "queued_s": (started - created) if started else None,
                "startup_s": (first_step - started) if started and first_step else None,
                "total_s": (record.end_time - started) if started and record.end_time else None,
                "steps": steps,
                "step_peak_mb": step_peaks,
                "materializations": materializations,
            }
        )
    return sorted(profiles, key=lambda profile: profile["created"])


QUEUED = "(queued and process start)"

# Where an archive's landing-to-silver time goes, in order.
STAGES = ("until registered", "registered to run requested", "run queued and starting", "run start to silver")


def latency_stages(
    landed: Mapping[str, float],
    registered: Mapping[str, tuple[float, str]],
    in_silver: Mapping[str, float],
    profiles: Sequence[Mapping],
) -> dict[str, tuple[float, ...]]:
    """Per archive in silver, its latency cut into `STAGES`: until the landing sensor registered it, until
    the run of its batch was requested (claims wait while a run of its source is in flight), in the queue
    and the run process's start, then in the run until its silver commit. The stages add up to the latency.

    `registered`: key -> (first seen, batch id) from the ledger. A batch's last run (by creation) is the one
    that loaded it; an archive whose run is unknown (e.g. loaded by a catch-up run) is left out.
    """
    run_of = {batch: profile for profile in profiles for batch in profile.get("batches", {}).values()}
    stages = {}
    for key, silver_at in in_silver.items():
        if key not in landed or key not in registered:
            continue
        seen, batch = registered[key]
        run = run_of.get(batch)
        if run is None or run["queued_s"] is None:
            continue
        started = run["created"] + run["queued_s"]
        stages[key] = (seen - landed[key], run["created"] - seen, run["queued_s"], silver_at - started)
    return stages


def stage_table(stages: Mapping[str, tuple[float, ...]], phase_of: Mapping[str, str]) -> Table:
    """Per phase and stage: p50, p95 and max, and the stage's mean over the phase's slowest 5% of archives
    (latency at or above the phase's p95): what the tail is made of."""
    table = Table(title="bench soak: where the latency went (seconds per archive)")
    for column in ("phase", "stage", "p50", "p95", "max", "mean in the slowest 5%"):
        table.add_column(column, justify="left" if column in ("phase", "stage") else "right")
    for phase in dict.fromkeys(phase_of.values()):
        rows = [parts for key, parts in stages.items() if phase_of.get(key) == phase]
        if not rows:
            continue
        cutoff = quantile([sum(parts) for parts in rows], 0.95)
        slowest = [parts for parts in rows if sum(parts) >= cutoff]
        for index, stage in enumerate(STAGES):
            values = [parts[index] for parts in rows]
            table.add_row(
                phase, stage, f"{quantile(values, 0.5):.1f}", f"{quantile(values, 0.95):.1f}",
                f"{max(values):.1f}", f"{sum(parts[index] for parts in slowest) / len(slowest):.1f}",
            )  # fmt: skip
    return table


def step_table(profiles: Sequence[Mapping]) -> Table:
    """Where the runs' time and memory went: per step (and per run's queue wait and start-up), total and
    share of the time, and the step's highest peak RSS in any run (which step sizes the run pods)."""
    totals: dict[str, list[float]] = defaultdict(list)
    peaks: dict[str, int] = defaultdict(int)
    for profile in profiles:
        for name, label in (("queued_s", QUEUED), ("startup_s", "(run start to first step)")):
            if profile[name] is not None:
                totals[label].append(profile[name])
        for step, seconds in profile["steps"].items():
            totals[step].append(seconds)
        for step, peak in profile["step_peak_mb"].items():
            peaks[step] = max(peaks[step], peak)
    busy = sum(sum(values) for name, values in totals.items() if name != QUEUED)
    table = Table(title=f"bench soak: where the run time went ({len(profiles)} runs)")
    for column in ("step", "runs", "total s", "share of run time", "p50 s", "max s", "peak RSS MB"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for name, values in sorted(totals.items(), key=lambda item: -sum(item[1])):
        share = "" if name == QUEUED else f"{sum(values) / busy:.0%}" if busy else ""
        table.add_row(
            name, str(len(values)), f"{sum(values):,.0f}", share,
            f"{quantile(values, 0.5):.1f}", f"{max(values):.1f}", f"{peaks[name]:,}" if name in peaks else "",
        )  # fmt: skip
    return table


def generate_pool(
    folder: Path,
    *,
    archives: int,
    facilities: int,
    seed: int,
    size_scale: float,
    day: date,
    processes: int | None = None,
) -> tuple[dict[str, Path], dict]:
    """`archives` generated archives of `day` (landing key -> file) and their manifest entries.

    Generated in chunks on every core (an hour at production sizes is ~1 GB of archives), each chunk with
    its own seed; a key two chunks both made (same facility, second and number) is kept once. Chunks
    already generated (their manifest.json written) are reused.
    """
    from medlake_dev.generate import write_feeds

    processes = processes or os.cpu_count() or 1
    sizes = [archives // processes + (1 if index < archives % processes else 0) for index in range(processes)]
    chunks = [folder / f"chunk-{index}" for index in range(processes)]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                write_feeds,
                chunk,
                facilities=facilities,
                archives=size,
                seed=seed + index,
                day=day,
                size_scale=size_scale,
            )
            for index, (chunk, size) in enumerate(zip(chunks, sizes, strict=True))
            if size and not (chunk / "manifest.json").exists()
        ]
        for future in futures:
            future.result()
    paths: dict[str, Path] = {}
    entries = []
    for chunk in chunks:
        if not (chunk / "manifest.json").exists():
            continue
        for entry in json.loads((chunk / "manifest.json").read_text())["archives"]:
            if entry["key"] not in paths:
                paths[entry["key"]] = chunk / entry["key"]
                entries.append(entry)
    return paths, {"archives": entries}


def lake_checks(
    workers: Workers, manifest: Mapping, landed: Mapping[str, str]
) -> list[tuple[str, bool, str]]:
    """The lake against the generator's manifest: nothing lost, nothing doubled, bronze to silver. `landed`
    maps each landed key to its manifest key (`on_landing_day`)."""
    from medlake_assets.lake.columns import IS_CURRENT
    from medlake_assets.serving.sql import connect

    con = connect(workers.lake)
    # Counting a soak's ~140M rows by key beside the still-running workers: grouped counts that spill to
    # disk under a limit (an unlimited count(DISTINCT ...) took 14 GB and the machine's OOM killer ended it).
    con.execute(f"SET memory_limit = '3GB'; SET temp_directory = '{workers.dagster_home / 'duckdb-spill'}'")
    con.execute("SET preserve_insertion_order = false")
    checks = []
    by_key = {archive["key"]: archive for archive in manifest["archives"]}
    ledger = dict(con.execute("SELECT key, status FROM meta.files").fetchall())
    loaded = [key for key in landed if ledger.get(key) == "loaded"]
    checks.append(
        ("every landed archive loaded", len(loaded) == len(landed), f"{len(loaded)} of {len(landed)} loaded")
    )
    for source, spec in sorted(workers.lake.sources.items()):
        expected = sum(
            by_key[generated]["records"]
            for generated in landed.values()
            if by_key[generated]["source"] == source
        )
        distinct, rows = con.execute(
            "SELECT count(*), coalesce(sum(n), 0) FROM "
            f"(SELECT count(*) AS n FROM bronze.{source} GROUP BY _archive, _member, _record)"
        ).fetchone()
        checks.append(
            (
                f"bronze.{source} = manifest, no duplicate record",
                rows == expected == distinct,
                f"{rows:,} rows, {distinct:,} distinct records, manifest {expected:,}",
            )
        )
        key = ", ".join(spec.write.primary_key)
        if spec.write.mode == "append":
            silver = con.execute(f"SELECT count(*) FROM silver.{source}").fetchone()[0]
            checks.append((f"silver.{source} = bronze", silver == rows, f"{silver:,} rows, bronze {rows:,}"))
            continue
        keys = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM bronze.{source})").fetchone()[0]
        current = f"WHERE {IS_CURRENT}" if spec.write.mode == "scd2" else ""
        silver_keys, silver = con.execute(
            f"SELECT count(*), coalesce(sum(n), 0) FROM "
            f"(SELECT count(*) AS n FROM silver.{source} {current} GROUP BY {key})"
        ).fetchone()
        checks.append(
            (
                f"silver.{source}: one row per bronze key",
                silver == silver_keys == keys,
                f"{silver:,} rows, {silver_keys:,} distinct keys, bronze {keys:,} keys",
            )
        )
    return checks


def run_soak(
    *,
    phases: Sequence[Phase],
    workers_count: int,
    sensor_interval: int,
    postgres_url: str,
    facilities: int,
    seed: int,
    size_scale: float,
    window_seconds: float,
    drain_limit_seconds: float,
    work_dir: Path | None,
    console: Console,
) -> SoakResult:
    base_env = dict(os.environ)
    if not base_env.get("MEDLAKE_ARCHIVE_PASSWORD"):
        raise ValueError("MEDLAKE_ARCHIVE_PASSWORD is not set (the generator and the workers share it)")
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-soak-"))
    plan = arrival_plan(phases)
    today = datetime.now(UTC).date()
    pool_dir = work_dir / f"pool-{today}-{len(plan)}a-{facilities}f-{seed}s-{size_scale:g}x"
    started = time.perf_counter()
    with console.status(f"generating {len(plan)} archives into {pool_dir} (reused by a later run today)"):
        paths, manifest = generate_pool(
            pool_dir, archives=len(plan), facilities=facilities, seed=seed, size_scale=size_scale, day=today
        )
    console.print(f"{len(paths)} archives ready in {time.perf_counter() - started:.0f} s")
    keys = sorted(paths, key=cut_order)
    with (
        s3_endpoint(os.environ.get("MEDLAKE_S3_ENDPOINT_URL")) as endpoint,
        scratch_database(postgres_url, "medlake_soak") as database_url,
    ):
        env = {
            **base_env,
            **{name: base_env.get(name) or value for name, value in DUMMY_AWS.items()},
            "MEDLAKE_CATALOG_URL": database_url,
            "MEDLAKE_STORE_URL": f"s3://soak-{uuid.uuid4().hex[:10]}/lake",
            "MEDLAKE_S3_ENDPOINT_URL": endpoint,
            "MEDLAKE_HOME": str(work_dir / "home"),
        }
        os.environ.update({name: env[name] for name in DUMMY_AWS})
        workers = Workers(
            env,
            work_dir / f"dagster-{uuid.uuid4().hex[:6]}",
            workers_count,
            sensor_interval_seconds=sensor_interval,
        )
        ensure_bucket(workers.settings)
        landed: dict[str, float] = {}
        phase_of: dict[str, str] = {}
        generated_as: dict[str, str] = {}  # landed key -> the manifest's
        with workers:
            # The bench's children: the workers' processes and their runs, and the S3 server it started.
            with ProcessSampler([os.getpid()]).watch() as sampler:
                started = time.time()
                last_report = started
                for (offset, phase), generated in zip(plan, keys, strict=False):
                    if (wait := started + offset - time.time()) > 0:
                        time.sleep(wait)
                    key = on_landing_day(generated, datetime.now(UTC).date())
                    workers.lake.store.put(key, paths[generated].read_bytes())
                    landed[key] = time.time()
                    phase_of[key] = phase
                    generated_as[key] = generated
                    if time.time() - last_report >= 60:
                        workers.ensure_running()  # feeding a dead daemon for an hour measures nothing
                        last_report = time.time()
                        in_silver = len(silver_times(workers))
                        console.print(
                            f"{(last_report - started) / 60:5.1f} min [{phase}]: {len(landed)} landed, "
                            f"{in_silver} in silver, backlog {len(landed) - in_silver}"
                        )
                replayed = time.time()
                console.print(f"all {len(landed)} archives landed in {replayed - started:.0f} s; draining")
                try:
                    wait_until_settled(
                        workers, len(landed), timeout_seconds=drain_limit_seconds, stall_seconds=600
                    )
                except WorkersError as error:
                    console.print(f"[red]{error}[/red]")
                times = {key: at.timestamp() for key, (at, _) in silver_times(workers).items()}
                registered = registered_times(workers)
                ended = time.time()
            runs = _run_records(workers)
            profiles = run_profiles(workers.instance())
            stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
            (work_dir / f"runs-{stamp}.json").write_text(json.dumps(profiles))
            # Each archive's way (landed, first seen, batch, in silver): to look into a tail afterwards.
            archives = {}
            for key, at in landed.items():
                seen, batch = registered.get(key, (None, None))
                archives[key] = {"landed": at, "seen": seen, "batch": batch, "silver": times.get(key)}
            (work_dir / f"archives-{stamp}.json").write_text(json.dumps(archives))
            checks = lake_checks(workers, manifest, generated_as)
        sent = set(generated_as.values())
        return summarize(
            records=sum(entry["records"] for entry in manifest["archives"] if entry["key"] in sent),
            phases=list(phases),
            workers_count=workers_count,
            sensor_interval=sensor_interval,
            started=started,
            ended=ended,
            landed=landed,
            phase_of=phase_of,
            times=times,
            runs=runs,
            sampler=sampler,
            window_seconds=window_seconds,
            checks=checks,
            profiles=profiles,
            stages=latency_stages(landed, registered, times, profiles),
        )


def registered_times(workers: Workers) -> dict[str, tuple[float, str]]:
    """Per archive the ledger holds: when the landing sensor first saw it, and its batch."""
    query = select(files.c.key, files.c.first_seen_at, files.c.batch_id)
    with workers.lake.ledger.engine.connect() as connection:
        return {key: (seen.timestamp(), batch) for key, seen, batch in connection.execute(query)}


def summarize(
    *,
    phases: list[Phase],
    workers_count: int,
    sensor_interval: int,
    started: float,
    ended: float,
    landed: Mapping[str, float],
    phase_of: Mapping[str, str],
    times: Mapping[str, float],
    runs: Sequence[tuple[float, float | None, str, str]],
    sampler: ProcessSampler,
    window_seconds: float,
    checks: list[tuple[str, bool, str]],
    profiles: list[dict],
    records: int,
    stages: dict[str, tuple[float, ...]],
) -> SoakResult:
    """Per-window figures and the targets, from arrival times, silver times, runs and RSS samples."""
    bounds, start = {}, started
    for phase in phases:
        bounds[phase.name] = (start, start + phase.seconds)
        start += phase.seconds
    windows = []
    at = started
    while at < ended:
        end = min(at + window_seconds, ended)
        names = [name for name, (lo, hi) in bounds.items() if lo < end and hi > at] or ["drain"]
        window = Window(start=at - started, end=end - started, phases="+".join(names))
        arrived = [key for key, moment in landed.items() if at <= moment < end]
        window.arrivals = len(arrived)
        window.latencies = [times[key] - landed[key] for key in arrived if key in times]
        window.not_in_silver = sum(key not in times for key in arrived)
        window.in_silver = sum(at <= moment < end for key, moment in times.items() if key in landed)
        window.backlog = sum(moment < end for moment in landed.values()) - sum(
            moment < end for key, moment in times.items() if key in landed
        )
        window.rss = sampler.peaks(at, end)
        window.cores = sampler.cores(at, end)
        finished = [run for run in runs if run[1] is not None and at <= run[1] < end]
        window.runs = len(finished)
        window.failed_runs = sum(run[2] == "FAILURE" for run in finished)
        windows.append(window)
        at = end
    normal_keys = [key for key, phase in phase_of.items() if phase == "normal"]
    normal_latencies = [times[key] - landed[key] for key in normal_keys if key in times]
    surge_end = bounds["surge"][1] if "surge" in bounds else None
    normal_backlogs = [w.backlog for w in windows if w.phases == "normal"]
    surge_end_backlog, drain_seconds = 0, None
    if surge_end is not None:
        in_silver_by = sorted(moment for key, moment in times.items() if key in landed)
        landed_by = sorted(landed.values())

        def backlog_at(moment: float) -> int:
            return sum(t <= moment for t in landed_by) - sum(t <= moment for t in in_silver_by)

        surge_end_backlog = backlog_at(surge_end)
        # Drained: the backlog is back to what the production rate alone leaves (the normal phase's worst).
        normal_level = max(normal_backlogs or [0])
        drained = next(
            (moment for moment in in_silver_by if moment >= surge_end and backlog_at(moment) <= normal_level),
            None,
        )
        drain_seconds = drained - surge_end if drained is not None else None
    return SoakResult(
        phases=phases,
        workers=workers_count,
        sensor_interval=sensor_interval,
        windows=windows,
        landed=len(landed),
        in_silver=sum(key in times for key in landed),
        normal_p95=quantile(normal_latencies, 0.95),
        normal_backlogs=normal_backlogs,
        surge_end_backlog=surge_end_backlog,
        drain_seconds=drain_seconds,
        failed_runs=sum(run[2] == "FAILURE" for run in runs),
        runs=len(runs),
        checks=checks,
        profiles=profiles,
        load_average=os.getloadavg()[0],
        records=records,
        machine=f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB",
        stages=stages,
        phase_of=dict(phase_of),
    )


def _cores_cell(cores: Mapping[str, float]) -> str:
    """Run workers, the S3 server (when the bench started it) and every other process of the bench."""
    rest = sum(value for kind, value in cores.items() if kind not in ("run worker", "s3"))
    s3 = f"{cores['s3']:.2f}" if "s3" in cores else "-"
    return f"{cores.get('run worker', 0):.2f} / {s3} / {rest:.2f}"


def render(result: SoakResult) -> list[Table]:
    description = ", ".join(
        f"{phase.name} {phase.seconds / 60:g} min at {phase.rate_per_hour:,.0f}/h" for phase in result.phases
    )
    per_archive = result.records / max(result.landed, 1)
    table = Table(
        title=f"bench soak: {description}; {result.workers} worker(s), sensor every "
        f"{result.sensor_interval} s; {result.records:,} records in {result.landed:,} archives "
        f"({per_archive:,.0f} per archive, {per_archive / MISSION_RECORDS_PER_ARCHIVE:.1f}x the mission's "
        f"{MISSION_RECORDS_PER_ARCHIVE:.0f}); {result.machine}, load average at the end "
        f"{result.load_average:.1f}"
    )
    columns = [
        "window (min)", "phase", "arrivals", "into silver", "backlog at end", "latency p50 s", "p95 s",
        "max s", "not in silver", "peak RSS MB: daemon / code server / run",
        "CPU cores: runs / S3 / the rest", "runs (failed)",
    ]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("phase",) else "right")
    for window in result.windows:
        rss = window.rss
        table.add_row(
            f"{window.start / 60:.0f}-{window.end / 60:.0f}",
            window.phases,
            str(window.arrivals),
            str(window.in_silver),
            str(window.backlog),
            f"{quantile(window.latencies, 0.5):.1f}",
            f"{quantile(window.latencies, 0.95):.1f}",
            f"{max(window.latencies, default=math.nan):.1f}",
            str(window.not_in_silver),
            " / ".join(f"{rss.get(kind, 0):.0f}" for kind in ("daemon", "code server", "run worker")),
            _cores_cell(window.cores),
            f"{window.runs} ({window.failed_runs})",
        )
    targets = Table(title="bench soak: targets and checks")
    for column in ("target / check", "result", "measured"):
        targets.add_column(column)
    for verdict in verdicts(result):
        result_cell = "[green]met[/green]" if verdict.passed else "[red]not met[/red]"
        targets.add_row(verdict.name, result_cell, verdict.measured)
    return [table, stage_table(result.stages, result.phase_of), step_table(result.profiles), targets]
