"""Silver assets: one per source (plus `encounters` from ADT), eager after bronze, gated by quality checks."""

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl

from medlake_assets.defs.bronze import (
    BATCH_TAG,
    IN_FLIGHT,
    SOURCE_TAG,
    bronze_key,
    ensure_landing_days,
    landing_partitions,
)
from medlake_assets.defs.policies import SCHEDULE_STATUS, SENSOR_STATUS, STEP_HOOKS, table_pool
from medlake_assets.defs.resources import LakeResource
from medlake_assets.lake import Lake
from medlake_assets.lake.ledger import Ledger
from medlake_assets.silver.encounters_load import ENCOUNTERS
from medlake_assets.silver.load import SilverResult, consumer, load_silver
from medlake_assets.silver.quality.gate import freshness_sla, metadata_version
from medlake_assets.silver.quality.held import PUBLISHED, HeldSlice, held_slices, release, to_evaluate
from medlake_assets.spec import SourceSpec


class SilverLoadConfig(dg.Config):
    full: bool = False
    """Re-take every bronze batch of the landing day (a backfill), not only the new ones."""


def silver_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["silver", name])


def derived_keys(spec: SourceSpec) -> list[dg.AssetKey]:
    """The silver tables the metadata derives from this source's silver table (e.g. encounters)."""
    return [silver_key(name) for name in spec.derived]


def refine_job_name(spec: SourceSpec) -> str:
    return f"refine_{spec.name}"


def pending_silver(
    ledger: Ledger, spec: SourceSpec, loaded_before: datetime | None = None
) -> dict[date, set[str]]:
    """Per landing day, the work a refine run of that day does: the bronze batches of `spec` that its silver
    table (or, for ADT, encounters) has not taken in yet, and the held slices to take up again (released,
    or held under other metadata), as `<batch>/<facility>@<metadata version>`."""
    pending: dict[date, set[str]] = {}
    for by_day in pending_by_table(ledger, spec, loaded_before).values():
        for day, work in by_day.items():
            pending.setdefault(day, set()).update(work)
    return pending


def pending_by_table(
    ledger: Ledger, spec: SourceSpec, loaded_before: datetime | None = None
) -> dict[dg.AssetKey, dict[date, set[str]]]:
    """`pending_silver` per silver asset: the source's table (its batches and held slices) and each table
    derived from it (e.g. encounters, whose batches wait when the quality gate stopped the run before it)."""
    pending = {silver_key(spec.name): ledger.pending_batches(consumer(spec.name), spec.name, loaded_before)}
    if "encounters" in spec.derived:
        pending[silver_key("encounters")] = ledger.pending_batches(ENCOUNTERS, spec.name, loaded_before)
    version = metadata_version(spec)
    for item in to_evaluate(ledger, spec.name, version):
        work = f"{item.batch_id}/{item.facility}@{version}"
        pending[silver_key(spec.name)].setdefault(item.landing_day, set()).add(work)
    return pending


# Check metadata lists at most this many facilities (ids and counts); the counts cover all of them.
LISTED_FACILITIES = 50


def _gate(outcome: SilverResult) -> dg.AssetCheckResult:
    """Passes when something could be published (WARN when some facility was held back), fails (ERROR, so
    downstream waits) only when the run's rows were all held back."""
    partly = outcome.published and outcome.held
    severity = dg.AssetCheckSeverity.WARN if partly else dg.AssetCheckSeverity.ERROR
    return dg.AssetCheckResult(
        check_name="quality_gate",
        passed=outcome.published,
        severity=severity,
        metadata={
            "rows": outcome.rows_in,
            "rejected_rows": outcome.rejected,
            "error_rate": round(outcome.error_rate, 4),
            "threshold": outcome.threshold,
            "held_facilities": dg.MetadataValue.json(dict(outcome.held.most_common(LISTED_FACILITIES))),
            "held_facility_count": len(outcome.held),
            "published_facilities": outcome.published_facilities,
            "reevaluated_slices": outcome.reevaluated,
            "released_slices": outcome.released,
            "rejected_by_rule": dg.MetadataValue.json(dict(outcome.rules.most_common(10))),
            "rejected_by_facility": dg.MetadataValue.json(dict(outcome.rejected_by_facility.most_common(10))),
            "warnings_by_rule": dg.MetadataValue.json(dict(outcome.warnings.most_common(10))),
        },
    )


def _held_back(lake: Lake, spec: SourceSpec) -> dg.AssetCheckResult:
    """Warns while any of the source's facilities has rows held back (any landing day)."""
    waiting = held_slices(lake.ledger, spec.name)
    by_facility: dict[str, int] = {}
    for item in waiting:
        by_facility[item.facility] = by_facility.get(item.facility, 0) + item.held_rows
    listed = sorted(by_facility.items(), key=lambda pair: (-pair[1], pair[0]))[:LISTED_FACILITIES]
    since = min((item.held_at for item in waiting), default=None)
    return dg.AssetCheckResult(
        check_name="held_back",
        passed=not waiting,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "held_facilities": dg.MetadataValue.json(dict(listed)),
            "held_facility_count": len(by_facility),
            "held_rows": sum(by_facility.values()),
            "held_slices": len(waiting),
            "held_since": since.isoformat() if since else "",
            "release": f"medlake release --source {spec.name} --facility <id> [--day YYYY-MM-DD]",
        },
    )


def build_silver_defs(spec: SourceSpec) -> dg.Definitions:
    key = silver_key(spec.name)
    check_specs = [
        dg.AssetCheckSpec(
            "quality_gate",
            asset=key,
            blocking=True,
            description=f"Per facility and batch, at most {spec.quality.max_error_rate:.0%} of the rows "
            f"(counted as at least {spec.quality.min_rows}) fail an error rule, or that facility's rows are "
            "held back while the others publish (passes with WARN, listing them). Fails, and downstream "
            "assets wait, only when every facility of the run was held back.",
        ),
        dg.AssetCheckSpec(
            "held_back",
            asset=key,
            description="Warns while any facility has rows held back by the quality gate, listing them; "
            f"`medlake release --source {spec.name} --facility <id>` publishes them.",
        ),
    ]

    @dg.asset(
        key=key,
        deps=[bronze_key(spec)],
        partitions_def=landing_partitions(spec),
        group_name="silver",
        kinds={"iceberg", "polars"},
        check_specs=check_specs,
        description=f"{spec.description} Typed, cleaned, {spec.write.mode}.",
        owners=[spec.owner] if spec.owner else None,
        pool=table_pool(f"silver.{spec.name}"),
    )
    def silver(
        context: dg.AssetExecutionContext, config: SilverLoadConfig, lake: LakeResource
    ) -> dg.MaterializeResult:
        opened = lake.lake()
        outcome = load_silver(opened, spec, date.fromisoformat(context.partition_key), full=config.full)
        if outcome.held:
            context.log.warning(
                f"{spec.name} {context.partition_key}: rows of {len(outcome.held)} facilities held back by "
                f"the quality gate: {', '.join(sorted(outcome.held)[:LISTED_FACILITIES])}"
            )
        return dg.MaterializeResult(
            metadata={
                "batches": len(outcome.batches),
                "rows_in": outcome.rows_in,
                "rows_written": outcome.rows_written,
                "rejected_rows": outcome.rejected,
                "held_rows": sum(outcome.held.values()),
                "published": outcome.published,
                "seconds": round(outcome.seconds, 3),
                "snapshot_id": str(outcome.snapshot_id or ""),
            },
            check_results=[_gate(outcome), _held_back(opened, spec)],
        )

    assets = [silver]
    if "encounters" in spec.derived:
        assets.append(build_encounters_asset(spec))
    job = dg.define_asset_job(
        name=refine_job_name(spec),
        hooks=STEP_HOOKS,
        selection=[asset.key for asset in assets],
        partitions_def=landing_partitions(spec),
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
        description="One row per visit (facility, visit_number): status, location, admit and discharge times,"
        " "
        "derived from every ADT event of the visit whatever their arrival order.",
        pool=table_pool("silver.encounters"),
    )
    def encounters(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        outcome = load_encounters(lake.lake(), spec, date.fromisoformat(context.partition_key))
        return dg.MaterializeResult(metadata=outcome)

    return encounters


def silver_automation_sensor(interval_seconds: int = 30) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "silver_automation",
        target=dg.AssetSelection.groups("silver"),
        default_status=SENSOR_STATUS,
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
        default_status=SENSOR_STATUS,
        description="Refines landing days whose loaded bronze batches silver missed.",
    )
    def catch_up(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
        loaded_before = datetime.now(UTC) - CATCH_UP_GRACE
        return dg.SensorResult(
            run_requests=catch_up_requests(context.instance, lake.lake(), specs, loaded_before)
        )

    return catch_up


def catch_up_requests(
    instance: dg.DagsterInstance, lake: Lake, specs: Iterable[SourceSpec], loaded_before: datetime
) -> list[dg.RunRequest]:
    """A refine run per (source, landing day) with bronze batches loaded before `loaded_before` and not in
    silver, keyed by that set of batches; none for a source whose landing run is still going (its silver
    comes in that run)."""
    running = instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_FLIGHT)))
    busy = {
        key.removeprefix(f"{BATCH_TAG}/")
        for run in running
        for key in run.tags
        if key.startswith(f"{BATCH_TAG}/")
    }
    requests = []
    for spec in (spec for spec in specs if spec.name not in busy):
        # Only the tables with work that day: a derived table catching up after a gate that stopped its
        # run does not re-run the source's gate on nothing (which would pass, and hide the hold).
        work: dict[date, dict[dg.AssetKey, set[str]]] = {}
        for key, by_day in pending_by_table(lake.ledger, spec, loaded_before).items():
            for day, batches in by_day.items():
                work.setdefault(day, {})[key] = batches
        for day, tables in sorted(work.items()):
            batches = set().union(*tables.values())
            digest = hashlib.sha256("\n".join(sorted(batches)).encode()).hexdigest()[:16]
            requests.append(
                dg.RunRequest(
                    run_key=f"{spec.name}:{day.isoformat()}:{digest}",
                    asset_selection=sorted(tables),
                    partition_key=day.isoformat(),
                    tags={SOURCE_TAG: spec.name},
                )
            )
    return requests


FRESHNESS_JOB = "silver_freshness"
FRESHNESS_CRON = "*/15 * * * *"


def freshness_result(spec: SourceSpec, facilities: pl.DataFrame) -> dg.AssetCheckResult:
    """The source's `freshness` check from its `meta.freshness` rows (ids, minutes and limits only).

    Fails with the rule's declared severity when the whole source is past its SLA (no facility sent
    anything for `max_lag_minutes`, or none ever did), and with WARN when only some facilities are stale.
    """
    sla, declared = freshness_sla(spec) or (0, "error")
    stale = facilities.filter(pl.col("stale")).sort(["lag_minutes", "facility"], descending=[True, False])
    source_lag = facilities.get_column("lag_minutes").min() if facilities.height else None
    source_late = source_lag is None or source_lag > sla

    def minutes(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    listed = {
        row["facility"]: {
            "lag_minutes": minutes(row["lag_minutes"]),
            "limit_minutes": minutes(row["limit_minutes"]),
            "usual_interval_minutes": minutes(row["usual_interval_minutes"]),
            "limit_basis": row["limit_basis"],
        }
        for row in stale.head(LISTED_FACILITIES).iter_rows(named=True)
    }
    severity = dg.AssetCheckSeverity.ERROR if declared == "error" else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        asset_key=silver_key(spec.name),
        check_name="freshness",
        passed=not source_late and stale.is_empty(),
        severity=severity if source_late else dg.AssetCheckSeverity.WARN,
        metadata={
            "facilities": facilities.height,
            "stale_facility_count": stale.height,
            "stale_facilities": dg.MetadataValue.json(listed),
            "source_lag_minutes": round(source_lag, 1) if source_lag is not None else -1,
            "max_lag_minutes": sla,
        },
    )


def build_freshness_defs(specs: Iterable[SourceSpec], cron: str = FRESHNESS_CRON) -> dg.Definitions:
    """`freshness` checks of the silver assets of every source with a freshness rule, evaluated from the
    ledger on a schedule: a feed that goes silent fails its check with no new data and no silver run."""
    watched = {spec.name: spec for spec in specs if freshness_sla(spec) is not None}
    if not watched:
        return dg.Definitions()
    slas = {name: freshness_sla(spec) or (0, "error") for name, spec in watched.items()}

    @dg.multi_asset_check(
        name="freshness_checks",
        specs=[
            dg.AssetCheckSpec(
                "freshness",
                asset=silver_key(name),
                description=f"Every facility sent {name} within its usual cadence (learned from the ledger), "
                f"and the source within {slas[name][0]} minutes; evaluated every 15 minutes, data or not.",
            )
            for name in watched
        ],
        can_subset=True,
    )
    def freshness_checks(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> Iterable[dg.AssetCheckResult]:
        from medlake_assets.serving.sql import connect

        with connect(lake.lake(), tables=False) as ledger:
            rows = ledger.execute("SELECT * FROM meta.freshness").pl()
        for key in sorted(context.selected_asset_check_keys, key=lambda k: k.asset_key.to_user_string()):
            spec = watched[key.asset_key.path[-1]]
            yield freshness_result(spec, rows.filter(pl.col("source") == spec.name))

    job = dg.define_asset_job(
        FRESHNESS_JOB,
        hooks=STEP_HOOKS,
        selection=dg.AssetSelection.checks(freshness_checks),
        description="Evaluate every source's and facility's freshness from the ledger.",
    )
    schedule = dg.ScheduleDefinition(
        name="silver_freshness",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=SCHEDULE_STATUS,
        description="Freshness of every feed, with or without new data.",
    )
    return dg.Definitions(asset_checks=[freshness_checks], jobs=[job], schedules=[schedule])


RELEASE_TAG = "medlake/release"


@dataclass
class ReleaseResult:
    source: str
    facility: str
    released: list[HeldSlice] = field(default_factory=list)
    published: list[HeldSlice] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    success: bool = True
    seconds: float = 0.0

    @property
    def rows_published(self) -> int:
        return sum(item.held_rows for item in self.published)


def release_held(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    lake: Lake,
    spec: SourceSpec,
    facility: str,
    by: str,
    day: date | None = None,
) -> ReleaseResult:
    """Release a facility's held rows (of one landing day, or all) and publish them now.

    The release is recorded in the ledger (`meta.held`: released_by, released_at), then the source's refine
    job runs for each landing day concerned, through Dagster (tagged `medlake/release`), so the merge, the
    checks and downstream assets (encounters, gold) follow as for any silver run. A run that fails leaves
    the slices released: the next silver run of their day publishes them.
    """
    from medlake_assets.defs.runner import RUNNER_PID_TAG

    started = time.perf_counter()
    outcome = ReleaseResult(spec.name, facility, released=release(lake.ledger, spec.name, facility, by, day))
    released = {(item.batch_id, item.facility) for item in outcome.released}
    tags = {RELEASE_TAG: facility, SOURCE_TAG: spec.name, RUNNER_PID_TAG: str(os.getpid())}
    days = sorted({item.landing_day for item in outcome.released})
    ensure_landing_days(instance, [day.isoformat() for day in days])
    for landing_day in days:
        result = defs.resolve_job_def(refine_job_name(spec)).execute_in_process(
            instance=instance, partition_key=landing_day.isoformat(), tags=tags, raise_on_error=False
        )
        outcome.run_ids.append(result.run_id)
        outcome.success = outcome.success and result.success
    outcome.published = [
        item
        for item in held_slices(lake.ledger, spec.name, facility=facility, day=day, statuses=(PUBLISHED,))
        if (item.batch_id, item.facility) in released
    ]
    outcome.seconds = time.perf_counter() - started
    return outcome
