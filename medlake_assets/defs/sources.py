"""The pure builder: one source's metadata in, its Dagster assets, checks, job and sensor out."""

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import dagster as dg
from pyiceberg.expressions import And, EqualTo

from medlake_assets.defs.resources import LakeResource
from medlake_assets.ingest.batch import MISSING_SECRET, BatchReport, load_batch, release_holds
from medlake_assets.ingest.landing import day_prefix, days_to_list, register_landed
from medlake_assets.lake import Lake
from medlake_assets.spec import SourceSpec
from medlake_assets.tables.bronze import bronze_table

BATCH_TAG = "medlake/batch"
SOURCE_TAG = "medlake/source"
MAX_ATTEMPTS = 3
IN_FLIGHT = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}


class BronzeLoadConfig(dg.Config):
    batch_id: str = ""
    """The ledger batch to load; empty reloads every archive of the partition's landing day (a backfill)."""


def bronze_key(spec: SourceSpec) -> dg.AssetKey:
    return dg.AssetKey(["bronze", spec.name])


def job_name(spec: SourceSpec) -> str:
    return f"ingest_{spec.name}"


def landing_partitions(spec: SourceSpec) -> dg.DailyPartitionsDefinition:
    # end_offset=1 makes today's landing day a partition while it is still filling.
    return dg.DailyPartitionsDefinition(start_date=spec.ingest.start_date, end_offset=1, timezone="UTC")


def batch_run_config(spec: SourceSpec, batch_id: str) -> dg.RunConfig:
    op_name = "__".join(bronze_key(spec).path)
    return dg.RunConfig(ops={op_name: BronzeLoadConfig(batch_id=batch_id)})


def _rows_of_batch(lake: Lake, spec: SourceSpec, report: BatchReport, day: date) -> int:
    table = bronze_table(lake.catalog, spec)
    scan = table.scan(
        row_filter=And(EqualTo("_landing_day", day.isoformat()), EqualTo("_batch", report.batch_id)),
        selected_fields=("_batch",),
    )
    return scan.to_arrow().num_rows


def _backfill_day(lake: Lake, spec: SourceSpec, day: date, run_id: str) -> list[BatchReport]:
    """Reload every archive of a landing day, in batches, each replacing its archives' rows."""
    register_landed(lake.store, lake.ledger, list(lake.sources.values()), [day_prefix(spec.name, day)])
    # The latest version of each key only: a re-sent file replaces the rows of the earlier one.
    latest = {row.key: row for row in lake.ledger.day_files(spec.name, day)}
    files = sorted(latest.values(), key=lambda row: row.id)
    size = spec.ingest.max_archives_per_run
    reports = []
    for number, start in enumerate(range(0, len(files), size)):
        chunk = files[start : start + size]
        batch_id = f"{spec.name}-{day:%Y%m%d}-backfill-{run_id[:8]}-{number:03d}"
        lake.ledger.assign_batch([row.id for row in chunk], batch_id)
        reports.append(load_batch(lake, spec, batch_id, lake.ledger.batch_files(batch_id), replace=True))
    return reports


def build_source_defs(spec: SourceSpec, sensor_interval_seconds: int = 30) -> dg.Definitions:
    """Bronze asset (daily landing-day partitions) with quality checks, its job and its landing sensor."""
    key = bronze_key(spec)
    partitions = landing_partitions(spec)
    threshold = spec.ingest.max_quarantine_rate
    check_specs = [
        # A warning, not a gate: bad archives are already quarantined and the rest of the batch must land.
        dg.AssetCheckSpec(
            "quarantine_rate",
            asset=key,
            description=f"Share of the run's archives quarantined is at most {threshold:.0%}. A warning "
            "names the rules (`top_rules`) and facilities (`quarantined_facilities`); the demo's archives "
            "made bad on purpose (`medlake generate --bad-rate`) show here as archive.bad_password and "
            "archive.corrupt.",
        ),
        # A missing archive password is a configuration fault: the run fails, naming the secret to set.
        dg.AssetCheckSpec(
            "archive_secrets",
            asset=key,
            blocking=True,
            description="Every archive that needs a password found its secret (else it is held pending).",
        ),
        dg.AssetCheckSpec(
            "ledger_matches_table",
            asset=key,
            blocking=True,
            description="Rows the ledger records as loaded equal the rows the batch committed to bronze.",
        ),
    ]

    @dg.asset(
        key=key,
        partitions_def=partitions,
        group_name="bronze",
        kinds={"iceberg", "python"},
        check_specs=check_specs,
        description=f"{spec.description} As received (strings), with lineage columns.",
        owners=[spec.owner] if spec.owner else None,
        tags={f"medlake/{name}": value for name, value in spec.tags.items()},
        metadata={
            "format": spec.format.kind,
            "columns": spec.column_names(),
            "pii_columns": spec.pii_columns(),
        },
        pool=f"iceberg_bronze_{spec.name}",
    )
    def bronze(
        context: dg.AssetExecutionContext, config: BronzeLoadConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        opened = lake.lake()
        day = date.fromisoformat(context.partition_key)
        if config.batch_id:
            files = opened.ledger.batch_files(config.batch_id)
            if not files:
                raise dg.Failure(f"batch {config.batch_id} has no files in the ledger")
            reports = [load_batch(opened, spec, config.batch_id, files)]
        else:
            reports = _backfill_day(opened, spec, day, context.run.run_id)
        archives = sum(r.archives for r in reports)
        quarantined = sum(r.archives_quarantined for r in reports)
        rate = quarantined / archives if archives else 0.0
        rules: Counter[str] = Counter()
        for report in reports:
            rules.update(report.rules)
        ledger_records = sum(r.records for r in reports)
        table_records = sum(_rows_of_batch(opened, spec, r, day) for r in reports)
        top_rules = dict(rules.most_common(5))
        held = sum(r.archives_held for r in reports)
        missing = ", ".join(sorted(set().union(*(r.missing_secrets for r in reports))))
        if held:
            context.log.error(
                f"{spec.name}: {held} archives held pending, their password is not configured: set {missing}"
            )
        quarantined_facilities = sorted(
            {
                row.facility or ""
                for report in reports
                for row in opened.ledger.batch_files(report.batch_id)
                if row.status == "quarantined"
            }
        )
        context.log.info(
            f"{spec.name} {context.partition_key}: {archives} archives, {ledger_records} records, "
            f"{quarantined} archives quarantined"
        )
        return dg.MaterializeResult(
            metadata={
                "batches": [r.batch_id for r in reports],
                "archives": archives,
                "archives_quarantined": quarantined,
                "members": sum(r.members for r in reports),
                "records": ledger_records,
                "rejected_records": sum(r.rejected_records for r in reports),
                "megabytes": round(sum(r.bytes_read for r in reports) / 1e6, 3),
                "seconds": round(sum(r.seconds for r in reports), 3),
                "snapshot_id": str(reports[-1].snapshot_id) if reports else "",
                "rules": json.dumps(top_rules),
                "archives_held": held,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="archive_secrets",
                    passed=not held,
                    metadata={"archives_held": held, "missing_secrets": missing},
                ),
                dg.AssetCheckResult(
                    check_name="quarantine_rate",
                    passed=rate <= threshold,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "archives": archives,
                        "quarantined": quarantined,
                        "rate": rate,
                        "threshold": threshold,
                        "top_rules": json.dumps(top_rules),
                        "quarantined_facilities": json.dumps(quarantined_facilities),
                    },
                ),
                dg.AssetCheckResult(
                    check_name="ledger_matches_table",
                    passed=ledger_records == table_records,
                    metadata={"ledger_records": ledger_records, "table_records": table_records},
                ),
            ],
        )

    job = dg.define_asset_job(
        name=job_name(spec),
        selection=[key],
        partitions_def=partitions,
        executor_def=dg.in_process_executor,
        description=f"Load landed {spec.name} archives into bronze, one ledger batch per run.",
    )

    @dg.sensor(
        name=f"landing_{spec.name}",
        job=job,
        minimum_interval_seconds=sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Registers new {spec.name} archives in the open landing days; one run per batch.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
        opened = lake.lake()
        cursor = json.loads(context.cursor) if context.cursor else {}
        since = date.fromisoformat(cursor["since"]) if cursor.get("since") else None
        today = datetime.now(UTC).date()
        days = days_to_list(since, today, spec.ingest.open_days)
        scan = register_landed(
            opened.store,
            opened.ledger,
            list(opened.sources.values()),
            [day_prefix(spec.name, d) for d in days],
            today=today,
        )
        release_holds(opened, spec, today)  # secret set, or day come, since: they load in this tick's batches
        opened.ledger.claim_batches(
            spec.name, max_archives=spec.ingest.max_archives_per_run, max_bytes=spec.ingest.max_bytes_per_run
        )
        requests = batch_run_requests(context.instance, spec, opened.ledger.unfinished_batches(spec.name))
        if scan.registered or scan.quarantined or requests:
            context.log.info(
                f"{spec.name}: {scan.registered} new archives, {scan.quarantined} quarantined at landing, "
                f"{len(requests)} runs requested"
            )
        if held := opened.ledger.held(spec.name, MISSING_SECRET):
            secrets = sorted({row.reason or "" for row in held})
            context.log.warning(f"{spec.name}: {len(held)} archives held for a missing secret: {secrets}")
        next_since = today - timedelta(days=spec.ingest.open_days)
        return dg.SensorResult(run_requests=requests, cursor=json.dumps({"since": next_since.isoformat()}))

    return dg.Definitions(assets=[bronze], jobs=[job], sensors=[landing_sensor])


def batch_run_requests(
    instance: dg.DagsterInstance, spec: SourceSpec, batches: Sequence
) -> list[dg.RunRequest]:
    """One run per unfinished batch unless one is in flight; a failed batch retries under a new run key."""
    requests = []
    for batch in batches:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={BATCH_TAG: batch.batch_id}))
        if any(run.status in IN_FLIGHT for run in runs) or len(runs) >= MAX_ATTEMPTS:
            continue
        requests.append(
            batch_run_request(
                spec, batch, batch.batch_id if not runs else f"{batch.batch_id}#retry{len(runs)}"
            )
        )
    return requests


def batch_run_request(spec: SourceSpec, batch, run_key: str | None = None) -> dg.RunRequest:
    """The ingest run of one claimed batch: its landing-day partition, its batch id in config and tags."""
    return dg.RunRequest(
        run_key=run_key,
        partition_key=batch.landing_day.isoformat(),
        run_config=batch_run_config(spec, batch.batch_id),
        tags={BATCH_TAG: batch.batch_id, SOURCE_TAG: spec.name},
    )
