"""`medlake ingest`: evaluate the same sensors and automation conditions Dagster's daemon does and execute
their runs in process."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg

from medlake_assets.ingest.landing import landed_days
from medlake_assets.lake import Lake

RunCallback = Callable[[str, dg.RunRequest, bool], None]
RUNNER_PID_TAG = "medlake/runner_pid"
RUN_KEY_TAG = "dagster/run_key"  # where the daemon records a sensor run's key
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
    from medlake_assets.defs.flow import LANDING_SENSOR, release_parked_batches

    started = time.perf_counter()
    summary = IngestSummary()
    fail_orphaned_runs(instance)
    groups = ("silver", "gold") if refresh_reports else ("silver",)
    if refine_silver:
        # Before the loads as well as after: the first evaluation on an instance only starts the clock
        # (eager conditions request nothing then), and what changed since the last call is caught up.
        run_automation(defs, instance, summary, on_run, groups=groups)
    release_parked_batches(instance, lake.ledger, lake.sources.values())  # "try again", by the sensor
    repository = defs.get_repository_def()
    sensor_def = repository.get_sensor_def(LANDING_SENSOR)
    days = [day for source in lake.sources for day in landed_days(lake.store, source)]
    cursor = json.dumps({"since": min(days).isoformat()}) if days else None
    for _ in range(max_ticks):
        result = tick_sensor(sensor_def, defs, instance, cursor)
        apply_partition_requests(instance, result)
        requests = list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []
        cursor = result.cursor if isinstance(result, dg.SensorResult) and result.cursor else cursor
        if not requests:
            break
        for request in requests:
            job = defs.resolve_job_def(request.job_name or sensor_def.job_name)
            execute_request(job, request, instance, summary, on_run, label=sensor_def.name)
    # Objects in landing folders no source owns are quarantined by their own sensor (it requests no run);
    # after the sources' work, so a failure there (e.g. quarantine unwritable) does not hold that up.
    for name in (sensor.name for sensor in repository.sensor_defs if sensor.name.startswith("landing_")):
        tick_sensor(repository.get_sensor_def(name), defs, instance, None)
    if refine_silver:
        bring_up_to_date(defs, instance, lake, summary, on_run, groups=groups)
    summary.seconds = time.perf_counter() - started
    return summary


def apply_partition_requests(instance: dg.DagsterInstance, result: object) -> None:
    """Add the dynamic partitions a sensor asked for, as the daemon does before submitting its runs."""
    if not isinstance(result, dg.SensorResult):
        return
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def tick_sensor(sensor_def: dg.SensorDefinition, defs: dg.Definitions, instance: dg.DagsterInstance, cursor):
    """One evaluation of a sensor, as the daemon's tick would make it."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        sensor_name=sensor_def.name,
        resources=defs.resources,
    )
    return sensor_def(context)


AUTOMATION_CURSOR = "medlake/ingest_once/automation_cursor"


def run_automation(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    summary: IngestSummary,
    on_run: RunCallback | None = None,
    *,
    groups: tuple[str, ...] = ("silver", "gold"),
    max_rounds: int = 20,
) -> None:
    """Evaluate the automation conditions of the assets in `groups` as Dagster's automation sensors do
    (policies.py: eager silver, `on_update` reports) and execute each requested run, until nothing is
    requested. The evaluation's cursor is kept in the instance, so "updated since the last evaluation"
    spans `ingest --once` calls just as it spans the daemon's ticks.

    Silver normally comes in the same run as bronze, so this requests silver only where bronze changed
    without it (a bronze backfill, a retried batch, a run that failed after bronze), and the reports that
    read a changed table.
    """
    storage = instance.daemon_cursor_storage
    stored = storage.get_cursor_values({AUTOMATION_CURSOR}).get(AUTOMATION_CURSOR)
    cursor = dg.deserialize_value(stored) if stored else None
    selection = dg.AssetSelection.groups(*groups)
    jobs = _jobs_by_asset(defs)
    for _ in range(max_rounds):
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=cursor
        )
        cursor = result.cursor
        storage.set_cursor_values({AUTOMATION_CURSOR: dg.serialize_value(cursor)})
        runs: dict[tuple[str, str | None], list[dg.AssetKey]] = {}
        for key in sorted(selection.resolve(defs.resolve_asset_graph())):
            for partition in sorted(result.get_requested_partitions(key), key=str):
                runs.setdefault((jobs[key], partition), []).append(key)
        if not runs:
            return
        for (job_name, partition), keys in runs.items():
            request = dg.RunRequest(partition_key=partition, asset_selection=keys)
            execute_request(
                defs.resolve_job_def(job_name), request, instance, summary, on_run, label=job_name
            )


def bring_up_to_date(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    summary: IngestSummary,
    on_run: RunCallback | None = None,
    *,
    groups: tuple[str, ...] = ("silver", "gold"),
) -> None:
    """Silver's catch-up, then the automation conditions of `groups` (which see what catch-up refined)."""
    catch_up(defs, instance, lake, summary, on_run)
    run_automation(defs, instance, summary, on_run, groups=groups)


def catch_up(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    summary: IngestSummary,
    on_run: RunCallback | None = None,
) -> None:
    """What the `silver_catch_up` sensor requests, without its grace (nothing else runs on this lake now),
    each run key run once as the daemon does: bronze loaded before this instance's first automation
    evaluation, which eager conditions never request.
    """
    from medlake_assets.defs.bronze import SOURCE_TAG, ensure_landing_days
    from medlake_assets.defs.silver import catch_up_requests, refine_job_name

    for request in catch_up_requests(instance, lake, lake.sources.values(), datetime.now(UTC)):
        if instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key}), limit=1):
            continue  # that set of batches had its run (e.g. the gate held it back): not every call again
        ensure_landing_days(instance, [request.partition_key])
        job = defs.resolve_job_def(refine_job_name(lake.sources[request.tags[SOURCE_TAG]]))
        execute_request(job, request, instance, summary, on_run, label=job.name)


def _jobs_by_asset(defs: dg.Definitions) -> dict[dg.AssetKey, str]:
    """The job that runs each asset on its own: a source's refine job for its silver tables, a report's
    job for its gold table (not `ingest_landed`, which loads bronze first)."""
    from medlake_assets.defs.flow import FLOW_JOB

    jobs: dict[dg.AssetKey, str] = {}
    for job in defs.get_repository_def().get_all_jobs():
        if job.name != FLOW_JOB and not job.name.startswith("__"):
            for key in job.asset_layer.selected_asset_keys:
                jobs.setdefault(key, job.name)
    return jobs


def execute_request(
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
        tags={
            **request.tags,
            **({RUN_KEY_TAG: request.run_key} if request.run_key else {}),
            RUNNER_PID_TAG: str(os.getpid()),
        },
        raise_on_error=False,
    )
    summary.runs += 1
    summary.failed_runs += 0 if outcome.success else 1
    summary.sensors[label] = summary.sensors.get(label, 0) + 1
    if on_run:
        on_run(label, request, outcome.success)
