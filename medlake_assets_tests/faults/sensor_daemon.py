"""The sensor process as its own OS process: what the Dagster daemon does with the landing sensors.

    python -m medlake_assets_tests.faults.sensor_daemon [--die-after-evaluation] [--refine]

Each tick, per landing sensor (`landing`, `landing_unrouted`): read the sensor's cursor stored in the
Dagster instance (`DAGSTER_HOME`), evaluate the sensor with it (`dg.build_sensor_context`), drop run
requests whose run key already has a run (as the daemon does), store the new cursor, then execute the
submitted runs in this process (standing in for the run launcher). Ticks until one submits nothing. On
start it marks runs of a dead earlier process failed (standing in for run monitoring).
`--die-after-evaluation` SIGKILLs the process right after the first sensor evaluation, before its cursor
is stored or any run submitted: a daemon dying mid-tick. `--refine` evaluates silver's automation conditions
before and after, with silver's catch-up (the silver automation and catch-up sensors' part).
"""

from __future__ import annotations

import argparse
import os
import signal

import dagster as dg

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.resources import LakeResource
from medlake_assets.defs.runner import (
    RUNNER_PID_TAG,
    IngestSummary,
    apply_partition_requests,
    bring_up_to_date,
    fail_orphaned_runs,
    run_automation,
)
from medlake_assets.lake.settings import load_settings

RUN_KEY_TAG = "dagster/run_key"
CURSOR_PREFIX = "medlake-test/sensor-cursor/"


def stored_cursor(instance: dg.DagsterInstance, sensor_name: str) -> str | None:
    key = CURSOR_PREFIX + sensor_name
    return instance.run_storage.get_cursor_values({key}).get(key)


def tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, sensor: dg.SensorDefinition, die: bool
) -> list[dg.RunRequest]:
    """One evaluation of `sensor` with its stored cursor; returns the run requests it submits."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=stored_cursor(instance, sensor.name),
        definitions=defs,
        sensor_name=sensor.name,
        resources=defs.resources,
    )
    result = sensor(context)
    apply_partition_requests(instance, result)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    requests = list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []
    submitted = [
        request
        for request in requests
        if not instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: request.run_key}), limit=1)
    ]
    if isinstance(result, dg.SensorResult) and result.cursor:
        instance.run_storage.set_cursor_values({CURSOR_PREFIX + sensor.name: result.cursor})
    return submitted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--die-after-evaluation", action="store_true")
    parser.add_argument("--refine", action="store_true")
    args = parser.parse_args()
    settings = load_settings()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    lake = LakeResource.from_settings(settings).lake()
    fail_orphaned_runs(instance)
    if (
        args.refine
    ):  # the silver automation evaluates before the loads too (its first evaluation starts the clock)
        run_automation(defs, instance, IngestSummary(), groups=("silver",))
    sensors = sorted(
        (s for s in defs.get_repository_def().sensor_defs if s.name.startswith("landing")),
        key=lambda s: s.name,
    )
    while True:
        submitted = 0
        for sensor in sensors:
            for request in tick(defs, instance, sensor, args.die_after_evaluation):
                submitted += 1
                job = defs.resolve_job_def(request.job_name or sensor.job_name)
                job.execute_in_process(
                    run_config=request.run_config,
                    instance=instance,
                    partition_key=request.partition_key,
                    asset_selection=request.asset_selection,
                    tags={**request.tags, RUN_KEY_TAG: request.run_key, RUNNER_PID_TAG: str(os.getpid())},
                    raise_on_error=False,
                )
        if not submitted:
            break
    if args.refine:
        bring_up_to_date(defs, instance, lake, IngestSummary(), groups=("silver",))


if __name__ == "__main__":
    main()
