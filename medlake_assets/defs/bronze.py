"""The pure builder: one source's metadata in, its bronze asset, checks and job out."""

import json
from collections import Counter
from datetime import date

import dagster as dg
from pyiceberg.expressions import And, EqualTo

from medlake_assets.defs.policies import STEP_HOOKS, table_pool
from medlake_assets.defs.resources import LakeResource
from medlake_assets.ingest.batch import BatchResult, load_batch
from medlake_assets.ingest.bronze import bronze_table
from medlake_assets.ingest.landing import day_prefix, register_landed
from medlake_assets.lake import Lake
from medlake_assets.spec import SourceSpec

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


# The landing days that have data, added by the landing sensor as archives of a new day arrive (and by
# `medlake reprocess`): the UI then shows the days the lake holds, filled, rather than a calendar since a
# fixed start date with one day in a thousand filled. Keys are ISO days (2026-11-20) as before.
LANDING_DAYS = dg.DynamicPartitionsDefinition(name="landing_days")


def landing_partitions(spec: SourceSpec | None = None) -> dg.DynamicPartitionsDefinition:
    """Every source's bronze and silver assets share the landing days (one run carries several sources)."""
    return LANDING_DAYS


def ensure_landing_days(instance: dg.DagsterInstance, days: list[str]) -> None:
    """Add landing days the instance does not know yet (outside a sensor, e.g. `medlake reprocess`)."""
    known = set(instance.get_dynamic_partitions(LANDING_DAYS.name or ""))
    missing = sorted(set(days) - known)
    if missing:
        instance.add_dynamic_partitions(LANDING_DAYS.name or "", missing)


def bronze_op_name(spec: SourceSpec) -> str:
    return "__".join(bronze_key(spec).path)


def batch_tag(source: str) -> str:
    """The run tag naming the source's batch a run loads (a run may load one batch of several sources)."""
    return f"{BATCH_TAG}/{source}"


def batch_run_config(spec: SourceSpec, batch_id: str) -> dg.RunConfig:
    return dg.RunConfig(ops={bronze_op_name(spec): BronzeLoadConfig(batch_id=batch_id)})


def _rows_of_batch(lake: Lake, spec: SourceSpec, result: BatchResult, day: date) -> int:
    table = bronze_table(lake.catalog, spec)
    scan = table.scan(
        row_filter=And(EqualTo("_landing_day", day.isoformat()), EqualTo("_batch", result.batch_id)),
        selected_fields=("_batch",),
    )
    return scan.to_arrow().num_rows


def _backfill_day(lake: Lake, spec: SourceSpec, day: date, run_id: str) -> list[BatchResult]:
    """Reload every archive of a landing day, in batches, each replacing its archives' rows."""
    register_landed(lake.store, lake.ledger, list(lake.sources.values()), [day_prefix(spec.name, day)])
    # The latest version of each key only: a re-sent file replaces the rows of the earlier one.
    latest = {row.key: row for row in lake.ledger.day_files(spec.name, day)}
    files = sorted(latest.values(), key=lambda row: row.id)
    size = spec.ingest.max_archives_per_run
    results = []
    for number, start in enumerate(range(0, len(files), size)):
        chunk = files[start : start + size]
        batch_id = f"{spec.name}-{day:%Y%m%d}-backfill-{run_id[:8]}-{number:03d}"
        lake.ledger.assign_batch([row.id for row in chunk], batch_id)
        results.append(load_batch(lake, spec, batch_id, lake.ledger.batch_files(batch_id), replace=True))
    return results


def build_source_defs(spec: SourceSpec) -> dg.Definitions:
    """Bronze asset (daily landing-day partitions) with quality checks, and its per-source job (backfills,
    reprocessing, retries of parked batches); new archives arrive through `defs/flow.py`."""
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
        pool=table_pool(f"bronze.{spec.name}"),
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
            results = [load_batch(opened, spec, config.batch_id, files)]
        else:
            results = _backfill_day(opened, spec, day, context.run.run_id)
        archives = sum(r.archives for r in results)
        quarantined = sum(r.archives_quarantined for r in results)
        rate = quarantined / archives if archives else 0.0
        rules: Counter[str] = Counter()
        for result in results:
            rules.update(result.rules)
        ledger_records = sum(r.records for r in results)
        table_records = sum(_rows_of_batch(opened, spec, r, day) for r in results)
        top_rules = dict(rules.most_common(5))
        held = sum(r.archives_held for r in results)
        missing = ", ".join(sorted(set().union(*(r.missing_secrets for r in results))))
        if held:
            context.log.error(
                f"{spec.name}: {held} archives held pending, their password is not configured: set {missing}"
            )
        quarantined_facilities = sorted(
            {
                row.facility or ""
                for result in results
                for row in opened.ledger.batch_files(result.batch_id)
                if row.status == "quarantined"
            }
        )
        context.log.info(
            f"{spec.name} {context.partition_key}: {archives} archives, {ledger_records} records, "
            f"{quarantined} archives quarantined"
        )
        return dg.MaterializeResult(
            metadata={
                "batches": [r.batch_id for r in results],
                "archives": archives,
                "archives_quarantined": quarantined,
                "members": sum(r.members for r in results),
                "records": ledger_records,
                "rejected_records": sum(r.rejected_records for r in results),
                "megabytes": round(sum(r.bytes_read for r in results) / 1e6, 3),
                "seconds": round(sum(r.seconds for r in results), 3),
                "snapshot_id": str(results[-1].snapshot_id) if results else "",
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
        hooks=STEP_HOOKS,
        selection=[key],
        partitions_def=partitions,
        description=f"Load one ledger batch of {spec.name} into bronze, or without one every archive of the "
        "landing day: backfills, reprocessing, retries of parked batches.",
    )

    return dg.Definitions(assets=[bronze], jobs=[job])


def batch_run_request(spec: SourceSpec, batch, run_key: str | None = None) -> dg.RunRequest:
    """The ingest run of one claimed batch: its landing-day partition, its batch id in config and tags."""
    return dg.RunRequest(
        run_key=run_key,
        partition_key=batch.landing_day.isoformat(),
        run_config=batch_run_config(spec, batch.batch_id),
        tags={batch_tag(spec.name): batch.batch_id, SOURCE_TAG: spec.name},
    )
