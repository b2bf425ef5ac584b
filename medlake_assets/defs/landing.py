"""The stray sweep: what no source's day listing reaches under landing/ is registered or quarantined."""

from datetime import UTC, datetime

import dagster as dg

from medlake_assets.defs.policies import SENSOR_STATUS
from medlake_assets.defs.resources import LakeResource
from medlake_assets.ingest.landing import find_strays, register_landed


@dg.sensor(
    name="landing_unrouted",
    minimum_interval_seconds=300,
    default_status=SENSOR_STATUS,
    description=(
        "Finds objects under landing/ outside the day folders the landing sensor lists (unknown folders, "
        "loose files, broken yyyy/mm/dd layouts, days after today) with delimiter "
        "listings of the levels above the days; quarantines them (landing.no_source, landing.bad_day) or "
        "holds future days."
    ),
)
def unrouted_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SkipReason:
    opened = lake.lake()
    sources = list(opened.sources.values())
    strays = find_strays(opened.store, sources, datetime.now(UTC).date())
    scan = register_landed(opened.store, opened.ledger, sources, strays.prefixes, strays.objects)
    return dg.SkipReason(
        f"{scan.quarantined} objects quarantined, {scan.registered} registered from "
        f"{len(strays.prefixes)} stray folders and {len(strays.objects)} loose objects"
    )
