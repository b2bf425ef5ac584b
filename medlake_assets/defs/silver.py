"""Silver assets: one per source (plus `encounters` from ADT), eager after bronze, gated by quality checks."""

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.sources import BATCH_TAG, IN_FLIGHT, SOURCE_TAG, bronze_key, landing_partitions
from medlake_assets.quality.gate import freshness, freshness_sla
from medlake_assets.silver.encounters_load import ENCOUNTERS
from medlake_assets.silver.load import SilverReport, consumer, load_silver
from medlake_assets.spec import SourceSpec
from medlake_assets.tables.ledger import Ledger

ENCOUNTERS_SOURCE = "adt_events"


class SilverLoadConfig(dg.Config):
    full: bool = False
    """Re-take every bronze batch of the landing day (a backfill), not only the new ones."""


def silver_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["silver", name])


def refine_job_name(spec: SourceSpec) -> str:
    return f"refine_{spec.name}"


def pending_silver(
    ledger: Ledger, spec: SourceSpec, loaded_before: datetime | None = None
) -> dict[date, set[str]]:
    """Per landing day, the bronze batches of `spec` that its silver table (or, for ADT, encounters) has not
    taken in yet: the work a refine run of that day does."""
    consumers = [consumer(spec.name)] + ([ENCOUNTERS] if spec.name == ENCOUNTERS_SOURCE else [])
    pending: dict[date, set[str]] = {}
    for name in consumers:
        for day, batches in ledger.pending_batches(name, spec.name, loaded_before).items():
            pending.setdefault(day, set()).update(batches)
    return pending


def _freshness(lake, spec: SourceSpec) -> dg.AssetCheckResult | None:
    """Minutes since the source last landed data, against its declared SLA."""
    sla = freshness_sla(spec)
    if sla is None:
        return None
    limit, severity = sla
    passed, lag = freshness(lake.ledger.last_loaded_at(spec.name), datetime.now(UTC), limit)
    return dg.AssetCheckResult(
        check_name="freshness",
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN if severity == "warn" else dg.AssetCheckSeverity.ERROR,
        metadata={"lag_minutes": round(lag, 1) if lag is not None else -1, "max_lag_minutes": limit},
    )


def _gate(report: SilverReport) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="quality_gate",
        passed=report.published,
        metadata={
            "rows": report.rows_in,
            "rejected_rows": report.rejected,
            "error_rate": round(report.error_rate, 4),
            "threshold": report.threshold,
            "rejected_by_rule": json.dumps(dict(report.rules.most_common(10))),
            "rejected_by_facility": json.dumps(dict(report.rejected_by_facility.most_common(10))),
            "warnings_by_rule": json.dumps(dict(report.warnings.most_common(10))),
        },
    )


def build_silver_defs(spec: SourceSpec) -> dg.Definitions:
    key = silver_key(spec.name)
    check_specs = [
        dg.AssetCheckSpec(
            "quality_gate",
            asset=key,
            blocking=True,
            description=f"At most {spec.quality.max_error_rate:.0%} of a batch's rows fail an error rule; "
            "above that nothing is published and downstream assets wait.",
        )
    ]
    if any(check.rule == "freshness" for check in spec.checks):
        check_specs.append(
            dg.AssetCheckSpec("freshness", asset=key, description="Time since the source last landed data.")
        )

    @dg.asset(
        key=key,
        deps=[bronze_key(spec)],
        partitions_def=landing_partitions(spec),
        group_name="silver",
        kinds={"iceberg", "polars"},
        check_specs=check_specs,
        automation_condition=dg.AutomationCondition.eager(),
        description=f"{spec.description} Typed, cleaned, {spec.write.mode}.",
        owners=[spec.owner] if spec.owner else None,
        pool=f"iceberg_silver_{spec.name}",
    )
    def silver(
        context: dg.AssetExecutionContext, config: SilverLoadConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        opened = lake.lake()
        report = load_silver(opened, spec, date.fromisoformat(context.partition_key), full=config.full)
        checks = [_gate(report)]
        if freshness := _freshness(opened, spec):
            checks.append(freshness)
        return dg.MaterializeResult(
            metadata={
                "batches": len(report.batches),
                "rows_in": report.rows_in,
                "rows_written": report.rows_written,
                "rejected_rows": report.rejected,
                "published": report.published,
                "seconds": round(report.seconds, 3),
                "snapshot_id": str(report.snapshot_id or ""),
            },
            check_results=checks,
        )

    assets = [silver]
    if spec.name == ENCOUNTERS_SOURCE:
        assets.append(build_encounters_asset(spec))
    job = dg.define_asset_job(
        name=refine_job_name(spec),
        selection=[asset.key for asset in assets],
        partitions_def=landing_partitions(spec),
        executor_def=dg.in_process_executor,
        description=f"Bring the silver tables of {spec.name} up to date for a landing day.",
    )
    return dg.Definitions(assets=assets, jobs=[job])


def build_encounters_asset(spec: SourceSpec) -> dg.AssetsDefinition:
    from medlake_assets.silver.encounters_load import load_encounters

    @dg.asset(
        key=silver_key("encounters"),
        deps=[silver_key(spec.name)],
        partitions_def=landing_partitions(spec),
        group_name="silver",
        kinds={"iceberg", "polars"},
        automation_condition=dg.AutomationCondition.eager(),
        description="One row per visit (facility, visit_number): status, location, admit and discharge times,"
        " "
        "derived from every ADT event of the visit whatever their arrival order.",
        pool="iceberg_silver_encounters",
    )
    def encounters(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        report = load_encounters(lake.lake(), spec, date.fromisoformat(context.partition_key))
        return dg.MaterializeResult(metadata=report)

    return encounters


def silver_automation_sensor(interval_seconds: int = 30) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "silver_automation",
        target=dg.AssetSelection.groups("silver"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_seconds,
    )


# A batch loaded this long ago and still not in silver was missed by eager automation (e.g. a silver run of
# the day was already running when its bronze run ended, and eager counted that run as handling it).
CATCH_UP_GRACE = timedelta(minutes=2)


def silver_catch_up_sensor(specs: Iterable[SourceSpec], interval_seconds: int = 30) -> dg.SensorDefinition:
    """Refines every landing day whose bronze batches were loaded a while ago and are still not in silver.

    The run key is the set of such batches, so each set gets one run: a day whose batches silver holds
    back (quality gate) is not retried every tick, only when new batches arrive or an operator reruns it.
    """
    specs = list(specs)

    @dg.sensor(
        name="silver_catch_up",
        target=dg.AssetSelection.groups("silver"),
        minimum_interval_seconds=max(interval_seconds, 60),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Refines landing days whose loaded bronze batches silver missed.",
    )
    def catch_up(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
        ledger = lake.lake().ledger
        loaded_before = datetime.now(UTC) - CATCH_UP_GRACE
        requests = []
        # A source whose landing run is still going gets its silver in that run.
        running = context.instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_FLIGHT)))
        busy = {
            key.removeprefix(f"{BATCH_TAG}/")
            for run in running
            for key in run.tags
            if key.startswith(f"{BATCH_TAG}/")
        }
        for spec in (spec for spec in specs if spec.name not in busy):
            keys = [silver_key(spec.name)] + (
                [silver_key("encounters")] if spec.name == ENCOUNTERS_SOURCE else []
            )
            for day, batches in sorted(pending_silver(ledger, spec, loaded_before).items()):
                digest = hashlib.sha256("\n".join(sorted(batches)).encode()).hexdigest()[:16]
                requests.append(
                    dg.RunRequest(
                        run_key=f"{spec.name}:{day.isoformat()}:{digest}",
                        asset_selection=keys,
                        partition_key=day.isoformat(),
                        tags={SOURCE_TAG: spec.name},
                    )
                )
        return dg.SensorResult(run_requests=requests)

    return catch_up
