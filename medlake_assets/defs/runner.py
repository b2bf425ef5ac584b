"""`medlake ingest`: evaluate the same sensors Dagster's daemon runs and execute their runs in process."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from medlake_assets.ingest.landing import landed_days
from medlake_assets.lake import Lake

RunCallback = Callable[[str, dg.RunRequest, bool], None]
RUNNER_PID_TAG = "medlake/runner_pid"
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def quiet(run_config: dg.RunConfig | dict | None) -> dict:
    """`run_config` with the console logger at WARNING: a run executed from the command line keeps every
    event in the Dagster instance (the UI shows them) but prints only warnings and errors."""
    if isinstance(run_config, dg.RunConfig):
        run_config = run_config.to_config_dict()
    return {**(run_config or {}), "loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def fail_orphaned_runs(instance: dg.DagsterInstance) -> int:
    """Mark runs of an in-process runner that died (e.g. SIGKILL) as failed, so their batches are retried."""
    import psutil

    orphaned = 0
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED)):
        pid = run.tags.get(RUNNER_PID_TAG)
        if pid and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
            instance.report_run_failed(run, f"the in-process runner (pid {pid}) is gone")
            orphaned += 1
    return orphaned


@dataclass
class IngestSummary:
    runs: int = 0
    failed_runs: int = 0
    seconds: float = 0.0
    sensors: dict[str, int] = field(default_factory=dict)


def ingest_once(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    *,
    on_run: RunCallback | None = None,
    max_ticks: int = 1000,
    refine_silver: bool = True,
    refresh_reports: bool = True,
) -> IngestSummary:
    """Tick the landing sensor until it requests no run, executing each requested run in process.

    The first tick lists every landing day present (not only the open ones), so a single call processes
    everything currently in the landing zone.
    """
    # One pass at a time on a lake: a second `ingest --once` waits here, then finds nothing left to do,
    # instead of running the same batches, silver days and reports again beside the first.
    with lake.ledger.lake_lock("ingest-once"):
        return _ingest_once(defs, instance, lake, on_run, max_ticks, refine_silver, refresh_reports)


def _ingest_once(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    on_run: RunCallback | None,
    max_ticks: int,
    refine_silver: bool,
    refresh_reports: bool,
) -> IngestSummary:
    from medlake_assets.defs.flow import LANDING_SENSOR, sources_in_run

    started = time.perf_counter()
    summary = IngestSummary()
    fail_orphaned_runs(instance)
    retry_parked_batches(defs, instance, lake, summary, on_run)
    repository = defs.get_repository_def()
    sensor_def = repository.get_sensor_def(LANDING_SENSOR)
    days = [day for source in lake.sources for day in landed_days(lake.store, source)]
    cursor = json.dumps({"since": min(days).isoformat()}) if days else None
    refined: set[tuple[str, str]] = set()  # (source, day) whose silver ran in an `ingest_landed` run
    for _ in range(max_ticks):
        result = _tick(sensor_def, defs, instance, cursor)
        apply_partition_requests(instance, result)
        requests = list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []
        cursor = result.cursor if isinstance(result, dg.SensorResult) and result.cursor else cursor
        if not requests:
            break
        for request in requests:
            job = defs.resolve_job_def(request.job_name or sensor_def.job_name)
            _execute(job, request, instance, summary, on_run, label=sensor_def.name)
            refined |= {(source, request.partition_key or "") for source in sources_in_run(request.tags)}
    # Objects in landing folders no source owns are quarantined by their own sensor (it requests no run);
    # after the sources' work, so a failure there (e.g. quarantine unwritable) does not hold that up.
    for name in (sensor.name for sensor in repository.sensor_defs if sensor.name.startswith("landing_")):
        _tick(repository.get_sensor_def(name), defs, instance, None)
    if refine_silver:
        loaded = summary.runs
        refine(defs, instance, lake, summary, on_run, skip=refined)
        if loaded and refresh_reports:
            refresh_on_update_reports(defs, instance, lake, summary, on_run)
    summary.seconds = time.perf_counter() - started
    return summary


def apply_partition_requests(instance: dg.DagsterInstance, result: object) -> None:
    """Add the dynamic partitions a sensor asked for, as the daemon does before submitting its runs."""
    if not isinstance(result, dg.SensorResult):
        return
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def _tick(sensor_def: dg.SensorDefinition, defs: dg.Definitions, instance: dg.DagsterInstance, cursor):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        sensor_name=sensor_def.name,
        resources=defs.resources,
    )
    return sensor_def(context)


def retry_parked_batches(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    summary: IngestSummary,
    on_run: RunCallback | None = None,
) -> None:
    """One more run for each batch the landing sensor stopped retrying (`MAX_ATTEMPTS` failed runs).

    A fault that lasts a little while (S3 away, quarantine unwritable) fails a batch's attempts in quick
    succession; running `ingest --once` after fixing it means "try again", so the batch is not parked.
    """
    from medlake_assets.defs.bronze import (
        IN_FLIGHT,
        MAX_ATTEMPTS,
        batch_run_request,
        batch_tag,
        ensure_landing_days,
        job_name,
    )

    for spec in lake.sources.values():
        for batch in lake.ledger.unfinished_batches(spec.name):
            runs = instance.get_runs(filters=dg.RunsFilter(tags={batch_tag(spec.name): batch.batch_id}))
            if len(runs) < MAX_ATTEMPTS or any(run.status in IN_FLIGHT for run in runs):
                continue  # the sensor requests it (or it is running)
            job = defs.resolve_job_def(job_name(spec))
            ensure_landing_days(instance, [batch.landing_day.isoformat()])
            _execute(job, batch_run_request(spec, batch), instance, summary, on_run, label=job.name)


def refine(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    summary: IngestSummary,
    on_run: RunCallback | None = None,
    *,
    skip: set[tuple[str, str]] = frozenset(),
) -> None:
    """Run each source's silver job for every landing day with bronze batches silver has not taken in,
    except the (source, day) pairs in `skip` (their silver just ran, e.g. held back by the quality gate).

    Silver normally comes in the same run as bronze; this picks up what is left (a held batch, a bronze
    backfill). The daemon does it with eager automation and the catch-up sensor.
    """
    from medlake_assets.defs.bronze import ensure_landing_days
    from medlake_assets.defs.silver import pending_silver, refine_job_name

    for spec in lake.sources.values():
        days = sorted(pending_silver(lake.ledger, spec))
        job = defs.resolve_job_def(refine_job_name(spec))
        for day in days:
            if (spec.name, day.isoformat()) in skip:
                continue
            ensure_landing_days(instance, [day.isoformat()])
            request = dg.RunRequest(partition_key=day.isoformat(), tags={"medlake/source": spec.name})
            _execute(job, request, instance, summary, on_run, label=job.name)


def refresh_on_update_reports(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    summary: IngestSummary,
    on_run: RunCallback | None = None,
) -> None:
    """Rebuild the `on_update` gold reports after new data (the daemon does it with eager automation)."""
    from medlake_assets.defs.gold import load_reports, report_job_name

    for report in load_reports(lake.settings.reports_dir):
        inputs = [f"{namespace}.{table}" for namespace, table in report.reads if namespace != "meta"]
        if report.header.schedule == "on_update" and all(lake.catalog.table_exists(name) for name in inputs):
            job = defs.resolve_job_def(report_job_name(report))
            _execute(
                job,
                dg.RunRequest(tags={"medlake/report": report.name}),
                instance,
                summary,
                on_run,
                label=job.name,
            )


def _execute(
    job: dg.JobDefinition,
    request: dg.RunRequest,
    instance: dg.DagsterInstance,
    summary: IngestSummary,
    on_run: RunCallback | None,
    *,
    label: str,
) -> None:
    """One requested run, in this process, tagged with our pid so a later runner can tell if we died."""
    outcome = job.execute_in_process(
        run_config=quiet(request.run_config),
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        tags={**request.tags, RUNNER_PID_TAG: str(os.getpid())},
        raise_on_error=False,
    )
    summary.runs += 1
    summary.failed_runs += 0 if outcome.success else 1
    summary.sensors[label] = summary.sensors.get(label, 0) + 1
    if on_run:
        on_run(label, request, outcome.success)
