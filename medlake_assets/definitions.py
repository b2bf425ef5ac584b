"""The one entry point: builds the Definitions from `metadata/sources/` and applies project-wide policy."""

from __future__ import annotations

import dagster as dg

from medlake_assets.defs.bronze import build_source_defs
from medlake_assets.defs.flow import build_flow_defs
from medlake_assets.defs.gold import build_report_defs, load_reports, report_automation_sensor
from medlake_assets.defs.landing import unrouted_sensor
from medlake_assets.defs.maintenance import build_maintenance_defs
from medlake_assets.defs.policies import apply_policies
from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.silver import (
    build_freshness_defs,
    build_silver_defs,
    silver_automation_sensor,
    silver_catch_up_sensor,
)
from medlake_assets.lake.settings import Settings, load_settings
from medlake_assets.spec import load_sources


def build_definitions(settings: Settings) -> dg.Definitions:
    """Bronze and silver per source, the landing flow over all of them, gold per report, their checks,
    jobs, sensors and schedules."""
    sources = load_sources(settings.sources_dir)
    reports = load_reports(settings.reports_dir)
    interval = settings.sensor_interval_seconds
    return apply_policies(
        dg.Definitions.merge(
            *[build_source_defs(spec) for spec in sources.values()],
            *[build_silver_defs(spec) for spec in sources.values()],
            build_freshness_defs(sources.values()),
            build_flow_defs(sources.values(), interval, settings.runs_in_flight),
            *[build_report_defs(report) for report in reports],
            build_maintenance_defs(sources, reports),
            dg.Definitions(
                sensors=[
                    unrouted_sensor,
                    silver_automation_sensor(interval),
                    silver_catch_up_sensor(sources.values(), interval),
                    # A report run rebuilds the whole report: at most one a minute, whatever the landing rate
                    # (each run is a process; with one worker it would otherwise take every other turn).
                    report_automation_sensor(max(interval, 60)),
                ],
                resources={"lake": LakeResource.from_settings(settings)},
            ),
        )
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
