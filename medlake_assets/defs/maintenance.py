"""Table maintenance as Dagster assets (group `maintenance`, nightly), and the replay of a landing day.

One asset per Iceberg table the metadata declares, in the table writers' pool, so maintenance of a table
waits for its writers instead of conflicting with them. The work is `tables.maintenance.maintain_table`;
the materialization carries counts only.
"""

import os
import time
from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg
from pyiceberg.expressions import EqualTo

from medlake_assets.defs.bronze import SOURCE_TAG, batch_run_config, ensure_landing_days, job_name
from medlake_assets.defs.policies import SCHEDULE_STATUS, STEP_HOOKS, table_pool
from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.runner import RUNNER_PID_TAG, quiet
from medlake_assets.defs.silver import SilverLoadConfig, refine_job_name, silver_key
from medlake_assets.gold.spec import ReportSpec
from medlake_assets.lake import Lake
from medlake_assets.lake.maintenance import (
    MIB,
    CompactionPolicy,
    MaintenanceResult,
    maintain_table,
    retention_for,
)
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.models import RetentionSpec

MAINTENANCE_JOB = "maintain_tables"
MAINTENANCE_CRON = "0 3 * * *"  # after the nightly reports (02:00 UTC)
REPROCESS_TAG = "medlake/reprocess"


class MaintenanceConfig(dg.Config):
    dry_run: bool = False
    """Plan and count only: nothing is rewritten, expired or deleted."""
    small_file_mb: int = 32
    min_small_files: int = 5
    orphan_age_hours: float = 72.0
    """Unreferenced files younger than this may be a write in flight and are kept."""


def maintained_tables(sources: dict[str, SourceSpec], reports: list[ReportSpec]) -> list[str]:
    """Every Iceberg table the metadata makes: bronze, silver and quarantine per source, encounters, gold."""
    names = [f"{namespace}.{name}" for name in sources for namespace in ("bronze", "silver", "quarantine")]
    names += [f"silver.{name}" for spec in sources.values() for name in spec.derived]
    names.extend(f"gold.{report.table}" for report in reports)
    return sorted(set(names))


def maintenance_key(table_name: str) -> dg.AssetKey:
    return dg.AssetKey(["maintenance", *table_name.split(".", 1)])


def maintenance_metadata(report: MaintenanceResult) -> dict[str, int | float]:
    """Counts for the materialization and the CLI (file names and record values never)."""
    return {
        "files_before": report.compaction.files_before,
        "files_after": report.compaction.files_after,
        "partitions_compacted": report.compaction.partitions_compacted,
        "files_rewritten": report.compaction.files_rewritten,
        "compaction_conflicts": report.compaction.conflicts,
        "snapshots_before": report.expiry.snapshots_before,
        "snapshots_expired": len(report.expiry.expired),
        "orphans_removed": len(report.orphans.orphans),
        "orphan_megabytes": round(report.orphans.orphan_bytes / 1e6, 3),
        "unreferenced_young_files_kept": report.orphans.kept_young,
        "seconds": round(report.seconds, 3),
    }


def _maintenance_asset(table_name: str, retention: RetentionSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=maintenance_key(table_name),
        group_name="maintenance",
        kinds={"iceberg"},
        pool=table_pool(table_name),
        description=f"Compaction of small files, snapshot expiry (time travel kept for "
        f"{retention.snapshot_days} days, at least {retention.min_snapshots} snapshots) and orphan-file "
        f"cleanup of {table_name}.",
    )
    def maintain(
        context: dg.AssetExecutionContext, config: MaintenanceConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        opened = lake.lake()
        if not opened.catalog.table_exists(table_name):
            return dg.MaterializeResult(metadata={"table_exists": False, "dry_run": config.dry_run})
        report = maintain_table(
            opened.catalog.load_table(table_name),
            retention=retention,
            policy=CompactionPolicy(
                small_file_bytes=config.small_file_mb * MIB, min_small_files=config.min_small_files
            ),
            min_orphan_age=timedelta(hours=config.orphan_age_hours),
            s3_endpoint_url=opened.settings.s3_endpoint_url,
            dry_run=config.dry_run,
        )
        counts = maintenance_metadata(report)
        context.log.info(f"{table_name}: {counts}")
        return dg.MaterializeResult(metadata={"table_exists": True, "dry_run": config.dry_run, **counts})

    return maintain


def build_maintenance_defs(sources: dict[str, SourceSpec], reports: list[ReportSpec]) -> dg.Definitions:
    """A maintenance asset per table, the `maintain_tables` job over all of them and its nightly schedule."""
    assets = [
        _maintenance_asset(name, retention_for(name, sources)) for name in maintained_tables(sources, reports)
    ]
    job = dg.define_asset_job(
        name=MAINTENANCE_JOB,
        hooks=STEP_HOOKS,
        selection=dg.AssetSelection.groups("maintenance"),
        description="Compact, expire snapshots and remove orphan files of every medlake table.",
    )
    schedule = dg.ScheduleDefinition(
        name="nightly_maintenance",
        cron_schedule=MAINTENANCE_CRON,
        job=job,
        execution_timezone="UTC",
        default_status=SCHEDULE_STATUS,
    )
    return dg.Definitions(assets=assets, jobs=[job], schedules=[schedule])


@dataclass(frozen=True)
class ReprocessResult:
    source: str
    day: date
    success: bool
    run_ids: list[str]
    bronze_rows_before: int
    bronze_rows_after: int
    silver_rows_before: int
    silver_rows_after: int
    seconds: float


def day_rows(lake: Lake, table_name: str, day: date) -> int:
    """Rows of one landing day in a table (0 if the table does not exist yet)."""
    if not lake.catalog.table_exists(table_name):
        return 0
    scan = lake.catalog.load_table(table_name).scan(
        row_filter=EqualTo("_landing_day", day.isoformat()), selected_fields=("_landing_day",)
    )
    return scan.to_arrow().num_rows


def reprocess_day(
    defs: dg.Definitions, instance: dg.DagsterInstance, lake: Lake, spec: SourceSpec, day: date
) -> ReprocessResult:
    """Replay a landing day's archives through the current metadata, with the source's own jobs.

    The ingest job without a batch id reloads every archive of the day, each batch replacing exactly its
    archives' rows in bronze; then the refine job with `full: true` retakes all of the day's batches into
    silver (and, for ADT, encounters). Raw archives stay in landing forever, so any day can be replayed.
    """
    started = time.perf_counter()
    bronze, silver = f"bronze.{spec.name}", f"silver.{spec.name}"
    before = day_rows(lake, bronze, day), day_rows(lake, silver, day)
    tags = {REPROCESS_TAG: day.isoformat(), SOURCE_TAG: spec.name, RUNNER_PID_TAG: str(os.getpid())}
    silver_op = "__".join(silver_key(spec.name).path)
    runs = [
        (job_name(spec), batch_run_config(spec, "")),
        (refine_job_name(spec), dg.RunConfig(ops={silver_op: SilverLoadConfig(full=True)})),
    ]
    run_ids, success = [], True
    ensure_landing_days(instance, [day.isoformat()])
    for name, run_config in runs:
        result = defs.resolve_job_def(name).execute_in_process(
            run_config=quiet(run_config),
            instance=instance,
            partition_key=day.isoformat(),
            tags=tags,
            raise_on_error=False,
        )
        run_ids.append(result.run_id)
        if not result.success:
            success = False
            break
    return ReprocessResult(
        source=spec.name,
        day=day,
        success=success,
        run_ids=run_ids,
        bronze_rows_before=before[0],
        bronze_rows_after=day_rows(lake, bronze, day),
        silver_rows_before=before[1],
        silver_rows_after=day_rows(lake, silver, day),
        seconds=time.perf_counter() - started,
    )
