"""`medlake workers`: N run workers on one machine, the stand-in for N Kubernetes pods.

The Dagster daemon runs the landing sensors (new archives in the S3 landing zone become one run per
batch) and the silver/gold automation sensors; `QueuedRunCoordinator` dequeues at most N runs at a time,
within the per-source tag limit and the one-writer-per-table pools of the production instance
(`deploy/dagster.production.yaml`), and `DefaultRunLauncher` starts each run as its own process. Dagster's
storage and the Iceberg catalog are on PostgreSQL, landing, warehouse and quarantine on an S3 endpoint:
the production profile with local processes instead of pods.

    workers = Workers(settings_env, dagster_home, workers=2)
    with workers:                       # writes dagster.yaml, starts a code server and `dagster-daemon run`
        replay(slice_dir, store, ...)   # puts a generated day slice into landing at an arrival rate
        wait_until_idle(...)            # every archive loaded or quarantined and taken into silver
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from medlake_assets.defs.bronze import SOURCE_TAG
from medlake_assets.errors import MedlakeError
from medlake_assets.lake import Lake
from medlake_assets.lake.memory import allocator_environment
from medlake_assets.lake.objectstore import ObjectStore
from medlake_assets.lake.settings import PRODUCTION, Settings, load_settings

DAGSTER_PG_URL_ENV = "DAGSTER_PG_URL"
CODE_MODULE = "medlake_assets.definitions"
CODE_LOCATION = CODE_MODULE  # the name `dagster-daemon run -m` gave it: runs keep their origin
PRODUCTION_RATE_PER_HOUR = 3500
# Runs that still hold or wait for a worker.
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


class WorkersError(MedlakeError, RuntimeError):
    """The worker setup cannot start or did not finish its work; the message says which and why."""


class WorkersStalled(WorkersError):
    """Work is left (e.g. loaded batches not in silver) but no run is in flight and nothing changes."""

    def __init__(self, state: Progress, seconds: float):
        super().__init__(f"stalled: nothing ran or changed for {seconds:.0f} s with work left: {state}")
        self.state = state


def instance_config(workers: int, *, monitoring_interval_seconds: int = 10, max_retries: int = 2) -> dict:
    """The Dagster instance (dagster.yaml) of N local run workers: the production policy, local processes.

    Storage on PostgreSQL from `DAGSTER_PG_URL` (read by Dagster, never written into the file), at most
    `workers` runs at once, two per source, one writer per Iceberg table (pools checked when a run is
    dequeued, so no worker starts only to wait for a table), a run process per run, run monitoring, and
    retries of runs whose worker crashed.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return {
        "storage": {"postgres": {"postgres_url": {"env": DAGSTER_PG_URL_ENV}}},
        # Dequeue every second (default 5): with one run per cycle, a run waits for nothing but a worker.
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
        "run_launcher": {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": workers,
                "tag_concurrency_limits": [
                    {"key": SOURCE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
                ],
            },
            "pools": {"default_limit": 1, "granularity": "run"},
        },
        "run_monitoring": {
            "enabled": True,
            "poll_interval_seconds": monitoring_interval_seconds,
            "start_timeout_seconds": 180,
            # A run process cannot be resumed: a dead worker fails its run and run_retries starts a new one.
            "max_resume_run_attempts": 0,
            "free_slots_after_run_end_seconds": 30,
        },
        "run_retries": {"enabled": True, "max_retries": max_retries, "retry_on_asset_or_op_failure": False},
        "sensors": {"use_threads": True, "num_workers": 4},
        "telemetry": {"enabled": False},
    }


def write_instance(dagster_home: Path, workers: int, **options: Any) -> Path:
    """Write `dagster_home/dagster.yaml` for N workers and return its path."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    header = f"# Written by `medlake workers --workers {workers}` (medlake_dev/workers.py).\n"
    path.write_text(header + yaml.safe_dump(instance_config(workers, **options), sort_keys=False))
    return path


def dagster_postgres_url(settings: Settings, env: Mapping[str, str]) -> str:
    """Dagster's storage URL: `DAGSTER_PG_URL`, else the catalog's database (own tables, no clash).

    psycopg2 itself (Dagster's LISTEN/NOTIFY) needs the plain `postgresql://` form without a driver.
    """
    url = make_url(env.get(DAGSTER_PG_URL_ENV) or settings.catalog_url)
    if url.get_backend_name() != "postgresql":
        raise WorkersError(f"{DAGSTER_PG_URL_ENV} must name a PostgreSQL database")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def worker_environment(
    base: Mapping[str, str], dagster_home: Path, sensor_interval_seconds: int, workers: int = 1
) -> dict:
    """The daemon's (and so every run's) environment: production profile, checked before anything starts.

    The landing sensor keeps as many `ingest_landed` runs in flight as there are workers.
    """
    env = {
        **base,
        "MEDLAKE_PROFILE": PRODUCTION,
        "DAGSTER_HOME": str(Path(dagster_home).resolve()),  # Dagster refuses a relative one
        "MEDLAKE_SENSOR_INTERVAL_SECONDS": str(sensor_interval_seconds),
        "MEDLAKE_RUNS_IN_FLIGHT": str(workers),
    }
    # Each run is one worker: parallelism comes from N runs, not from a process pool inside each.
    env.setdefault("MEDLAKE_INGEST_WORKERS", "1")
    env.update(allocator_environment(env))  # read once, when a run's process loads Polars or Arrow
    settings = load_settings(env)  # SettingsError names any missing or embedded variable
    env[DAGSTER_PG_URL_ENV] = dagster_postgres_url(settings, env)
    return env


def prepare_lake(lake: Lake) -> None:
    """Create the catalog's namespaces and the ledger's tables once, before N processes race to."""
    lake.catalog  # noqa: B018 - opening creates the namespaces
    lake.ledger.counts()


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database `url` names if it does not exist (a local stand-in's setup)."""
    from sqlalchemy import create_engine, text

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).first()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


@contextmanager
def scratch_database(server_url: str, prefix: str = "medlake_scratch") -> Iterator[str]:
    """A new database on the PostgreSQL server `server_url` points at, dropped (with its sessions) after."""
    from sqlalchemy import create_engine, text

    base = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def ensure_bucket(settings: Settings) -> None:
    """Create the store's S3 bucket if it does not exist (a local stand-in's setup)."""
    import boto3
    from botocore.exceptions import ClientError

    bucket = settings.store_url.removeprefix("s3://").split("/", 1)[0]
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_workspace(dagster_home: Path, port: int) -> Path:
    """The daemon's workspace: the code server on `port`, as production's daemon reaches its user deployment.

    Not `dagster-daemon run -m ...`: a daemon that starts its own code server replaces it every 60 s
    (to pick up code changes), and each replacement imports and builds the definitions again.
    """
    path = dagster_home / "workspace.yaml"
    location = {"host": "127.0.0.1", "port": port, "location_name": CODE_LOCATION}
    path.write_text(yaml.safe_dump({"load_from": [{"grpc_server": location}]}, sort_keys=False))
    return path


def wait_for_code_server(process: subprocess.Popen, port: int, log_path: Path, timeout: float = 180) -> None:
    """Until the code server on `port` serves (it loads the definitions first), or raise if it exits."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise WorkersError(f"the code server exited ({process.returncode}); see {log_path}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise WorkersError(f"the code server did not serve within {timeout:.0f} s; see {log_path}")
            time.sleep(0.5)


class Workers:
    """A code server and `dagster-daemon run` over it with N run workers, as a context manager."""

    def __init__(
        self,
        env: Mapping[str, str],
        dagster_home: Path,
        workers: int,
        *,
        sensor_interval_seconds: int = 30,
        log_path: Path | None = None,
    ):
        self.dagster_home = Path(dagster_home)
        self.workers = workers
        self.env = worker_environment(env, self.dagster_home, sensor_interval_seconds, workers)
        self.settings = load_settings(self.env)
        self.lake = Lake(self.settings)
        self.log_path = log_path or self.dagster_home / "daemon.log"
        self.process: subprocess.Popen | None = None  # the daemon
        self.code_server: subprocess.Popen | None = None
        self._group: int | None = None
        self._instance: Any = None
        self._saved_url: str | None = None

    def start(self) -> Workers:
        write_instance(self.dagster_home, self.workers)
        prepare_lake(self.lake)
        port = free_port()
        workspace = write_workspace(self.dagster_home, port)
        bin_dir = Path(sys.executable).parent
        with self.log_path.open("ab") as log:
            # One process group of their own for the code server, the daemon and the runs the code server
            # starts: stopping the group stops them all, and a terminal's Ctrl-C reaches none directly.
            self.code_server = subprocess.Popen(
                [str(bin_dir / "dagster"), "code-server", "start", "-m", CODE_MODULE, "--location-name",
                 CODE_LOCATION, "-h", "127.0.0.1", "-p", str(port), "--log-level", "warning"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, process_group=0,
            )  # fmt: skip
            self._group = self.code_server.pid
            try:
                wait_for_code_server(self.code_server, port, self.log_path)
            except WorkersError:
                self.stop()  # `with` calls no __exit__ when __enter__ raises: leave no code server behind
                raise
            self.process = subprocess.Popen(
                [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=self._group,
            )
        return self

    def running(self) -> bool:
        return all(
            process is not None and process.poll() is None for process in (self.process, self.code_server)
        )

    def ensure_running(self) -> None:
        """Raise when the daemon or the code server has exited: nothing would load what lands."""
        if not self.running():
            raise WorkersError(f"the Dagster daemon or its code server exited; see {self.log_path}")

    def instance(self) -> Any:
        """The workers' Dagster instance, opened in this process (its dagster.yaml reads DAGSTER_PG_URL)."""
        import dagster as dg

        if self._instance is None:
            self._saved_url = os.environ.get(DAGSTER_PG_URL_ENV)
            os.environ[DAGSTER_PG_URL_ENV] = self.env[DAGSTER_PG_URL_ENV]
            self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        return self._instance

    def runs_in_flight(self) -> int:
        """Runs queued or running."""
        import dagster as dg

        statuses = [dg.DagsterRunStatus(name) for name in IN_FLIGHT]
        return self.instance().get_runs_count(filters=dg.RunsFilter(statuses=statuses))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the workers' process group (code server, daemon, run workers), SIGKILL if it lingers."""
        if self._group is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self._group, sig)
            except ProcessLookupError:
                break
            try:
                for process in (self.process, self.code_server):
                    if process is not None:
                        process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = self.code_server = self._group = None
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None
            if self._saved_url is None:
                os.environ.pop(DAGSTER_PG_URL_ENV, None)
            else:
                os.environ[DAGSTER_PG_URL_ENV] = self._saved_url

    def __enter__(self) -> Workers:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Landed:
    """One archive the replayer put into the landing zone, and when (epoch seconds)."""

    key: str
    at: float


def slice_keys(slice_dir: Path) -> list[str]:
    """The landing keys of a generated slice (`medlake generate --out DIR`), in key order."""
    root = Path(slice_dir)
    return sorted(
        path.relative_to(root).as_posix()
        for path in (root / "landing").rglob("*")
        if path.is_file() and not path.name.startswith(".")
    )


def replay(
    slice_dir: Path,
    store: ObjectStore,
    *,
    rate_per_hour: float = PRODUCTION_RATE_PER_HOUR,
    speedup: float = 1.0,
    limit: int | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Landed]:
    """Put the slice's archives into `store` one by one, evenly spaced at `rate_per_hour * speedup`.

    `rate_per_hour=0` puts them all at once. Yields each archive with the time its put completed (the
    moment a sensor could first see it). Files are put in a seeded shuffle of facilities, not key order,
    so batches mix facilities as production arrivals do.
    """
    import random

    keys = slice_keys(slice_dir)
    random.Random(0).shuffle(keys)
    keys = keys[:limit] if limit is not None else keys
    interval = 3600.0 / (rate_per_hour * speedup) if rate_per_hour > 0 else 0.0
    started = clock()
    for number, key in enumerate(keys):
        due = started + number * interval
        if (wait := due - clock()) > 0:
            sleep(wait)
        store.put(key, (Path(slice_dir) / key).read_bytes())
        yield Landed(key, clock())


@dataclass(frozen=True)
class Progress:
    """How far the lake is with the landed archives (from the ledger)."""

    files: int
    pending: int
    loaded: int
    quarantined: int
    batches_waiting_for_silver: int
    runs_in_flight: int

    def settled(self, expected_files: int) -> bool:
        return (
            self.files >= expected_files
            and self.pending == 0
            and self.batches_waiting_for_silver == 0
            and self.runs_in_flight == 0
        )


def progress(lake: Lake, runs_in_flight: int) -> Progress:
    """Ledger counts, and the loaded bronze batches that their silver table has not taken in yet."""
    from sqlalchemy import and_, func, select

    from medlake_assets.lake.ledger import LOADED, PENDING, QUARANTINED, files, processed

    ledger = lake.ledger
    status = select(files.c.status, func.count()).group_by(files.c.status)
    taken = and_(processed.c.batch_id == files.c.batch_id, processed.c.consumer == "silver." + files.c.source)
    waiting = (
        select(func.count(func.distinct(files.c.batch_id)))
        .where(files.c.status == LOADED, ~select(processed.c.batch_id).where(taken).exists())
        .scalar_subquery()
    )
    with ledger.engine.connect() as connection:
        counts = dict(connection.execute(status).all())
        batches_waiting = connection.execute(select(waiting)).scalar_one()
    return Progress(
        files=sum(counts.values()),
        pending=counts.get(PENDING, 0),
        loaded=counts.get(LOADED, 0),
        quarantined=counts.get(QUARANTINED, 0),
        batches_waiting_for_silver=batches_waiting,
        runs_in_flight=runs_in_flight,
    )


def wait_until_settled(
    workers: Workers,
    expected_files: int,
    *,
    timeout_seconds: float,
    stall_seconds: float = 120.0,
    poll_seconds: float = 2.0,
    quiet_polls: int = 3,
    on_poll: Callable[[Progress], None] | None = None,
) -> Progress:
    """Poll until every expected archive is loaded or quarantined, taken into silver, and no run is left
    for `quiet_polls` polls in a row (automation may still start an `encounters` run after silver).

    Raises `WorkersStalled` when work is left but nothing has run or changed for `stall_seconds`: no
    sensor or automation condition is going to start it.
    """
    deadline = time.monotonic() + timeout_seconds
    quiet = 0
    last_change, last_state = time.monotonic(), None
    while True:
        workers.ensure_running()
        state = progress(workers.lake, workers.runs_in_flight())
        if on_poll:
            on_poll(state)
        if state != last_state or state.runs_in_flight:
            last_change, last_state = time.monotonic(), state
        quiet = quiet + 1 if state.settled(expected_files) else 0
        if quiet >= quiet_polls:
            return state
        if time.monotonic() - last_change > stall_seconds:
            raise WorkersStalled(state, stall_seconds)
        if time.monotonic() > deadline:
            raise WorkersError(f"not settled after {timeout_seconds:.0f} s: {state}")
        time.sleep(poll_seconds)
