"""The `landing` sensor and the `ingest_landed` job: new archives of every source into bronze and silver.

One run per sensor cycle and landing day carries one ledger batch per source, and loads each batch into
bronze and then silver (and `silver.encounters` for ADT) in the same process. Why one run for all
sources: a Dagster run is a process of its own (in production a pod), and starting one costs 5-20 s on
the project's 2-core machine (imports, definitions, instance), more than loading the batch itself; a
run per source and a second run for silver made that cost 8 times per cycle (docs/benchmarks.md).

Batches are sized by the backlog: a source's new archives are claimed only when a run can start, no
`ingest_landed` run holding that source is queued or running, and none of its earlier batches still waits
for a run. So everything that landed meanwhile goes into the next run as one batch (a few archives at a
quiet hour, hundreds in a surge), and the run queue never holds more runs than `runs_in_flight`
(backpressure: the backlog waits in the ledger, not as a pile of small queued runs). A claim on every tick
instead would cut a source's backlog into a small batch per tick; a run takes one batch per source, so that
source would stay as many runs behind as it had batches (the soak's archives that waited minutes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime

import dagster as dg

from medlake_assets.defs.bronze import (
    BATCH_TAG,
    IN_FLIGHT,
    LANDING_DAYS,
    MAX_ATTEMPTS,
    BronzeLoadConfig,
    batch_tag,
    bronze_key,
    bronze_op_name,
)
from medlake_assets.defs.policies import SENSOR_STATUS, STEP_HOOKS
from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.silver import derived_keys, silver_key
from medlake_assets.ingest.batch import MISSING_SECRET, release_holds
from medlake_assets.ingest.landing import plan_listing, register_landed
from medlake_assets.lake.ledger import Batch, Ledger
from medlake_assets.spec import SourceSpec

FLOW_JOB = "ingest_landed"
PRIORITY_TAG = "dagster/priority"
LANDING_SENSOR = "landing"


def flow_keys(spec: SourceSpec) -> list[dg.AssetKey]:
    """What a source's batch updates in an `ingest_landed` run: bronze, silver, the tables derived from it."""
    return [bronze_key(spec), silver_key(spec.name), *derived_keys(spec)]


def sources_in_run(tags: dict[str, str]) -> set[str]:
    """The sources whose batches a run loads (from its `medlake/batch/<source>` tags)."""
    prefix = f"{BATCH_TAG}/"
    return {key.removeprefix(prefix) for key in tags if key.startswith(prefix)}


# Set on a parked batch's runs when an operator asks for another try (`medlake ingest --once`): they no
# longer count towards `MAX_ATTEMPTS`, so the landing sensor requests the batch again.
RELEASED_TAG = "medlake/released"


def attempts(instance: dg.DagsterInstance, source: str, batch_id: str) -> list[dg.DagsterRun]:
    """Every run (of any job) that was given this batch."""
    return list(instance.get_runs(filters=dg.RunsFilter(tags={batch_tag(source): batch_id})))


def counted(runs: Iterable[dg.DagsterRun]) -> list[dg.DagsterRun]:
    """The runs that count towards parking a batch: those not released by an operator."""
    return [run for run in runs if RELEASED_TAG not in run.tags]


def release_parked_batches(instance: dg.DagsterInstance, ledger: Ledger, specs: Iterable[SourceSpec]) -> int:
    """Give each parked batch (`MAX_ATTEMPTS` counted runs, none in flight) another `MAX_ATTEMPTS` tries of
    the landing sensor; returns how many were released.

    A fault that lasts a little while (S3 away, quarantine unwritable) fails a batch's attempts in quick
    succession; an operator running `ingest --once` after fixing it means "try again".
    """
    parked: set[str] = set()  # run ids: a run may carry several parked batches (one per source)
    released = 0
    for spec in specs:
        for batch in ledger.unfinished_batches(spec.name):
            runs = attempts(instance, spec.name, batch.batch_id)
            failed = counted(runs)
            if len(failed) < MAX_ATTEMPTS or any(run.status in IN_FLIGHT for run in runs):
                continue  # the sensor requests it (or it is running)
            parked |= {run.run_id for run in failed}
            released += 1
    for run_id in parked:
        instance.add_run_tags(run_id, {RELEASED_TAG: "true"})
    return released


def runnable_batches(instance: dg.DagsterInstance, ledger: Ledger, source: str) -> list[tuple[Batch, int]]:
    """The source's claimed batches a run may take now, oldest first, with how many runs each had: none of
    their runs in flight and fewer than `MAX_ATTEMPTS` counted runs (after that a batch is parked until
    `release_parked_batches`)."""
    found = []
    for batch in ledger.unfinished_batches(source):
        runs = attempts(instance, source, batch.batch_id)
        if not any(run.status in IN_FLIGHT for run in runs) and len(counted(runs)) < MAX_ATTEMPTS:
            found.append((batch, len(runs)))
    return found


def flow_run_requests(
    specs: Sequence[SourceSpec], runnable: Mapping[str, Sequence[tuple[Batch, int]]], free_runs: int
) -> list[dg.RunRequest]:
    """Up to `free_runs` runs, each for one landing day with the oldest runnable batch of each source
    (`runnable`: per source, as `runnable_batches` gives them). With more free runs than days, a day's
    sources are spread over several runs (several workers then load them at once).
    """
    if free_runs < 1:
        return []
    by_day: dict[date, dict[str, tuple[Batch, int]]] = {}
    for name, batches in runnable.items():
        for batch, tries in batches:
            by_day.setdefault(batch.landing_day, {}).setdefault(name, (batch, tries))
    groups: list[tuple[date, dict[str, tuple[Batch, int]]]] = []
    spare = free_runs - len(by_day)  # runs left to spread one day's sources over
    for day, chosen in sorted(by_day.items()):
        names = sorted(chosen)
        slots = min(len(names), 1 + max(0, spare))
        spare -= slots - 1
        groups += [(day, {name: chosen[name] for name in names[slot::slots]}) for slot in range(slots)]
    by_name = {spec.name: spec for spec in specs}
    return [
        flow_run_request([by_name[name] for name in chosen], day, chosen)
        for day, chosen in groups[:free_runs]
    ]


def flow_run_request(
    specs: Sequence[SourceSpec], day: date, chosen: dict[str, tuple[Batch, int]]
) -> dg.RunRequest:
    """The run of one landing day's batches: bronze then silver per source, each batch in its op's config."""
    # The key names the batches and how many runs each already had, so a retry is a new run.
    label = "\n".join(f"{name}={batch.batch_id}#{tries}" for name, (batch, tries) in sorted(chosen.items()))
    digest = hashlib.sha256(label.encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{day.isoformat()}:{digest}",
        partition_key=day.isoformat(),
        asset_selection=[key for spec in specs for key in flow_keys(spec)],
        run_config=dg.RunConfig(
            ops={
                bronze_op_name(spec): BronzeLoadConfig(batch_id=chosen[spec.name][0].batch_id)
                for spec in specs
            }
        ),
        # Ahead of report runs in the queue: with few workers, fresh data first, reports when it is in.
        tags={PRIORITY_TAG: "10", **{batch_tag(name): batch.batch_id for name, (batch, _) in chosen.items()}},
    )


def build_flow_defs(
    specs: Iterable[SourceSpec], sensor_interval_seconds: int = 30, runs_in_flight: int = 1
) -> dg.Definitions:
    """The `ingest_landed` job over every source's bronze and silver assets, and the `landing` sensor."""
    specs = sorted(specs, key=lambda spec: spec.name)
    ingest_of = {spec.name: spec.ingest for spec in specs}
    job = dg.define_asset_job(
        name=FLOW_JOB,
        hooks=STEP_HOOKS,
        selection=[key for spec in specs for key in flow_keys(spec)],
        partitions_def=LANDING_DAYS,
        description="Load newly landed archives into bronze and then silver: one ledger batch per source, "
        "every source of a landing day in one run.",
    )

    @dg.sensor(
        name=LANDING_SENSOR,
        job=job,
        minimum_interval_seconds=sensor_interval_seconds,
        default_status=SENSOR_STATUS,
        description="Registers new archives in the open landing days of every source, claims them into "
        "batches when a run can take them (no run of their source in flight, no earlier batch waiting), and "
        "requests one run per landing day.",
    )
    def landing(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
        opened = lake.lake()
        cursor = json.loads(context.cursor) if context.cursor else {}
        since = date.fromisoformat(cursor["since"]) if cursor.get("since") else None
        listed_at = cursor.get("earlier_days_listed_at")
        now = datetime.now(UTC)
        today = now.date()
        in_flight = context.instance.get_runs(
            filters=dg.RunsFilter(job_name=FLOW_JOB, statuses=list(IN_FLIGHT))
        )
        busy = {source for run in in_flight for source in sources_in_run(run.tags)}
        free_runs = runs_in_flight - len(in_flight)
        # The sources a run can take now (a free run, none of theirs in flight), with their claimed batches
        # waiting for a run: new archives are claimed only when none waits.
        waiting = {
            spec.name: runnable_batches(context.instance, opened.ledger, spec.name)
            for spec in specs
            if free_runs > 0 and spec.name not in busy
        }
        listing = plan_listing(
            specs,
            [name for name, batches in waiting.items() if not batches],
            since,
            datetime.fromisoformat(listed_at) if listed_at else None,
            now,
        )
        scan = register_landed(
            opened.store, opened.ledger, list(opened.sources.values()), listing.prefixes, today=today
        )
        for spec in specs:  # a secret set, or a future day come, since: they load in this tick's batches
            release_holds(opened, spec, today)
        runnable = {
            name: batches
            or [
                (batch, 0)
                for batch in opened.ledger.claim_batches(
                    name,
                    max_archives=ingest_of[name].max_archives_per_run,
                    max_bytes=ingest_of[name].max_bytes_per_run,
                )
            ]
            for name, batches in waiting.items()
        }
        requests = flow_run_requests(specs, runnable, free_runs)
        if scan.registered or scan.quarantined or requests:
            context.log.info(
                f"{scan.registered} new archives, {scan.quarantined} quarantined at landing, "
                f"{len(requests)} runs requested ({len(in_flight)} in flight)"
            )
        for spec in specs:
            if held := opened.ledger.held(spec.name, MISSING_SECRET):
                secrets = sorted({row.reason or "" for row in held})
                context.log.warning(f"{spec.name}: {len(held)} archives held for a missing secret: {secrets}")
        known = set(context.instance.get_dynamic_partitions(LANDING_DAYS.name or ""))
        new_days = sorted({request.partition_key for request in requests if request.partition_key} - known)
        return dg.SensorResult(
            run_requests=requests,
            cursor=json.dumps(
                {
                    "since": listing.since.isoformat(),
                    "earlier_days_listed_at": listing.earlier_days_listed_at.isoformat(),
                }
            ),
            # A run's landing day becomes a partition in the same tick (Dagster adds it before the runs).
            dynamic_partitions_requests=[LANDING_DAYS.build_add_request(new_days)] if new_days else None,
        )

    return dg.Definitions(jobs=[job], sensors=[landing])
