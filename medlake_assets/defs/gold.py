"""Gold assets: one per report in `metadata/reports/`, lineage from its SQL, a schedule from its header."""

from __future__ import annotations

import dagster as dg

from medlake_assets.defs.policies import REFRESH_TAG, SCHEDULE_STATUS, SENSOR_STATUS, STEP_HOOKS, table_pool
from medlake_assets.defs.resources import LakeResource
from medlake_assets.gold.run import CheckOutcome, PartitionWindow, run_report
from medlake_assets.gold.spec import PartitionSpec, ReportSpec, check_name, load_reports

__all__ = ["build_report_defs", "load_reports", "report_automation_sensor", "report_key", "report_run_tags"]

# Dagster's tags for a run over one partition or a range of partitions (what a single-run backfill sets).
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# The ledger (meta) and quarantine tables are not assets; bronze, silver and gold tables are.
ASSET_NAMESPACES = ("bronze", "silver", "gold")


def report_key(report: ReportSpec) -> dg.AssetKey:
    return dg.AssetKey(["gold", report.table])


def report_job_name(report: ReportSpec) -> str:
    return f"report_{report.name}"


def report_deps(report: ReportSpec) -> list[dg.AssetDep]:
    """The tables the report's SQL reads, e.g. `silver.encounters` -> silver/encounters. A partitioned
    report's day may read rows from any day of its parents (late data), hence all their partitions."""
    mapping = dg.AllPartitionMapping() if report.header.partitions else None
    return [
        dg.AssetDep(dg.AssetKey([namespace, table]), partition_mapping=mapping)
        for namespace, table in report.reads
        if namespace in ASSET_NAMESPACES
    ]


def report_partitions(spec: PartitionSpec) -> dg.TimeWindowPartitionsDefinition:
    """UTC days or weeks (Monday to Monday) since `start`; the current, unfinished one included (near
    real time); the schedule runs the one that just ended."""
    if spec.cadence == "daily":
        return dg.DailyPartitionsDefinition(start_date=spec.start.isoformat(), end_offset=1, timezone="UTC")
    return dg.WeeklyPartitionsDefinition(
        start_date=spec.start.isoformat(), end_offset=1, timezone="UTC", day_offset=1
    )


def report_run_tags(report: ReportSpec, partition: str | None = None) -> dict[str, str]:
    """Run tags choosing what a report run rebuilds: a partition key or a `first...last` range of a
    partitioned report, by default its latest (current) partition; nothing for an unpartitioned one."""
    if report.header.partitions is None:
        if partition:
            raise ValueError(
                f"report {report.name} is not partitioned: it is rebuilt whole, drop --partition"
            )
        return {}
    partitions = report_partitions(report.header.partitions)
    first, _, last = (partition or partitions.get_last_partition_key()).partition("...")
    for key in (first, last or first):
        if not partitions.has_partition_key(key):
            raise ValueError(f"report {report.name}: no {report.header.partitions.cadence} partition {key!r}")
    if not last or last == first:
        return {PARTITION_TAG: first}
    if partitions.start_time_for_partition_key(last) < partitions.start_time_for_partition_key(first):
        raise ValueError(f"report {report.name}: partition range {first}...{last} ends before it starts")
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


def partition_window(context: dg.AssetExecutionContext) -> PartitionWindow:
    """The run's partition, or its range of partitions (a single-run backfill), as one window."""
    keys = context.partition_key_range
    label = keys.start if keys.start == keys.end else f"{keys.start}...{keys.end}"
    window = context.partition_time_window
    return PartitionWindow(start=window.start, end=window.end, label=label)


def _check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.WARN if outcome.severity == "warn" else dg.AssetCheckSeverity.ERROR,
        metadata={"failing_rows": outcome.failing_rows},
    )


def build_report_defs(report: ReportSpec) -> dg.Definitions:
    """The gold asset, its checks, and for a scheduled report its job and schedule."""
    key = report_key(report)
    on_update = report.header.schedule == "on_update"
    partitions = report_partitions(report.header.partitions) if report.header.partitions else None

    @dg.asset(
        key=key,
        deps=report_deps(report),
        group_name="gold",
        kinds={"iceberg", "duckdb", "sql"},
        check_specs=[
            dg.AssetCheckSpec(check_name(check), asset=key, description=check.rule)
            for check in report.header.checks
        ],
        tags={REFRESH_TAG: report.header.schedule},  # on_update: kept up to date (policies.ON_UPDATE)
        description=report.header.description,
        owners=[report.header.owner] if report.header.owner else None,
        metadata={
            "sql": dg.MetadataValue.md(f"```sql\n{report.sql}\n```"),
            "schedule": report.header.schedule,
        },
        pool=table_pool(f"gold.{report.table}"),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run() if partitions else None,
    )
    def gold(context, lake: LakeResource) -> dg.MaterializeResult:
        run = run_report(lake.lake(), report, window=partition_window(context) if partitions else None)
        return dg.MaterializeResult(
            metadata={
                "rows": run.rows,
                "as_of": run.as_of.isoformat(),
                "seconds": round(run.seconds, 3),
                "snapshot_id": str(run.snapshot_id or ""),
                "preview": dg.MetadataValue.md(run.rendered.preview),
                "html": dg.MetadataValue.url(run.rendered.html),
                **({"chart": dg.MetadataValue.url(run.rendered.chart)} if run.rendered.chart else {}),
            },
            check_results=[_check_result(outcome) for outcome in run.checks],
        )

    # Every report has a job (for `medlake report` and `ingest --once`); only scheduled ones a schedule.
    job = dg.define_asset_job(
        name=report_job_name(report),
        hooks=STEP_HOOKS,
        selection=[key],
        description=f"Rebuild {report.identifier} ({report.header.schedule}).",
    )
    if on_update:
        return dg.Definitions(assets=[gold], jobs=[job])
    schedule_name = f"{report_job_name(report)}_{report.header.schedule}"
    if partitions is None:
        schedule = dg.ScheduleDefinition(
            name=schedule_name,
            cron_schedule=report.cron,
            job=job,
            execution_timezone="UTC",
            default_status=SCHEDULE_STATUS,
        )
    else:
        schedule = finished_partition_schedule(schedule_name, report.cron, job, partitions)
    return dg.Definitions(assets=[gold], jobs=[job], schedules=[schedule])


def finished_partition_schedule(
    name: str, cron: str, job: dg.UnresolvedAssetJobDefinition, partitions: dg.TimeWindowPartitionsDefinition
) -> dg.ScheduleDefinition:
    """At each tick, the partition that ended last (the day or week before the tick), keyed by partition."""

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        job=job,
        execution_timezone="UTC",
        default_status=SCHEDULE_STATUS,
    )
    def run_finished_partition(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        current = partitions.get_partition_key_for_timestamp(context.scheduled_execution_time.timestamp())
        finished = partitions.get_prev_partition_window(partitions.start_time_for_partition_key(current))
        key = partitions.get_partition_key_for_timestamp(finished.start.timestamp())
        return dg.RunRequest(run_key=key, partition_key=key)

    return run_finished_partition


def report_automation_sensor(interval_seconds: int = 30) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the eager condition of `on_update` reports (the silver sensor covers only group silver)."""
    return dg.AutomationConditionSensorDefinition(
        "gold_automation",
        target=dg.AssetSelection.groups("gold"),
        default_status=SENSOR_STATUS,
        minimum_interval_seconds=interval_seconds,
    )
