"""The sensor for landing folders no source owns: their objects can only be quarantined."""

import dagster as dg

from medlake_assets.defs.resources import LakeResource
from medlake_assets.ingest.landing import register_landed, unrouted_prefixes


@dg.sensor(
    name="landing_unrouted",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Quarantines objects in landing folders that belong to no source (reason landing.no_source).",
)
def unrouted_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SkipReason:
    opened = lake.lake()
    prefixes = unrouted_prefixes(opened.store, opened.sources)
    scan = register_landed(opened.store, opened.ledger, list(opened.sources.values()), prefixes)
    return dg.SkipReason(
        f"{scan.quarantined} objects quarantined from {len(prefixes)} unknown landing folders"
    )
