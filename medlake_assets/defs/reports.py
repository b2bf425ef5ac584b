"""Gold assets: one per report in `metadata/reports/`, lineage from its SQL, a schedule from its header."""

from __future__ import annotations

import dagster as dg

from medlake_assets.defs.resources import LakeResource
from medlake_assets.reports.run import CheckOutcome, run_report
from medlake_assets.reports.spec import ReportSpec, check_name, load_reports

__all__ = ["build_report_defs", "load_reports", "report_automation_sensor", "report_key"]

# The ledger (meta) and quarantine tables are not assets; bronze, silver and gold tables are.
ASSET_NAMESPACES = ("bronze", "silver", "gold")


# Eager, rebuilt when a table it reads changes and not while a blocking check upstream fails, minus eager's
# "no dependency missing": a daily-partitioned silver parent always has missing days before its data starts.
ON_UPDATE = (
    dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
)


def report_key(report: ReportSpec) -> dg.AssetKey:
    return dg.AssetKey(["gold", report.table])


def report_job_name(report: ReportSpec) -> str:
    return f"report_{report.name}"


def report_deps(report: ReportSpec) -> list[dg.AssetKey]:
    """The asset keys of the tables the report's SQL reads, e.g. `silver.encounters` -> silver/encounters."""
    return [
        dg.AssetKey([namespace, table]) for namespace, table in report.reads if namespace in ASSET_NAMESPACES
    ]


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

    @dg.asset(
        key=key,
        deps=report_deps(report),
        group_name="gold",
        kinds={"iceberg", "duckdb", "sql"},
        check_specs=[
            dg.AssetCheckSpec(check_name(check), asset=key, description=check.rule)
            for check in report.header.checks
        ],
        automation_condition=ON_UPDATE if on_update else None,
        description=report.header.description,
        owners=[report.header.owner] if report.header.owner else None,
        metadata={
            "sql": dg.MetadataValue.md(f"```sql\n{report.sql}\n```"),
            "schedule": report.header.schedule,
        },
        pool=f"iceberg_gold_{report.table}",
    )
    def gold(lake: LakeResource) -> dg.MaterializeResult:
        run = run_report(lake.lake(), report)
        return dg.MaterializeResult(
            metadata={
                "rows": run.rows,
                "as_of": run.as_of.isoformat(),
                "seconds": round(run.seconds, 3),
                "snapshot_id": str(run.snapshot_id or ""),
                "preview": dg.MetadataValue.md(run.rendered.preview),
                "html": dg.MetadataValue.path(str(run.rendered.html)),
                **({"chart": dg.MetadataValue.path(str(run.rendered.chart))} if run.rendered.chart else {}),
            },
            check_results=[_check_result(outcome) for outcome in run.checks],
        )

    # Every report has a job (for `medlake report` and `ingest --once`); only scheduled ones a schedule.
    job = dg.define_asset_job(
        name=report_job_name(report),
        selection=[key],
        executor_def=dg.in_process_executor,
        description=f"Rebuild {report.identifier} ({report.header.schedule}).",
    )
    if on_update:
        return dg.Definitions(assets=[gold], jobs=[job])
    schedule = dg.ScheduleDefinition(
        name=f"{report_job_name(report)}_{report.header.schedule}",
        cron_schedule=report.cron,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return dg.Definitions(assets=[gold], jobs=[job], schedules=[schedule])


def report_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the eager condition of `on_update` reports (the silver sensor covers only group silver)."""
    return dg.AutomationConditionSensorDefinition(
        "gold_automation",
        target=dg.AssetSelection.groups("gold"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
