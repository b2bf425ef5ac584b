"""Fault: the sensor process restarted (killed mid-tick and mid-run) while files keep landing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from medlake_assets_tests.faults.harness import (
    assert_equals_clean_run,
    files_done,
    kill,
    log_tail,
    wait_until,
)
from medlake_assets_tests.faults.sensor_daemon import stored_cursor

SENSOR_PROCESS = [sys.executable, "-m", "medlake_assets_tests.faults.sensor_daemon"]


def start_sensor_process(env: dict, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([*SENSOR_PROCESS, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.e2e
@pytest.mark.faults
def test_sensor_process_killed_mid_tick_and_mid_run_resumes_from_its_cursor(
    make_lake, fault_feeds, clean_run
):
    """Killed: the sensor process (the daemon evaluating the landing sensors and launching their runs),
    twice, with SIGKILL: first right after a sensor evaluation registered and claimed files but before the
    tick's cursor was stored or any run submitted; then in the middle of a run. New files land between the
    restarts. Each restart evaluates the sensors with the cursor stored in the Dagster instance; in the end
    every landed file is loaded or quarantined exactly once and the lake equals a clean run."""
    faulted = make_lake("sensor-restart")
    lake = faulted.lake()
    keys = list(fault_feeds.objects)
    first, second, third = keys[:7], keys[7:14], keys[14:]
    env, log = faulted.env, faulted.log

    fault_feeds.land(lake.store, first)
    died = start_sensor_process(env, log, "--die-after-evaluation")
    assert died.wait(timeout=180) == -9, log_tail(log)
    registered = files_done(faulted.ledger_url) + lake.ledger.counts()["pending"]
    assert 0 < registered <= len(first)  # the tick did its ledger work, then the process died

    fault_feeds.land(lake.store, second)
    process = start_sensor_process(env, log)
    assert wait_until(lambda: files_done(faulted.ledger_url) >= 3, timeout=180, process=process), log_tail(
        log
    )
    kill(process)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        cursor = stored_cursor(instance, "landing")
    assert cursor, "the restarted process stored no cursor"
    assert lake.ledger.counts()["pending"] > 0  # killed with work left

    fault_feeds.land(lake.store, third)
    last = start_sensor_process(env, log, "--refine")
    assert last.wait(timeout=240) == 0, log_tail(log)
    assert lake.ledger.counts()["pending"] == 0
    assert_equals_clean_run(lake, clean_run)
